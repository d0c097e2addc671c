r"""Data-parallel training under ``torchrun``: N processes take one step on one global batch.

Every rank draws the same global batch x_1..B (order and binarisation are
functions of (seed, epoch, step), `pyro_vae.images.Images.batches`) and takes
its own contiguous slice of about B/N images. The loss is a *sum* over the
batch, so the global gradient is the plain sum of the ranks' gradients,

    grad sum_{i<=B} loss(x_i) = sum_r grad sum_{i in slice r} loss(x_i),

which one ``all_reduce`` of a flat buffer (every gradient, then the loss)
gives every rank; each then takes the same optimiser step, so parameters
stay identical without ever being broadcast. This is what
``DistributedDataParallel`` does, written out: Pyro's objectives call the
model's ``model``/``guide`` rather than its ``forward``, which DDP hooks.

A rank whose step raises keeps joining the all-reduce with zero gradients
until the next `agree`, where every rank learns of the failure and stops
(`pyro_vae.distributed.raise_together`): no rank is left waiting in a
collective. `agree` also shares the stop signals (Ctrl-C, SIGTERM) that
arrived at any rank, so all stop after the same step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from pyro_vae.distributed import Group, raise_together

#: ``loss_and_grads(x, kl_weight) -> loss``: the summed loss of images ``x``, its gradients left in ``.grad``.
LossAndGrads = Callable[[torch.Tensor, "float | torch.Tensor"], torch.Tensor]


class DataParallelStep:
    """``step(x, kl_weight) -> loss`` on rank ``group.rank`` of ``group.world_size``.

    ``x [B, D]`` is the global batch (the same on every rank); the returned
    loss is the global batch's summed loss, a 0-d tensor on the device (no
    host sync). A step that raises is remembered, not raised: see `agree`.
    """

    def __init__(self, loss_and_grads: LossAndGrads, optim: torch.optim.Optimizer, group: Group):
        self.loss_and_grads, self.optim, self.group = loss_and_grads, optim, group
        self.params = [p for g in optim.param_groups for p in g["params"] if p.requires_grad]
        self.failure: Exception | None = None

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's slice of the global batch ``x``: contiguous, sizes differing by at most one."""
        return x.tensor_split(self.group.world_size)[self.group.rank]

    def __call__(self, x: torch.Tensor, kl_weight: float | torch.Tensor) -> torch.Tensor:
        mine = self.shard(x)
        loss = None
        if self.failure is None and len(mine):  # an empty slice (a last batch smaller than N) adds nothing
            try:
                loss = self.loss_and_grads(mine, kl_weight)
            except Exception as e:  # noqa: BLE001 - raised on every rank together, at the next agree()
                self.failure, loss = e, None
        if self.failure is not None or loss is None:
            for p in self.params:
                p.grad = None
        buffer = torch.cat([*(p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=p.device,
                                                                                       dtype=p.dtype)
                              for p in self.params),
                            (loss if loss is not None else torch.zeros(())).reshape(1).to(self.params[0])])
        dist.all_reduce(buffer)
        offset = 0
        for p in self.params:
            p.grad = buffer[offset: offset + p.numel()].view_as(p)
            offset += p.numel()
        self.optim.step()
        self.optim.zero_grad(set_to_none=True)
        return buffer[-1]

    def agree(self, signum: int, where: str = "") -> int:
        """Share, between steps, whether any rank failed (raise on all, see the module doc) or asked to stop.

        Every rank must call this after the same step, with the number of the
        stop signal it received (0 for none). Returns the largest of those, so
        every rank stops, with the same exit status, when any one was signalled.
        """
        flags = torch.tensor([signum, int(self.failure is not None)], device=self.params[0].device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        stop, failed = flags.tolist()
        if failed:
            raise_together(self.failure, where)
        return stop
