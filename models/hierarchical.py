r"""L >= 1 stochastic layers of diagonal Normals (Burda et al. 2015, section 5): generative top-down,
inference bottom-up.

For images ``x [B, x_dim]`` and layers z1 (nearest the data) .. zL of sizes ``latent_dims`` ``d_1..d_L``::

    model:  z_L ~ p(z_L)                       N(0, I), or the VampPrior (see below)
            z_l ~ N(mu, diag sigma^2) = p(z_l | z_{l+1})    l = L-1 .. 1, an MLP of layer l+1's widths reversed
            x   ~ p(x | z1)                    the likelihood on an MLP of layer 1's widths reversed
    guide:  z_l ~ N(mu, diag sigma^2) = q(z_l | z_{l-1})    l = 1 .. L, z_0 = x, an MLP of ``layer_hidden_dims[l]``

Every Normal's scale is softplus(.) + `models.guides.MIN_SCALE`, as the guides'. Sites ``"z1"`` ..
``"zL"`` (event shapes ``[d_l]``) and ``"x"`` (event ``[x_dim]``) sit in ``pyro.plate("data", B)``;
``kl_weight`` scales every latent site in both programs, as in `models.base`. Burda et al.'s two-layer
model (preset ``burda2015-2layer``) is ``latent_dims=(100, 50)``, ``layer_hidden_dims=((200, 200),
(100, 100))``, tanh: x(784) -> 200 -> 200 -> z1(100) -> 100 -> 100 -> z2(50), and back. With L = 1 it is
`models.vae.VAE` with the diagonal guide: the same networks, the same ELBO.

``prior="vamp"``: p(z_L) = (1/K) sum_k q(z_L | u_k) over K learned pseudo-inputs (`models.priors`), where
q(z_L | u) runs u up the bottom-up path with every lower layer at its mean (z_l = E q(z_l | z_{l-1})), so each
component is a diagonal Normal; the exact marginal over the lower layers has no closed form.

``TraceMeanField_ELBO`` is biased here for L >= 2 (z1's parent z2 in the model is its child in the guide),
so `pyro_vae.config.TrainConfig` refuses ``--elbo meanfield`` for it; train with ``trace`` or ``iwae``.

Pictures: the code layer is z1 (`code_site`): `encode` is the mean of q(z1|x), `decode` maps z1 to E[x|z1],
`reconstruct` is their composition, `generate` draws z_L .. z1 ancestrally from the full prior and shows
E[x|z1]. `z_dim` is d_1.
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from models.base import LatentModel
from models.guides import DiagonalNormal
from models.likelihoods import drop_level_kwargs, make_likelihood
from models.priors import StandardNormal, make_prior
from models.registry import register_model
from models.tiled import tiled_observation
from pyro_vae.config import DEFAULT_BIT_DEPTH, DEFAULT_MIXTURE_COMPONENTS, DEFAULT_PSEUDO_INPUTS, ModelConfig
from pyro_vae.errors import ConfigError
from pyro_vae.nets import MLP, glorot_initialise


@register_model("hierarchical")
class HierarchicalVAE(LatentModel):
    """L stochastic layers ``latent_dims`` (z1 first), layer l's MLPs of widths ``layer_hidden_dims[l]``.

    Networks: ``encoders[l]`` gives q(z_{l+1} | z_l) (0-based l, z_0 = x); ``decoder`` gives p(x | z1);
    ``conditionals[l]`` gives p(z_{l+1} | z_{l+2}). ``likelihood``, ``obs_scale``, ``activation`` and
    ``image_shape`` as in `models.vae.VAE` (``activation`` None: the defaults policy's); ``prior`` ``standard`` or ``vamp`` (on z_L) with
    ``pseudo_inputs`` K.
    """

    code_site = "z1"

    def __init__(
        self,
        x_dim: int = 784,
        latent_dims: tuple[int, ...] = (100, 50),
        layer_hidden_dims: tuple[tuple[int, ...], ...] = ((200, 200), (100, 100)),
        activation: str | None = None,
        likelihood: str = "bernoulli",
        obs_scale: float = 1.0,
        prior: str = "standard",
        pseudo_inputs: int = DEFAULT_PSEUDO_INPUTS,
        image_shape: tuple[int, ...] | None = None,
        mixture_components: int = DEFAULT_MIXTURE_COMPONENTS,
        bit_depth: int = DEFAULT_BIT_DEPTH,
    ):
        super().__init__()
        self.config = ModelConfig.hierarchical(latent_dims, layer_hidden_dims, x_dim=x_dim, activation=activation,
                                               likelihood=likelihood, obs_scale=obs_scale, prior=prior,
                                               pseudo_inputs=pseudo_inputs, image_shape=image_shape,
                                               mixture_components=mixture_components,
                                               bit_depth=bit_depth).resolved().validated()
        dims, widths, activation = self.config.latent_dims, self.config.layer_hidden_dims, self.config.activation
        self.latent_dims, self.sites = dims, tuple(f"z{l + 1}" for l in range(len(dims)))
        self.z_dim = dims[0]
        self.likelihood = make_likelihood(likelihood, obs_scale, mixture_components, 2 ** bit_depth - 1)
        self.heads = nn.ModuleList(DiagonalNormal(d) for d in dims)  # no parameters: raw -> N(mu, diag sigma^2)
        # Built in this order (encoders, decoder, conditionals) so that L = 1 draws a VAE's initial parameters.
        # Layer 0's encoder sees x in [0, 1] (levels 0..top divided by top), as `pyro_vae.nets` says.
        input_scales = [1.0 / self.likelihood.pixel_scale] + [1.0] * (len(dims) - 1)
        self.encoders = nn.ModuleList(MLP(d_in, w, 2 * d, activation, scale)
                                      for d_in, w, d, scale in zip((x_dim, *dims[:-1]), widths, dims, input_scales))
        self.decoder = MLP(dims[0], tuple(reversed(widths[0])), self.likelihood.params_per_pixel * x_dim, activation)
        self.conditionals = nn.ModuleList(MLP(dims[l + 1], tuple(reversed(widths[l + 1])), 2 * dims[l], activation)
                                          for l in range(len(dims) - 1))
        self.vamp = make_prior(prior, x_dim, pseudo_inputs, self.likelihood.pixel_scale)  # on z_L; None for N(0, I)

    @classmethod
    def from_config(cls, config: ModelConfig) -> "HierarchicalVAE":
        if config.family != "hierarchical":
            raise ConfigError(f"{cls.__name__} is the hierarchical family; the config is of the {config.family!r} "
                              "family (build it with models.build_from_config)")
        config = config.resolved()
        return cls(config.x_dim, config.latent_dims, config.layer_hidden_dims, config.activation, config.likelihood,
                   config.obs_scale, config.prior, config.pseudo_inputs, config.image_shape,
                   config.mixture_components, config.bit_depth)

    def init_kwargs(self) -> dict[str, Any]:
        c = self.config
        kwargs = {"x_dim": c.x_dim, "latent_dims": list(c.latent_dims),
                  "layer_hidden_dims": [list(w) for w in c.layer_hidden_dims], "activation": c.activation,
                  "likelihood": c.likelihood, "obs_scale": c.obs_scale, "prior": c.prior,
                  "pseudo_inputs": c.pseudo_inputs,
                  "mixture_components": c.mixture_components, "bit_depth": c.bit_depth}
        if c.image_shape is not None:
            kwargs["image_shape"] = list(c.image_shape)
        return drop_level_kwargs(kwargs, c)

    def initialise_burda2015(self, mean_pixels: torch.Tensor) -> bool:
        """Burda et al. (2015)'s start (``init="burda2015"``): Glorot-uniform weights and zero biases in every MLP,
        the decoder's output bias where p(x|z1) has mean ``mean_pixels [x_dim]`` (`Likelihood.output_bias`)."""
        for net in (*self.encoders, *self.conditionals):
            glorot_initialise(net)
        glorot_initialise(self.decoder, self.likelihood.output_bias(mean_pixels))
        return True

    # --- the distributions -------------------------------------------------------
    def layer_posterior(self, layer: int, below: torch.Tensor) -> dist.TorchDistribution:
        """q(z_{layer+1} | z_layer) (0-based ``layer``; ``below`` is x for layer 0), event ``[d_{layer+1}]``."""
        return self.heads[layer](self.encoders[layer](below))

    def conditional(self, layer: int, above: torch.Tensor) -> dist.TorchDistribution:
        """p(z_{layer+1} | z_{layer+2}) for ``above`` the layer's parent, 0-based ``layer`` < L - 1."""
        return self.heads[layer](self.conditionals[layer](above))

    def top_posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z_L | x) along the bottom-up path with each lower layer at its mean (the VampPrior's components)."""
        h = x
        for layer in range(len(self.latent_dims) - 1):
            h = self.layer_posterior(layer, h).mean
        return self.layer_posterior(len(self.latent_dims) - 1, h)

    def prior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """p(z_L), the top layer's prior: N(0, I), or the VampPrior (1/K) sum_k q(z_L | u_k); event ``[d_L]``."""
        if self.vamp is not None:
            return self.vamp(self.top_posterior)
        return StandardNormal.of_size(self.latent_dims[-1], x).to_event(1)

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z1|x), the code layer's posterior, event ``[d_1]``."""
        return self.layer_posterior(0, x)

    def observation(self, z1: torch.Tensor) -> dist.TorchDistribution:
        """p(x|z1) for ``z1 [..., d_1]``, event shape ``[x_dim]``."""
        return self.likelihood(self.decoder(z1))

    # --- the Pyro programs -------------------------------------------------------
    def model(self, x: torch.Tensor, kl_weight: float | torch.Tensor = 1.0) -> torch.Tensor:
        """p(z_L) prod_l p(z_l | z_{l+1}) p(x | z1) for images ``x [B, x_dim]``; returns ``x``."""
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=kl_weight):
                z = pyro.sample(self.sites[-1], self.prior(x))
                for layer in reversed(range(len(self.sites) - 1)):
                    z = pyro.sample(self.sites[layer], self.conditional(layer, z))
            return pyro.sample("x", tiled_observation(self.observation, z), obs=x)

    def guide(self, x: torch.Tensor, kl_weight: float | torch.Tensor = 1.0) -> torch.Tensor:
        """prod_l q(z_l | z_{l-1}) for images ``x [B, x_dim]``; returns ``z1 [B, d_1]``."""
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=kl_weight):
            z1 = z = pyro.sample(self.sites[0], self.layer_posterior(0, x))
            for layer in range(1, len(self.sites)):
                z = pyro.sample(self.sites[layer], self.layer_posterior(layer, z))
            return z1

    # --- pictures ----------------------------------------------------------------
    @torch.no_grad()
    def generate(self, num_images: int) -> torch.Tensor:
        """Mean images E[x|z1] for z_L .. z1 drawn ancestrally from the prior: ``[num_images, x_dim]``."""
        anchor = next(self.parameters())
        z = self.prior(anchor).sample((num_images,))
        for layer in reversed(range(len(self.sites) - 1)):
            z = self.conditional(layer, z).sample()
        return self.decode(z)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code of images ``x [B, x_dim]``: the mean of q(z1|x), ``[B, d_1]``."""
        return self.posterior(x).mean

    @torch.no_grad()
    def decode(self, z1: torch.Tensor) -> torch.Tensor:
        """Mean images E[x|z1] for codes ``z1 [..., d_1]``: ``[..., x_dim]``."""
        return self.observation(z1).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x|z1] at the mean of q(z1|x): ``[B, x_dim]``."""
        return self.decode(self.encode(x))
