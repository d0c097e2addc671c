"""The optimiser of a training run: one ``torch.optim.Adam`` over every parameter, its kernel picked for the device.

On the CPU, Adam's fused kernel (``fused=True``, torch >= 2.4) updates all the parameters in one call; torch's
default there is a Python loop over the tensors (``_single_tensor_adam``: a few small ops per tensor). At the
burda2015 network it is 0.24 ms a step against 0.72 ms, which at batch 20 is a fifth of the whole step
(BENCHMARKS.md, "Where a training step's time goes"). It computes the same update in another order: parameters
agree to float32 rounding (1e-7 after 100 steps). Elsewhere torch's own default stands (``foreach`` on CUDA,
which the CUDA-graph step captures).

A checkpoint stores the kernel flags with the state (``param_groups``); `load_state` puts this run's choice back
after loading, so a run resumes with the kernel of the machine it resumes on.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from inference.training.cuda_graph import set_capturable

#: The ``param_groups`` entries that choose Adam's implementation, not its maths.
KERNEL_FLAGS = ("fused", "foreach")


def make_adam(parameters: Iterable[torch.nn.Parameter], device: torch.device, lr: float,
              **settings: Any) -> torch.optim.Adam:
    """``torch.optim.Adam(parameters, lr, **settings)``, fused on the CPU where this torch has the kernel."""
    parameters = list(parameters)
    if device.type == "cpu":
        try:
            return torch.optim.Adam(parameters, lr=lr, fused=True, **settings)
        except (RuntimeError, ValueError, TypeError):  # torch < 2.4: no fused kernel on the CPU
            pass
    return torch.optim.Adam(parameters, lr=lr, **settings)


def load_state(optim: torch.optim.Optimizer, state: dict) -> None:
    """Load a checkpoint's optimiser ``state`` into ``optim``, keeping ``optim``'s kernel (`KERNEL_FLAGS`) and,
    capturable off, its step counts on the CPU (`set_capturable`; only a CUDA graph switches it on).

    Raises what ``torch.optim.Optimizer.load_state_dict`` raises for a state that does not fit.
    """
    kernel = [{flag: group.get(flag) for flag in KERNEL_FLAGS} for group in optim.param_groups]
    optim.load_state_dict(state)
    set_capturable(optim, False)
    for group, flags in zip(optim.param_groups, kernel):
        group.update(flags)
