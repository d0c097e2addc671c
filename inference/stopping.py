"""Stopping a long run cleanly: Ctrl-C (SIGINT) and SIGTERM ask the loop to stop between steps.

SLURM preemption, ``docker stop`` and ``kill`` send SIGTERM; a person at a
terminal sends SIGINT. Either one only sets a flag: the loop finishes the step
it is in, writes a checkpoint at that step and returns, so parameters and
optimiser state are consistent and at most the step in flight is lost. A
second signal aborts at once (KeyboardInterrupt). The command line then exits
with ``128 + signal number`` (130 after SIGINT, 143 after SIGTERM), the shell's
convention, so ``svi ... && evaluate ...`` does not go on with a half-trained
model.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

#: The signals that ask a run to stop.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Context manager: while inside, SIGINT and SIGTERM set `requested` and `signum`.

    Outside the main thread (where handlers cannot be set) it does nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_status(self) -> int:
        """``128 + signum`` for the signal received (the shell convention), 0 when none was."""
        return 0 if self.signum is None else 128 + self.signum

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
