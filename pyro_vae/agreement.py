"""Whether a faster form of a computation (a compiled loss, a traced potential, a CUDA graph's replay) agrees
with the plain one: `relative_difference` measures it, `failure_cause` names in one line why the faster form
could not run. Each user sets its own tolerance beside its check (`inference.training.compiled.COMPILE_RTOL`,
`inference.estimators.ais_potential.AIS_COMPILE_RTOL`, `inference.training.cuda_graph.GRAPH_RTOL`)."""

from __future__ import annotations

import re
import traceback
from pathlib import Path

import torch


#: The first line of an error raised while a TorchScript graph (a traced loss) runs; the cause follows it.
_TORCHSCRIPT_WRAPPER = "The following operation failed in the TorchScript interpreter."


def failure_cause(e: BaseException) -> str:
    """``Type: first line of the message`` (200 characters at most: some causes print whole tensors); for an empty
    message (a bare ``assert``), where it was raised instead: ``AssertionError at pyro/ops/jit.py:96 (assert ...)``;
    for an error raised inside a TorchScript graph, the graph's own (``RuntimeError: The expanded size ...``), not the
    interpreter's first line."""
    text = str(e).strip()
    if text:
        lines = text.splitlines()
        if lines[0].startswith(_TORCHSCRIPT_WRAPPER):  # the graph's own error is its message's last "Type: ..." line
            inner = [line for line in lines[1:] if re.match(r"\w+(Error|Exception): ", line)]
            if inner:
                return inner[-1][:200]
        return f"{type(e).__name__}: {lines[0][:200]}"
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return f"{type(e).__name__} (no message)"
    last = frames[-1]
    parts = Path(last.filename).parts
    where = "/".join(parts[parts.index("site-packages") + 1:]) if "site-packages" in parts else last.filename
    line = (last.line or "").strip()
    return f"{type(e).__name__} at {where}:{last.lineno}" + (f" ({line[:160]})" if line else "")


def relative_difference(got: torch.Tensor | None, want: torch.Tensor | None) -> float:
    """max |got - want| / max |want| over the entries where ``want`` is finite; 0 when both are None (an unused
    parameter); inf when one is None, or when the non-finite entries differ (NaN where the other has a number,
    an inf of another sign): matching infinities and NaNs agree, so a comparison never returns NaN itself."""
    if got is None or want is None:
        return 0.0 if got is None and want is None else float("inf")
    got, want = torch.broadcast_tensors(got, want)
    finite, nan = torch.isfinite(want), torch.isnan(want)
    infinite = ~finite & ~nan
    if not (torch.equal(torch.isfinite(got), finite) and torch.equal(torch.isnan(got), nan)
            and torch.equal(got[infinite], want[infinite])):
        return float("inf")
    if not finite.any():
        return 0.0
    return float((got[finite] - want[finite]).abs().max() / want[finite].abs().max().clamp_min(1e-12))
