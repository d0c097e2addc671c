"""Pyro programs: generative models p(z) p(x|z) and amortised guides q(z|x).

Every family exposes ``model(x)`` and ``guide(x)`` with datapoints in
``pyro.plate("data", len(x))``, any continuous latent sites (the same in both)
and one observed site: the contract of `models.base.LatentModel`, all that
``inference`` relies on, so every estimator works on every variant. The
families shipped: `VAE` (one latent site ``"z"``, `models.base.SingleLatentModel`)
and `HierarchicalVAE` (``"z1"`` .. ``"zL"``). Each family is registered under a
name (`register_model`): the only way a checkpoint can name the class that
rebuilds it. `build_from_config` builds the family a
`pyro_vae.config.ModelConfig` names.
"""

from models.base import LatentModel, SingleLatentModel
from models.hierarchical import HierarchicalVAE
from models.linear import LinearGaussianVAE
from models.mixture_prior import MixturePriorVAE
from models.registry import register_model, registered_models
from models.vae import VAE
from pyro_vae.config import ModelConfig
from pyro_vae.errors import ConfigError

#: ``ModelConfig.family`` -> the class that builds it (``from_config``).
FAMILY_CLASSES: dict[str, type[LatentModel]] = {"vae": VAE, "hierarchical": HierarchicalVAE}


def build_from_config(config: ModelConfig) -> LatentModel:
    """The model ``config`` describes: `VAE` for family ``vae``, `HierarchicalVAE` for ``hierarchical``; fields
    left None are the defaults policy's (`ModelConfig.resolved`)."""
    config = config.resolved().validated()
    if config.family not in FAMILY_CLASSES:
        raise ConfigError(f"--family must be one of {', '.join(FAMILY_CLASSES)}, got {config.family!r}")
    return FAMILY_CLASSES[config.family].from_config(config)


__all__ = ["FAMILY_CLASSES", "HierarchicalVAE", "LatentModel", "LinearGaussianVAE", "MixturePriorVAE",
           "SingleLatentModel", "VAE", "build_from_config", "register_model", "registered_models"]
