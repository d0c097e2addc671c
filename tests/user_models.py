"""Models a user writes from scratch against the contract of `models.base.LatentModel` (no `VAE` attribute, other
site names, several stochastic layers), for the tests that take the whole toolchain through them. Importing this
module registers them, as importing a user's own module does."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from models.base import LatentModel
from models.registry import register_model


def mlp(n_in: int, hidden: int, n_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out))


def diagonal_normal(params: torch.Tensor) -> dist.TorchDistribution:
    loc, raw = params.chunk(2, -1)
    return dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1)


@register_model("test-style-content")
class StyleContentVAE(LatentModel):
    """Two latent sites side by side, ``style`` (2) and ``content`` (6), observed site ``image``."""

    def __init__(self, x_dim: int = 784, hidden: int = 64):
        super().__init__()
        self.x_dim, self.hidden = x_dim, hidden
        self.encoder_net, self.decoder_net = mlp(x_dim, hidden, 16), mlp(8, hidden, x_dim)

    def init_kwargs(self):
        return {"x_dim": self.x_dim, "hidden": self.hidden}

    def model(self, x, kl_weight=1.0):
        with pyro.plate("data", len(x)):
            with poutine.scale(scale=kl_weight):
                style = pyro.sample("style", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
                content = pyro.sample("content", dist.Normal(x.new_zeros(6), 1.0).to_event(1))
            logits = self.decoder_net(torch.cat([style, content], -1))
            return pyro.sample("image", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x, kl_weight=1.0):
        raw = self.encoder_net(x)
        with pyro.plate("data", len(x)), poutine.scale(scale=kl_weight):
            pyro.sample("style", diagonal_normal(torch.cat([raw[..., :2], raw[..., 8:10]], -1)))
            pyro.sample("content", diagonal_normal(torch.cat([raw[..., 2:8], raw[..., 10:]], -1)))


@register_model("test-two-layer")
class TwoLayerVAE(LatentModel):
    """Two stochastic layers: p(top) p(bottom | top) p(x | bottom), guide q(bottom | x) q(top | bottom).

    Its plates take ``x.shape[0]``, which the compiled losses trace as the batch size; the other models here
    take ``len(x)``, which tracing freezes (their runs fall back to the plain loss, one line saying why)."""

    def __init__(self, x_dim: int = 784, bottom: int = 16, top: int = 8, hidden: int = 64):
        super().__init__()
        self.sizes = {"x_dim": x_dim, "bottom": bottom, "top": top, "hidden": hidden}
        self.q_bottom, self.q_top = mlp(x_dim, hidden, 2 * bottom), mlp(bottom, hidden, 2 * top)
        self.p_bottom, self.p_x = mlp(top, hidden, 2 * bottom), mlp(bottom, hidden, x_dim)

    def init_kwargs(self):
        return dict(self.sizes)

    def model(self, x, kl_weight=1.0):
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=kl_weight):
                top = pyro.sample("top", dist.Normal(x.new_zeros(self.sizes["top"]), 1.0).to_event(1))
                bottom = pyro.sample("bottom", diagonal_normal(self.p_bottom(top)))
            return pyro.sample("x", dist.Bernoulli(logits=self.p_x(bottom)).to_event(1), obs=x)

    def guide(self, x, kl_weight=1.0):
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=kl_weight):
            bottom = pyro.sample("bottom", diagonal_normal(self.q_bottom(x)))
            pyro.sample("top", diagonal_normal(self.q_top(bottom)))


USER_MODELS = {"style-content": StyleContentVAE, "two-layer": TwoLayerVAE}


@register_model("test-blind-decoder")
class BlindDecoderVAE(LatentModel):
    """A decoder that never reads its code: p(x|z) is one learned image, whatever z. The ELBO is best with
    q(z|x) = p(z), so training leaves z with no active unit (posterior collapse by construction). The encoder's
    last layer starts at zero, where that optimum is, rather than leaving it to many epochs of training."""

    def __init__(self, x_dim: int = 784, z_dim: int = 4, hidden: int = 64):
        super().__init__()
        self.sizes = {"x_dim": x_dim, "z_dim": z_dim, "hidden": hidden}
        self.encoder_net = mlp(x_dim, hidden, 2 * z_dim)
        nn.init.zeros_(self.encoder_net[-1].weight)
        self.logits = nn.Parameter(torch.zeros(x_dim))

    def init_kwargs(self):
        return dict(self.sizes)

    def model(self, x, kl_weight=1.0):
        with pyro.plate("data", len(x)):
            with poutine.scale(scale=kl_weight):
                z = pyro.sample("z", dist.Normal(x.new_zeros(self.sizes["z_dim"]), 1.0).to_event(1))
            logits = self.logits.expand(*z.shape[:-1], self.sizes["x_dim"])  # z's shape, never its values
            return pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x, kl_weight=1.0):
        with pyro.plate("data", len(x)), poutine.scale(scale=kl_weight):
            pyro.sample("z", diagonal_normal(self.encoder_net(x)))
