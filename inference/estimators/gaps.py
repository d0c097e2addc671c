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
gradient), until the mean ELBO stops improving.

Which family q* is (`local_posterior`, recorded as ``family`` in the report):

- a model whose guide is ``posterior_head(encoder(x))`` (`models.base.SingleLatentModel`):
  the guide's own family, phi*_x starting at encoder(x); for the ``iaf`` head, phi*_x
  replaces the encoder output (base and flow context) while the flow's own weights
  stay shared;
- any other model (several latent sites, any names): a diagonal Normal over all the
  latent sites jointly in unconstrained space, one per datapoint: Pyro's ``AutoNormal``
  on the model (x is observed in it), started at the amortised guide's means (a draw
  where a site has none) with scale 0.1. Its approximation gap is then that of the
  mean-field Gaussian family, not of the model's own guide family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.infer.autoguide.initialization import init_to_value

from inference.estimators.importance import MarginalEstimate, estimate_log_marginal, sample_sites
from models.base import LatentModel
from pyro_vae.device import forked_rng


@dataclass
class InferenceGaps:
    """Per-datapoint gaps and the ELBOs they come from: float64 tensors ``[B]``, nats."""

    log_px: torch.Tensor
    elbo_amortized: torch.Tensor
    elbo_optimal: torch.Tensor
    steps: int  # optimisation steps taken for q*
    family: str = ""  # what q* is (`LocalPosterior.family`)

    @property
    def total(self) -> torch.Tensor:
        return self.log_px - self.elbo_amortized

    @property
    def approximation(self) -> torch.Tensor:
        return self.log_px - self.elbo_optimal

    @property
    def amortization(self) -> torch.Tensor:
        return self.elbo_optimal - self.elbo_amortized


@dataclass
class LocalPosterior:
    """q*: ``guide(x)``, a Pyro program with its own parameters ``params`` for each datapoint of the ``x`` it was
    made for, and ``family``, what it is (in words, for the report)."""

    guide: Callable
    params: list[torch.Tensor]
    family: str


def local_guide(model: LatentModel, params: torch.Tensor):
    """A guide with free parameters ``params [B, P]`` per datapoint instead of ``encoder(x)``."""

    def guide(x: torch.Tensor) -> torch.Tensor:
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", model.posterior_head(params))

    return guide


def _central_values(guide: Callable, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each latent site's value in one run of ``guide`` on ``x``: its distribution's mean, a draw where it has none."""
    values = {}
    for name, site in sample_sites(poutine.trace(guide).get_trace(x)).items():
        if not site["is_observed"]:
            try:
                values[name] = site["fn"].mean.detach()
            except NotImplementedError:
                values[name] = site["value"].detach()
    return values


def local_posterior(model: LatentModel, x: torch.Tensor) -> LocalPosterior:
    """q* for the datapoints ``x [B, D]`` (module doc), at its starting point."""
    if isinstance(getattr(model, "encoder", None), torch.nn.Module) and callable(getattr(model, "posterior_head", None)):
        with torch.no_grad():
            params = model.encoder(x).detach().clone().requires_grad_(True)
        return LocalPosterior(local_guide(model, params), [params],
                              "the guide's own family (posterior_head), its parameters fitted per image")
    with torch.no_grad():
        start = _central_values(model.guide, x)
    guide = AutoNormal(model.model, init_loc_fn=init_to_value(values=start), init_scale=0.1)
    guide(x)  # builds its per-datapoint locations and scales from the model's trace
    return LocalPosterior(guide, list(guide.parameters()),
                          "a diagonal Normal over all latent sites in unconstrained space, fitted per image "
                          "(Pyro's AutoNormal on the model given x)")


def fit_local_posteriors(
    model: LatentModel,
    x: torch.Tensor,
    num_particles: int = 16,
    lr: float = 1e-2,
    max_steps: int = 3000,
    check_every: int = 100,
    tol: float = 0.01,
) -> tuple[LocalPosterior, int]:
    """Optimise q*(z|x_i) (`local_posterior`) for each datapoint of ``x [B, D]``; return ``(q*, steps)``.

    Stops when the mean ELBO over the last ``check_every`` steps beats the
    previous window's by less than ``tol`` nats per datapoint, or at ``max_steps``.
    """
    local = local_posterior(model, x)
    optim = torch.optim.Adam(local.params, lr=lr)
    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)  # the data plate
    previous, window, step = -float("inf"), torch.zeros((), dtype=torch.float64, device=x.device), 0
    for step in range(1, max_steps + 1):
        loss = elbo.differentiable_loss(model.model, local.guide, x)
        for p, grad in zip(local.params, torch.autograd.grad(loss, local.params)):
            p.grad = grad
        optim.step()
        window -= loss.detach()  # read once per check, not once per step
        if step % check_every == 0:
            mean = window.item() / (check_every * len(x))
            if mean - previous < tol:
                break
            previous = mean
            window.zero_()
    for p in local.params:
        p.requires_grad_(False)
    return local, step


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
    with pyro.get_param_store().scope(), forked_rng(x.device):  # q*'s parameters stay out of the caller's store
        torch.manual_seed(seed)
        local, steps = fit_local_posteriors(model, x, **fit_kwargs)
        optimal = estimate_log_marginal(model.model, local.guide, x, num_samples, ladder=(), seed=seed + 1)
    return InferenceGaps(optimal.log_px, estimate.elbo, optimal.elbo, steps, local.family)
