"""Stopping a long run cleanly: Ctrl-C (SIGINT) and SIGTERM ask the loop to stop between steps.

SLURM preemption, ``docker stop`` and ``kill`` send SIGTERM; a person at a
terminal sends SIGINT. Either one only sets a flag: the loop finishes the step
it is in, writes a checkpoint at that step and returns, so parameters and
optimiser state are consistent and at most the step in flight is lost. A
second signal aborts at once (`Interrupted`). The command line then exits
with ``128 + signal number`` (130 after SIGINT, 143 after SIGTERM), the shell's
convention, so ``svi ... && evaluate ...`` does not go on with a half-trained
model.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

#: The signals that ask a run to stop.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Raised by a signal that stops work at once; ``exit_status`` is 128 + its number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_status = 128 + signum


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """While inside, SIGINT and SIGTERM raise `Interrupted` (work that cannot stop between steps, like a report)."""
    def handle(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handle) for s in STOP_SIGNALS} if _main_thread() else {}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class StopRequest:
    """Context manager: while inside, SIGINT and SIGTERM set `requested` and `signum`.

    A second signal raises `Interrupted` unless ``abort_on_repeat`` is False:
    under ``torchrun`` each worker gets Ctrl-C from the terminal *and* the
    signal the launcher forwards to its workers, so two signals are one
    request there (the launcher kills workers that have not stopped within
    its own timeout, 30 s). Outside the main thread (where handlers cannot be
    set) it does nothing.
    """

    def __init__(self, abort_on_repeat: bool = True) -> None:
        self.signum: int | None = None
        self.abort_on_repeat = abort_on_repeat
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
            if self.abort_on_repeat:
                raise Interrupted(signum)
            return
        self.signum = signum

    def __enter__(self) -> "StopRequest":
        if _main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
