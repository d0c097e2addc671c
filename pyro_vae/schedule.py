r"""Learning-rate schedules by name: ``constant`` and Burda et al. (2015)'s ``burda2015``.

``burda2015`` is the training protocol of Burda, Grosse & Salakhutdinov,
"Importance Weighted Autoencoders" (2015), section 5: Adam with
beta1 = 0.9, beta2 = 0.999, eps = 1e-4, and for stage i = 0, ..., 7 the
learning rate

    lr_i = base * 10^(-i/7),    base = 0.001 (the paper's),

for 3^i epochs: 3,280 epochs in all (sum_{i=0}^{7} 3^i = (3^8 - 1) / 2).
Stage i starts at the 0-based epoch (3^i - 1) / 2, so epochs 0 | 1-3 | 4-12 |
13-39 | 40-120 | 121-363 | 364-1092 | 1093-3279 are stages 0 to 7. Epochs
past 3,279 stay at the last stage's rate, base / 10. (The paper's batch is
20 images; the batch size is the run's own setting.)

The rate is a pure function of the epoch, so `inference.svi.train` sets it
at the start of each epoch and a run resumed mid-protocol continues exactly.
``constant`` is ``base`` at every epoch, with torch's Adam defaults (eps 1e-8).
"""

from __future__ import annotations

from typing import Any

import torch

SCHEDULES = ("constant", "burda2015")

#: Stages of the ``burda2015`` protocol: stage i lasts 3^i epochs.
BURDA2015_STAGES = 8
#: The paper's batch size (images per step); not imposed on a run.
BURDA2015_BATCH_SIZE = 20

_ADAM = {"constant": {}, "burda2015": {"betas": (0.9, 0.999), "eps": 1e-4}}


def _check(schedule: str) -> None:
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def burda2015_stage(epoch: int) -> int:
    """Stage i of 0-based ``epoch``: the i with (3^i - 1)/2 <= epoch < (3^(i+1) - 1)/2, at most 7."""
    if epoch < 0:
        raise ValueError(f"epoch must be at least 0, got {epoch}")
    stage = 0
    while stage < BURDA2015_STAGES - 1 and epoch >= (3 ** (stage + 1) - 1) // 2:
        stage += 1
    return stage


def learning_rate(schedule: str, base: float, epoch: int) -> float:
    """The learning rate of 0-based ``epoch``: ``base`` (constant), or base * 10^(-i/7) in stage i (burda2015)."""
    _check(schedule)
    if schedule == "constant":
        return base
    return base * 10.0 ** (-burda2015_stage(epoch) / 7)


def total_epochs(schedule: str) -> int | None:
    """Epochs of the protocol: 3,280 for burda2015 (sum of 3^i, i = 0..7); None for constant (no end)."""
    _check(schedule)
    return sum(3**i for i in range(BURDA2015_STAGES)) if schedule == "burda2015" else None


def adam_settings(schedule: str) -> dict[str, Any]:
    """Keyword arguments of ``torch.optim.Adam`` besides ``lr``: burda2015's betas (0.9, 0.999) and eps 1e-4;
    none for constant (torch's defaults: betas (0.9, 0.999), eps 1e-8)."""
    _check(schedule)
    return dict(_ADAM[schedule])


def set_learning_rate(optim: torch.optim.Optimizer, lr: float) -> None:
    """Set ``lr`` in every parameter group of ``optim`` (a float, as the checkpoint stores it)."""
    for group in optim.param_groups:
        group["lr"] = lr
