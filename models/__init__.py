"""Pyro programs: generative models p(z) p(x|z) and amortised guides q(z|x).

Every family exposes ``model(x)`` and ``guide(x)`` with datapoints in
``pyro.plate("data", len(x))``, the latent site ``"z"`` and the observed site
``"x"``, so every estimator in ``inference`` works on every variant.
"""

from models.base import LatentModel
from models.linear import LinearGaussianVAE
from models.vae import VAE

__all__ = ["LatentModel", "LinearGaussianVAE", "VAE"]
