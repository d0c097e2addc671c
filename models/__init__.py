"""Pyro programs: generative models p(z) p(x|z) and amortised guides q(z|x).

Every family exposes ``model(x)`` and ``guide(x)`` with datapoints in
``pyro.plate("data", len(x))`` and the observed site ``"x"``; the latent
sites are ``"z"`` (one layer) or ``"z1"`` .. ``"zL"`` (`HierarchicalVAE`),
so every estimator in ``inference`` that reads traces works on every variant.
Each family is registered under a name (`register_model`): the only way a
checkpoint can name the class that rebuilds it. `build_from_config` builds
the family a `pyro_vae.config.ModelConfig` names.
"""

from models.base import LatentModel
from models.hierarchical import HierarchicalVAE
from models.linear import LinearGaussianVAE
from models.mixture_prior import MixturePriorVAE
from models.registry import register_model, registered_models
from models.vae import VAE
from pyro_vae.config import FAMILIES, ModelConfig
from pyro_vae.errors import ConfigError

#: ``ModelConfig.family`` -> the class that builds it (``from_config``).
FAMILY_CLASSES: dict[str, type[LatentModel]] = {"vae": VAE, "hierarchical": HierarchicalVAE}
assert tuple(FAMILY_CLASSES) == FAMILIES


def build_from_config(config: ModelConfig) -> LatentModel:
    """The model ``config`` describes: `VAE` for family ``vae``, `HierarchicalVAE` for ``hierarchical``."""
    config.validated()
    if config.family not in FAMILY_CLASSES:
        raise ConfigError(f"--family must be one of {', '.join(FAMILY_CLASSES)}, got {config.family!r}")
    return FAMILY_CLASSES[config.family].from_config(config)


__all__ = ["FAMILY_CLASSES", "HierarchicalVAE", "LatentModel", "LinearGaussianVAE", "MixturePriorVAE", "VAE",
           "build_from_config", "register_model", "registered_models"]
