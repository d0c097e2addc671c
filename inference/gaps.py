r"""Why the ELBO sits below log p(x): the inference gaps of Cremer, Li & Duvenaud (2018).

For a datapoint x with amortised guide q(z|x) = family(encoder(x)) and the best
member of the same family for that datapoint alone, q*(z|x) = family(phi*_x),

    total gap         = log p(x) - ELBO[q]
    approximation gap = log p(x) - ELBO[q*]     (the family cannot do better)
    amortization gap  = ELBO[q*] - ELBO[q]      (the encoder does not find phi*_x)

so total = approximation + amortization. `inference_gaps` estimates log p(x) by
importance sampling with q* as the proposal: q* is fitted to each datapoint, so
it is the better proposal, and an estimate from a poor amortised q can fall
below ELBO[q*] (that would make the approximation gap negative). The report
(`inference.evaluate`) then uses, for all three gaps, whichever estimate of
log p(x) has the highest mean on those datapoints: this one, IS from q, or AIS. phi*_x starts at encoder(x) and is
optimised with Adam on a multi-sample ``Trace_ELBO``, all datapoints at once
(their objectives are independent, so one summed loss gives each its own
gradient), until the mean ELBO stops improving. Works for models whose guide
is ``posterior_head(encoder(x))`` (`models.base.LatentModel`); for the ``iaf``
head, phi*_x replaces the encoder output (base and flow context) while the
flow's own weights stay shared.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import torch
from pyro.infer import Trace_ELBO

from inference.importance import MarginalEstimate, estimate_log_marginal
from models.base import LatentModel
from pyro_vae.device import forked_rng


@dataclass
class InferenceGaps:
    """Per-datapoint gaps and the ELBOs they come from: float64 tensors ``[B]``, nats."""

    log_px: torch.Tensor
    elbo_amortized: torch.Tensor
    elbo_optimal: torch.Tensor
    steps: int  # optimisation steps taken for q*

    @property
    def total(self) -> torch.Tensor:
        return self.log_px - self.elbo_amortized

    @property
    def approximation(self) -> torch.Tensor:
        return self.log_px - self.elbo_optimal

    @property
    def amortization(self) -> torch.Tensor:
        return self.elbo_optimal - self.elbo_amortized


def local_guide(model: LatentModel, params: torch.Tensor):
    """A guide with free parameters ``params [B, P]`` per datapoint instead of ``encoder(x)``."""

    def guide(x: torch.Tensor) -> torch.Tensor:
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", model.posterior_head(params))

    return guide


def fit_local_posteriors(
    model: LatentModel,
    x: torch.Tensor,
    num_particles: int = 16,
    lr: float = 1e-2,
    max_steps: int = 3000,
    check_every: int = 100,
    tol: float = 0.01,
) -> tuple[torch.Tensor, int]:
    """Optimise q*(z|x_i) for each datapoint of ``x [B, D]``; return ``(params [B, P], steps)``.

    Stops when the mean ELBO over the last ``check_every`` steps beats the
    previous window's by less than ``tol`` nats per datapoint, or at ``max_steps``.
    """
    with torch.no_grad():
        params = model.encoder(x).detach().clone()
    params.requires_grad_(True)
    optim = torch.optim.Adam([params], lr=lr)
    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)  # the data plate
    guide = local_guide(model, params)
    previous, window, step = -float("inf"), torch.zeros((), dtype=torch.float64, device=x.device), 0
    for step in range(1, max_steps + 1):
        loss = elbo.differentiable_loss(model.model, guide, x)
        (grad,) = torch.autograd.grad(loss, [params])
        params.grad = grad
        optim.step()
        window -= loss.detach()  # read once per check, not once per step
        if step % check_every == 0:
            mean = window.item() / (check_every * len(x))
            if mean - previous < tol:
                break
            previous = mean
            window.zero_()
    return params.detach(), step


def inference_gaps(
    model: LatentModel,
    x: torch.Tensor,
    estimate: MarginalEstimate | None = None,
    num_samples: int = 1000,
    seed: int = 0,
    **fit_kwargs,
) -> InferenceGaps:
    """Decompose the ELBO gap of each datapoint of ``x [B, D]``.

    ``estimate``: the amortised guide's estimate for these datapoints, whose
    ``elbo`` is ELBO[q] (else estimated here with ``num_samples``). log p(x)
    and ELBO[q*] come from ``num_samples`` draws of the fitted q*.
    ``fit_kwargs`` go to `fit_local_posteriors`.
    """
    if estimate is None:
        estimate = estimate_log_marginal(model.model, model.guide, x, num_samples, ladder=(), seed=seed)
    with forked_rng(x.device):
        torch.manual_seed(seed)
        params, steps = fit_local_posteriors(model, x, **fit_kwargs)
    optimal = estimate_log_marginal(model.model, local_guide(model, params), x, num_samples, ladder=(), seed=seed + 1)
    return InferenceGaps(optimal.log_px, estimate.elbo, optimal.elbo, steps)
