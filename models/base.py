r"""The contract every model family keeps, and the base of the one-latent VAEs.

**The contract** (`LatentModel`). A model family is a ``PyroModule`` with two
Pyro programs, ``model(x, kl_weight=1.0)`` and ``guide(x, kl_weight=1.0)``,
for a batch of images ``x [B, D]``:

- the datapoints sit in ``pyro.plate("data", x.shape[0])`` in both programs
  (``len(x)`` works too, but tracing freezes it: the compiled loss falls back);
- any number of continuous latent sites, with any names and shapes, the same
  sites in both programs (the guide samples every latent the model samples);
- one observed site, of any name, with ``obs=x``;
- ``kl_weight`` scales the latent sites (``poutine.scale``) for KL weighting
  and warm-up; estimators read unscaled densities, so it changes no report;
- ``init_kwargs()``: the constructor arguments a checkpoint stores to rebuild
  it, and ``@register_model(NAME)`` (`models.registry`): the only way a
  checkpoint names its class.

That is all that training, checkpoints, the report (importance sampling, AIS,
BDMC, the inference gaps, per-site rate and active units) and the figures may
rely on. Everything below reads the two programs through Pyro traces.

**Optional capabilities**, used where a model has them; where it has not,
that figure or field is skipped (or made from traces) with one line saying so:

- ``generate(n) -> [n, D]``: mean images E[x|z] for z from the prior (else:
  the observed site's mean in a trace of the model with its observation
  released, `inference.estimators.predictive`);
- ``reconstruct(x) -> [B, D]``: E[x|z] at a central code of q(z|x) (else: at
  one draw of the guide);
- ``encode(x) -> [B, d]`` and ``decode(z) -> [..., D]``: a central code and its
  mean image, for the latent map and interpolations (``code_site``, if set,
  names the latent site the code belongs to, e.g. ``"z1"``); ``z_dim == 2``
  with ``standard_normal_code`` (the code's prior is N(0, I)) adds the decoded
  manifold;
- ``likelihood.binary_data``: the likelihood takes 0/1 pixels only (checked
  against the data before training);
- ``encoder`` and ``posterior_head`` (as `SingleLatentModel`): the inference
  gaps fit q* in the guide's own family rather than a diagonal Normal.

A subclass's own ``model`` and ``guide`` run as ``pyro_method``s (decorated or
not), so its ``nn.Module`` parameters are Pyro parameters inside them.

**One latent site** (`SingleLatentModel`, the base of `models.vae.VAE` and
`models.linear.LinearGaussianVAE`)::

    model:  z_i ~ p(z) = N(0, I_{z_dim}),   x_i ~ p(x | z_i)          i in pyro.plate("data")
    guide:  z_i ~ q(z | x_i) = guide_family(encoder(x_i))

A subclass sets ``z_dim``, ``encoder`` (a module mapping ``[..., x_dim]`` to
the raw parameters of the guide head) and ``posterior_head`` (see
``models.guides``), and defines ``observation(z)``. The latent site is ``"z"``,
the observed site ``"x"``; it has every optional capability. ``kl_weight``
makes the ELBO E_q[log p(x|z)] - kl_weight * KL(q(z|x) || p(z)): the beta-VAE
objective, and KL warm-up when the weight grows from 0 to 1.
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule, pyro_method

from models.guides import GuideHead
from models.priors import StandardNormal
from models.tiled import tiled_observation


class LatentModel(PyroModule):
    """The contract (module doc): ``model(x, kl_weight)`` and ``guide(x, kl_weight)`` Pyro programs and
    ``init_kwargs()``. Nothing else is assumed of a model."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass's own ``model`` and ``guide`` run as `pyro_method`s, decorated or not: inside the module's
        Pyro context its parameters are Pyro parameters (``pyro.param`` sites), which the compiled losses take as
        inputs. Written without it, a user's programs would trace the parameters as constants."""
        super().__init_subclass__(**kwargs)
        for name in ("model", "guide"):
            program = cls.__dict__.get(name)
            if callable(program) and not getattr(program, "_in_pyro_context", False):
                wrapped = pyro_method(program)
                wrapped._in_pyro_context = True
                setattr(cls, name, wrapped)

    def init_kwargs(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this model (stored in checkpoints)."""
        raise NotImplementedError

    def model(self, x: torch.Tensor, kl_weight: float | torch.Tensor = 1.0) -> torch.Tensor:
        """p(z) p(x|z) for images ``x [B, D]``, datapoints in ``pyro.plate("data")``."""
        raise NotImplementedError

    def guide(self, x: torch.Tensor, kl_weight: float | torch.Tensor = 1.0) -> Any:
        """q(z|x) for images ``x [B, D]``, the same latent sites as `model`."""
        raise NotImplementedError


class SingleLatentModel(LatentModel):
    """One latent site ``"z"``: the prior, the amortised posterior, the two Pyro programs and every capability."""

    z_dim: int
    encoder: torch.nn.Module
    posterior_head: GuideHead
    code_site: str = "z"  # the latent site that `encode` / `decode` work on (figures title the latent map by it)

    @property
    def standard_normal_code(self) -> bool:
        """Whether the code has the N(0, I) prior (not overridden), so the decoded manifold's grid of N(0, 1)
        quantiles covers the prior."""
        return type(self).prior is SingleLatentModel.prior

    # --- the three distributions -------------------------------------------------
    def prior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """p(z) = N(0, I), event shape ``[z_dim]``, on ``x``'s device and dtype: a `models.priors.StandardNormal`
        (``dist.Normal(0, 1)``'s values and gradients to the bit, with fewer ops in its log-density)."""
        return StandardNormal.of_size(self.z_dim, x).to_event(1)

    def observation(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x|z) for latents ``z [..., z_dim]``, event shape ``[x_dim]``."""
        raise NotImplementedError

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z|x) for images ``x [..., x_dim]``, event shape ``[z_dim]``."""
        return self.posterior_head(self.encoder(x))

    # --- the Pyro programs -------------------------------------------------------
    def model(self, x: torch.Tensor, kl_weight: float | torch.Tensor = 1.0) -> torch.Tensor:
        """p(z) p(x|z) for images ``x [B, x_dim]``; returns ``x``."""
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=kl_weight):
                z = pyro.sample("z", self.prior(x))
            return pyro.sample("x", tiled_observation(self.observation, z), obs=x)

    def guide(self, x: torch.Tensor, kl_weight: float | torch.Tensor = 1.0) -> torch.Tensor:
        """q(z|x) for images ``x [B, x_dim]``; returns ``z [B, z_dim]``."""
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=kl_weight):
            return pyro.sample("z", self.posterior(x))

    # --- pictures ----------------------------------------------------------------
    @torch.no_grad()
    def generate(self, num_images: int) -> torch.Tensor:
        """Mean images E[x|z] for ``z ~ p(z)``: ``[num_images, x_dim]``."""
        anchor = next(self.parameters())
        z = self.prior(anchor).sample((num_images,))
        return self.decode(z)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """A central code of q(z|x) for images ``x [B, x_dim]``: ``[B, z_dim]``.

        q's mean; for a flow (no closed-form mean), its base mean pushed
        through the transforms.
        """
        q = self.posterior(x)
        try:
            return q.mean
        except NotImplementedError:
            z = q.base_dist.mean
            for transform in q.transforms:
                z = transform(z)
            return z

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean images E[x|z] for codes ``z [..., z_dim]``: ``[..., x_dim]``."""
        return self.observation(z).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean images E[x|z] at the central code `encode` gives: ``[B, x_dim]``."""
        return self.decode(self.encode(x))
