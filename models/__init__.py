"""Pyro programs: generative models p(z) p(x|z) and amortised guides q(z|x).

Every family exposes ``model(x)`` and ``guide(x)`` with datapoints in
``pyro.plate("data", x.shape[0])``, any continuous latent sites (the same in both)
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
from models.registry import construct, register_model, registered_models
from models.vae import VAE
from pyro_vae.config import ModelConfig

#: ``ModelConfig.family`` -> the class that builds it (``from_config``).
FAMILY_CLASSES: dict[str, type[LatentModel]] = {"vae": VAE, "hierarchical": HierarchicalVAE}


def build_from_config(config: ModelConfig) -> LatentModel:
    """The model ``config`` describes: `VAE` for family ``vae``, `HierarchicalVAE` for ``hierarchical`` (fields
    left None are the defaults policy's, `ModelConfig.resolved`); any other family names a registered model,
    built by its constructor from ``config.model_args`` (`models.registry.construct`)."""
    config = config.resolved()  # checked by the constructor it reaches (`VAE`, `HierarchicalVAE`, `construct`)
    if config.own_model:
        return construct(config.family, dict(config.model_args or {}))
    return FAMILY_CLASSES[config.family].from_config(config)


__all__ = ["FAMILY_CLASSES", "HierarchicalVAE", "LatentModel", "LinearGaussianVAE", "MixturePriorVAE",
           "SingleLatentModel", "VAE", "build_from_config", "register_model", "registered_models"]
