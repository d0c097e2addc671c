"""Pyro programs: generative models p(z) p(x|z) and amortised guides q(z|x).

Every family exposes ``model(x)`` and ``guide(x)`` with datapoints in
``pyro.plate("data", len(x))``, the latent site ``"z"`` and the observed site
``"x"``, so every estimator in ``inference`` works on every variant. Each
family is registered under a name (`register_model`): the only way a
checkpoint can name the class that rebuilds it.
"""

from models.base import LatentModel
from models.linear import LinearGaussianVAE
from models.mixture_prior import MixturePriorVAE
from models.registry import register_model, registered_models
from models.vae import VAE

__all__ = ["LatentModel", "LinearGaussianVAE", "MixturePriorVAE", "VAE", "register_model", "registered_models"]
