r"""Active latent units per latent site (Burda et al. 2015, section 5.2), for any guide.

A unit u of a latent site is *active* when its posterior mean moves with the data:

    A_u = Cov_x( E_{q(z|x)}[z_u] ) > 0.01

The posterior mean E_q[z_u | x] is estimated for each datapoint from ``num_draws``
runs of the guide in a vectorised particle plate, Rao-Blackwellised: each run
contributes the mean of the site's distribution given the draws of the sites
it depends on (exact for a site that depends on x alone, such as the first
layer), or the drawn value where that distribution has no closed-form mean (a
flow). Units are the site's event elements, flattened; values are in the
site's own (constrained) space.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine

from inference.estimators.importance import DATA_PLATE, inspect_programs
from pyro_vae.device import forked_rng

#: Burda et al.'s threshold on the variance over datapoints of a unit's posterior mean.
ACTIVITY_THRESHOLD = 0.01


@dataclass
class SiteActivity:
    """One latent site: ``activity [units]`` (Cov_x of each unit's posterior mean) and the count above threshold."""

    activity: torch.Tensor
    threshold: float = ACTIVITY_THRESHOLD

    @property
    def units(self) -> int:
        return self.activity.numel()

    @property
    def active(self) -> int:
        return int((self.activity > self.threshold).sum())


@torch.no_grad()
def posterior_means(model: Callable, guide: Callable, x: torch.Tensor, num_draws: int = 100, seed: int = 0,
                    batch_size: int = 500) -> dict[str, torch.Tensor]:
    """E_q[z_s | x_i] for every latent site s of ``guide`` and image of ``x [N, D]``: ``{s: [N, units_s]}``.

    Runs under a forked RNG seeded by ``seed``: the caller's random stream is left alone.
    """
    means: dict[str, list[torch.Tensor]] = {}
    with forked_rng(x.device):
        layout = inspect_programs(model, guide, x[:1])
        torch.manual_seed(seed)
        for xb in x.split(batch_size):
            with pyro.plate("_particles", num_draws, dim=layout.particle_dim):
                trace = poutine.trace(guide).get_trace(xb)
            for name in layout.guide_sites:
                site = trace.nodes[name]
                try:
                    value = site["fn"].mean.expand(site["value"].shape)  # a mean may be shared by every particle
                except NotImplementedError:
                    value = site["value"]
                batch_dims = value.dim() - site["fn"].event_dim
                data_dim = next(f.dim for f in site["cond_indep_stack"] if f.name == DATA_PLATE)
                # [..., S, ..., B, ..., *event] -> [B, S, the rest]: the rest (other plates, the event) are units
                value = value.movedim((batch_dims + data_dim, batch_dims + layout.particle_dim), (0, 1))
                means.setdefault(name, []).append(value.mean(1).reshape(len(xb), -1))
    return {name: torch.cat(parts) for name, parts in means.items()}


def active_units(model: Callable, guide: Callable, x: torch.Tensor, num_draws: int = 100, seed: int = 0,
                 threshold: float = ACTIVITY_THRESHOLD) -> dict[str, SiteActivity]:
    """Burda et al.'s activity of every unit of every latent site of ``guide`` over the images ``x [N, D]``."""
    return {name: SiteActivity(m.double().var(0, unbiased=False).cpu(), threshold)
            for name, m in posterior_means(model, guide, x, num_draws, seed).items()}


#: Images and guide draws of the activity measured after every training epoch (`epoch_site_metrics`): the
#: first layer's posterior mean is exact with one draw; deeper layers average over draws of the layers below.
EPOCH_IMAGES, EPOCH_DRAWS = 1000, 10


def collapsed_sites(sites: dict[str, dict]) -> list[str]:
    """The names of the latent sites with no active unit, from ``{site: {"active_units": n, ...}}`` (a report's
    ``latent_sites`` or an epoch record's ``sites``), in their order."""
    return [name for name, site in sites.items() if int(site["active_units"]) == 0]


def collapse_warning(site: str, units: int, when: str) -> str:
    """The one line that names a collapsed latent site, e.g. ``warning: latent site z has 0 of 50 active units
    after epoch 3: the model ignores it (posterior collapse); ...``; ``when`` says at which point."""
    return (f"warning: latent site {site} has 0 of {units} active units {when}: the model ignores it (posterior "
            "collapse), so its ELBO and log p(x) are those of a model without it. Try p(x|z) started at the mean "
            "image (--init burda2015), KL warm-up (--kl-warmup EPOCHS), another --activation, a smaller --lr or "
            "more epochs; see docs/training.md, 'Posterior collapse'")
