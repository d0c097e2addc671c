r"""The variational autoencoder of Kingma & Welling (2014) as two Pyro programs.

Generative model and amortised guide, for a batch of ``B`` images ``x [B, D]``::

    model:  z_i ~ N(0, I_{z_dim}),   x_i ~ p(x | decoder(z_i))      i = 1..B
    guide:  z_i ~ q(z | encoder(x_i))

Both put the datapoints in ``pyro.plate("data", B)``; the latent site is
``"z"`` (event shape ``[z_dim]``) and the observed site ``"x"`` (event shape
``[D]``). Trained by maximising the ELBO
``E_q[log p(x, z) - log q(z|x)] <= log p(x)`` (nats per image).

The likelihood p(x|z), the guide family q(z|x) and the prior p(z) are picked
by name (``models.likelihoods.LIKELIHOODS``, ``models.guides.GUIDES``,
``models.priors``: N(0, I) or the VampPrior (1/K) sum_k q(z | u_k) over K
learned pseudo-inputs); to change another piece subclass `VAE` and override
one method. The amortised posterior and the Pyro programs live in
`models.base.SingleLatentModel`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pyro.distributions as dist
import torch

from models.base import SingleLatentModel
from models.guides import make_guide
from models.likelihoods import drop_level_kwargs, make_likelihood
from models.priors import make_prior
from models.registry import register_model
from pyro_vae.config import DEFAULT_BIT_DEPTH, DEFAULT_MIXTURE_COMPONENTS, DEFAULT_PSEUDO_INPUTS, ModelConfig
from pyro_vae.errors import ConfigError
from pyro_vae.nets import MLP, glorot_initialise, make_networks


@register_model("vae")
class VAE(SingleLatentModel):
    """A VAE ``x_dim -> hidden_dims -> z_dim`` with MLP (or conv) encoder and mirrored decoder.

    Defaults are the ``burda2015`` preset: 784-200-200-50, tanh, Bernoulli
    likelihood on logits, diagonal-Normal guide; ``activation`` None is the defaults policy's
    (`pyro_vae.config.default_activation`: relu under a discrete likelihood, else tanh). ``obs_scale`` is the standard
    deviation of the ``gaussian`` likelihood, ``flow_steps`` the depth of the
    ``iaf`` guide, ``arch`` ``mlp`` or ``conv``; ``image_shape`` (C, H, W) of the
    ``x_dim`` pixels (the conv nets need it for anything but 28x28 grey).
    ``prior`` ``standard`` (N(0, I)) or ``vamp``, the VampPrior with
    ``pseudo_inputs`` K learned pseudo-inputs (`models.priors.VampPrior`).
    """

    def __init__(
        self,
        x_dim: int = 784,
        z_dim: int = 50,
        hidden_dims: tuple[int, ...] = (200, 200),
        activation: str | None = None,
        likelihood: str = "bernoulli",
        guide: str = "diagonal",
        obs_scale: float = 1.0,
        flow_steps: int = 2,
        arch: str = "mlp",
        image_shape: tuple[int, ...] | None = None,
        prior: str = "standard",
        pseudo_inputs: int = DEFAULT_PSEUDO_INPUTS,
        mixture_components: int = DEFAULT_MIXTURE_COMPONENTS,
        bit_depth: int = DEFAULT_BIT_DEPTH,
    ):
        super().__init__()
        self.config = ModelConfig(x_dim, z_dim, tuple(hidden_dims), activation, likelihood, guide, obs_scale,
                                  flow_steps, arch, image_shape, prior=prior, pseudo_inputs=pseudo_inputs,
                                  mixture_components=mixture_components, bit_depth=bit_depth).resolved().validated()
        activation, self.z_dim = self.config.activation, z_dim
        self.likelihood = make_likelihood(likelihood, obs_scale, mixture_components, 2 ** bit_depth - 1)
        self.posterior_head = make_guide(guide, z_dim, flow_steps)
        self.encoder, self.decoder = make_networks(arch, x_dim, z_dim, hidden_dims, activation,
                                                   self.posterior_head.num_inputs, self.likelihood.params_per_pixel,
                                                   self.config.image, 1.0 / self.likelihood.pixel_scale)
        # None for N(0, I): no parameters, no state. Pseudo-inputs are images in the data's units.
        self.vamp = make_prior(prior, x_dim, pseudo_inputs, self.likelihood.pixel_scale)

    #: ModelConfig fields that are not this family's constructor arguments (the hierarchical family's).
    _OTHER_FAMILIES_FIELDS = ("family", "latent_dims", "layer_hidden_dims", "model_args")

    @classmethod
    def from_config(cls, config: ModelConfig) -> "VAE":
        if config.family != "vae":
            raise ConfigError(f"{cls.__name__} is the vae family; the config is of the {config.family!r} family "
                              "(build it with models.build_from_config)")
        kwargs = dataclasses.asdict(config.resolved())
        for name in cls._OTHER_FAMILIES_FIELDS:
            del kwargs[name]
        return cls(**kwargs)

    def init_kwargs(self) -> dict[str, Any]:
        kwargs = dataclasses.asdict(self.config)
        for name in self._OTHER_FAMILIES_FIELDS:
            del kwargs[name]
        kwargs["hidden_dims"] = list(kwargs["hidden_dims"])
        if kwargs["image_shape"] is not None:
            kwargs["image_shape"] = list(kwargs["image_shape"])
        else:
            del kwargs["image_shape"]  # as checkpoints before image shapes were recorded
        if kwargs["prior"] == "standard":  # as checkpoints before priors were named
            del kwargs["prior"], kwargs["pseudo_inputs"]
        drop_level_kwargs(kwargs, self.config)
        return kwargs

    def initialise_burda2015(self, mean_pixels: torch.Tensor) -> bool:
        """Burda et al. (2015)'s start (``init="burda2015"``): Glorot-uniform weights and zero biases in the MLPs,
        the decoder's output bias where p(x|z) has mean ``mean_pixels [x_dim]`` (`Likelihood.output_bias`).
        False, changing nothing, for the conv nets."""
        if not (isinstance(self.encoder, MLP) and isinstance(self.decoder, MLP)):
            return False
        glorot_initialise(self.encoder)
        glorot_initialise(self.decoder, self.likelihood.output_bias(mean_pixels))
        return True

    @property
    def standard_normal_code(self) -> bool:
        return self.vamp is None and type(self).prior is VAE.prior

    def prior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """p(z): N(0, I) (`SingleLatentModel.prior`), or the VampPrior (1/K) sum_k q(z | u_k), event shape ``[z_dim]``."""
        return super().prior(x) if self.vamp is None else self.vamp(self.posterior)

    def observation(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x|z) for latents ``z [..., z_dim]``, event shape ``[x_dim]``."""
        return self.likelihood(self.decoder(z))
