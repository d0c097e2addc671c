"""Pyro programs: generative models p(z) p(x|z) and amortised guides q(z|x).

Every family exposes ``model(x)`` and ``guide(x)`` with datapoints in
``pyro.plate("data", len(x))``, any continuous latent sites (the same in both)
and one observed site: the contract of `models.base.LatentModel`, all that
``inference`` relies on, so every estimator works on every variant. Each
family is registered under a name (`register_model`): the only way a
checkpoint can name the class that rebuilds it.
"""

from models.base import LatentModel, SingleLatentModel
from models.linear import LinearGaussianVAE
from models.mixture_prior import MixturePriorVAE
from models.registry import register_model, registered_models
from models.vae import VAE

__all__ = ["LatentModel", "LinearGaussianVAE", "MixturePriorVAE", "SingleLatentModel", "VAE", "register_model",
           "registered_models"]
