"""Objectives on several latent sites: meanfield where it applies, STL and DReG on two layers, the compiled loss.

The oracle is a two-layer linear-Gaussian model, p(z2) p(z1|z2) p(x|z1), whose posterior factorises
bottom-up, p(z1|x) p(z2|z1) (x depends on z2 only through z1), so a bottom-up guide q(z1|x) q(z2|z1)
can hold it exactly; log p(x) is Gaussian in closed form. A small Bernoulli two-layer model of the same
shape (MLP networks, registered ``test-two-layer``) stands in for a hierarchical VAE where training runs.
"""

from __future__ import annotations

import importlib.util
import json
import math
from typing import Any

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.nn import pyro_method
from torch import nn

from inference.training import step as step_module
from inference.training.compiled import check_compiled
from pyro_vae.agreement import failure_cause
from inference.training.objectives import make_elbo, meanfield_violation
from inference.svi import train
from models.base import LatentModel
from models.registry import register_model
from pyro_vae.config import ModelConfig, TrainConfig
from pyro_vae.errors import CompileError, ConfigError

DRAWS = 400
X_DIM, Z1, Z2 = 5, 3, 2


def assert_same_expectation(a: torch.Tensor, b: torch.Tensor) -> None:
    """Every component's mean agrees within Monte Carlo error, and the means are far from 0 (so this can fail)."""
    se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
    z = (a.mean(0) - b.mean(0)) / se.clamp_min(1e-12)
    assert z.abs().max() < 5, z
    assert (a.mean(0).abs() / se.clamp_min(1e-12)).max() > 6  # a real signal to agree on


def _tril(raw: torch.Tensor, dim: int) -> torch.Tensor:
    """A lower-triangular matrix with a positive diagonal from ``raw [dim, dim]``."""
    return torch.tril(raw, -1) + torch.diag_embed(F.softplus(raw.diagonal()) + 1e-3)


def _raw(tril: torch.Tensor) -> torch.Tensor:
    """The inverse of `_tril`."""
    return torch.tril(tril, -1) + torch.diag_embed(torch.log(torch.expm1(tril.diagonal() - 1e-3)))


class TwoLayerLinear(LatentModel):
    """z2 ~ N(0, I), z1 | z2 ~ N(A z2 + a, s1^2 I), x | z1 ~ N(W z1 + b, s^2 I); guide by ``order``.

    ``bottom-up``: q(z1|x) q(z2|z1), the posterior's own factorisation, in the other order than the model's.
    ``independent``: q(z1|x) q(z2|x), also drawn z1 first, but z2 not drawn from z1.
    """

    def __init__(self, order: str = "bottom-up", s1: float = 0.4, s: float = 0.5):
        super().__init__()
        gen = torch.Generator().manual_seed(11)
        self.order, self.s1, self.s = order, s1, s
        self.z_dim = Z1
        self.A = nn.Parameter(1.5 * torch.randn(Z1, Z2, generator=gen))
        self.a = nn.Parameter(0.3 * torch.randn(Z1, generator=gen))
        self.W = nn.Parameter(torch.randn(X_DIM, Z1, generator=gen))
        self.b = nn.Parameter(0.3 * torch.randn(X_DIM, generator=gen))
        self.L1, self.c1 = nn.Parameter(torch.zeros(Z1, X_DIM)), nn.Parameter(torch.zeros(Z1))
        self.T1 = nn.Parameter(torch.zeros(Z1, Z1))
        inputs = Z1 if order == "bottom-up" else X_DIM
        self.L2, self.c2 = nn.Parameter(torch.zeros(Z2, inputs)), nn.Parameter(torch.zeros(Z2))
        self.T2 = nn.Parameter(torch.zeros(Z2, Z2))

    def init_kwargs(self) -> dict[str, Any]:
        return {"order": self.order, "s1": self.s1, "s": self.s}

    @pyro_method
    def model(self, x, kl_weight=1.0):
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=kl_weight):
                z2 = pyro.sample("z2", dist.MultivariateNormal(x.new_zeros(Z2), scale_tril=torch.eye(Z2)))
                z1 = pyro.sample("z1", dist.MultivariateNormal(z2 @ self.A.T + self.a, scale_tril=self.s1 * torch.eye(Z1)))
            return pyro.sample("x", dist.Normal(z1 @ self.W.T + self.b, self.s).to_event(1), obs=x)

    @pyro_method
    def guide(self, x, kl_weight=1.0):
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=kl_weight):
            z1 = pyro.sample("z1", dist.MultivariateNormal(x @ self.L1.T + self.c1, scale_tril=_tril(self.T1, Z1)))
            inputs = z1 if self.order == "bottom-up" else x
            return pyro.sample("z2", dist.MultivariateNormal(inputs @ self.L2.T + self.c2, scale_tril=_tril(self.T2, Z2)))

    @torch.no_grad()
    def set_exact_posterior(self, nudge: float = 0.0, seed: int = 0) -> None:
        """The bottom-up guide at p(z1|x) p(z2|z1), every guide parameter then moved by ``nudge`` N(0, 1)."""
        A, a, W, b, s1, s = self.A, self.a, self.W, self.b, self.s1, self.s
        S1 = A @ A.T + s1**2 * torch.eye(Z1)  # the marginal covariance of z1
        S1_inv = torch.linalg.inv(S1)
        C = torch.linalg.inv(S1_inv + W.T @ W / s**2)
        C = (C + C.T) / 2
        self.L1.copy_(C @ W.T / s**2)
        self.c1.copy_(C @ (S1_inv @ a - W.T @ b / s**2))
        self.T1.copy_(_raw(torch.linalg.cholesky(C)))
        S2 = torch.linalg.inv(torch.eye(Z2) + A.T @ A / s1**2)
        S2 = (S2 + S2.T) / 2
        G = S2 @ A.T / s1**2
        self.L2.copy_(G)
        self.c2.copy_(-G @ a)
        self.T2.copy_(_raw(torch.linalg.cholesky(S2)))
        gen = torch.Generator().manual_seed(seed)
        for p in self.guide_parameters():
            p.add_(nudge * torch.randn(p.shape, generator=gen))

    def guide_parameters(self) -> list[torch.Tensor]:
        return [self.L1, self.c1, self.T1, self.L2, self.c2, self.T2]

    @torch.no_grad()
    def exact_log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        S1 = self.A @ self.A.T + self.s1**2 * torch.eye(Z1)
        cov = self.W @ S1 @ self.W.T + self.s**2 * torch.eye(X_DIM)
        return dist.MultivariateNormal(self.W @ self.a + self.b, covariance_matrix=cov).log_prob(x)

    @torch.no_grad()
    def simulate(self, n: int, seed: int = 5) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        z2 = torch.randn(n, Z2, generator=gen)
        z1 = z2 @ self.A.T + self.a + self.s1 * torch.randn(n, Z1, generator=gen)
        return z1 @ self.W.T + self.b + self.s * torch.randn(n, X_DIM, generator=gen)


def losses(elbo, model: LatentModel, x: torch.Tensor, draws: int = DRAWS) -> torch.Tensor:
    """``[draws]``: the loss (negative ELBO estimate, summed over ``x``) for seeds 0..draws-1."""
    out = []
    for seed in range(draws):
        torch.manual_seed(seed)
        with torch.no_grad():
            out.append(float(elbo.differentiable_loss(model.model, model.guide, x)))
    return torch.tensor(out, dtype=torch.float64)


def gradients(elbo, model: LatentModel, x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """``[DRAWS, P]``: the loss gradient w.r.t. ``params`` for seeds 0..DRAWS-1 (``loss_and_grads`` for RenyiELBO)."""
    rows = []
    for seed in range(DRAWS):
        torch.manual_seed(seed)
        if hasattr(elbo, "differentiable_loss"):
            grads = torch.autograd.grad(elbo.differentiable_loss(model.model, model.guide, x), params)
        else:
            for p in model.parameters():
                p.grad = None
            elbo.loss_and_grads(model.model, model.guide, x)
            grads = [p.grad.clone() for p in params]
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows).double()


# --- meanfield: detected where it is not the ELBO ---------------------------------------------------------------

def test_meanfield_is_not_the_elbo_for_a_bottom_up_guide_and_is_detected():
    """At the exact posterior the ELBO is log p(x) for every draw; TraceMeanField_ELBO's mean sits far from it."""
    model = TwoLayerLinear("bottom-up")
    model.set_exact_posterior()
    x = model.simulate(4)
    exact = float(model.exact_log_marginal(x).sum())
    trace = -losses(make_elbo("trace"), model, x, draws=20)
    assert torch.allclose(trace, torch.full_like(trace, exact), atol=1e-3)  # the oracle: q is the posterior
    meanfield = -losses(make_elbo("meanfield"), model, x)
    se = float(meanfield.std() / math.sqrt(len(meanfield)))
    assert abs(float(meanfield.mean()) - exact) > 10 * se + 0.5, (float(meanfield.mean()), exact, se)
    why = meanfield_violation(model.model, model.guide, x)
    assert why == ("the guide draws 'z2' depending on 'z1' while the model draws 'z1' depending on 'z2', so "
                   "TraceMeanField_ELBO's closed-form KL for 'z1' would not estimate the ELBO")


def test_meanfield_in_another_order_but_without_the_dependence_is_kept_and_is_the_elbo():
    """Sites in another order than the model's are not enough to refuse: here no site is drawn from another."""
    model = TwoLayerLinear("independent")
    with torch.no_grad():
        for p in model.guide_parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    x = model.simulate(4)
    assert meanfield_violation(model.model, model.guide, x) is None
    trace, meanfield = -losses(make_elbo("trace"), model, x), -losses(make_elbo("meanfield"), model, x)
    se = math.sqrt(float(trace.var() + meanfield.var()) / DRAWS)
    assert abs(float(trace.mean() - meanfield.mean())) < 5 * se
    assert meanfield.var() < trace.var()  # the closed form was taken (a silent fallback would tie)


def test_a_one_latent_vae_keeps_meanfield_and_the_training_stream():
    from models.vae import VAE

    vae = VAE(z_dim=4, hidden_dims=(16,))
    probe = torch.bernoulli(torch.full((8, 784), 0.3))
    torch.manual_seed(3)
    before = torch.randn(3)
    torch.manual_seed(3)
    notes = []
    config = TrainConfig(device="cpu")
    assert step_module.objective_for(vae, config, probe, notes.append, chosen=True) is config and notes == []
    assert torch.equal(torch.randn(3), before)  # the check ran under a forked RNG


# --- the Bernoulli two-layer model: training falls back, or refuses ----------------------------------------------

@register_model("test-multisite-two-layer")
class TwoLayerBernoulli(LatentModel):
    """p(z2) p(z1|z2) p(x|z1) with MLPs, Bernoulli pixels; guide q(z1|x) q(z2|z1). ``tied``: the first layer of the
    z2 -> z1 prior network and of the z1 -> z2 guide network are one module (weights shared by name twice)."""

    def __init__(self, x_dim: int = 784, z1: int = 6, z2: int = 6, hidden: int = 16, tied: bool = False):
        super().__init__()
        self.x_dim, self.z1, self.z2, self.hidden, self.tied = x_dim, z1, z2, hidden, tied
        self.z_dim = z1
        self.encode1 = nn.Sequential(nn.Linear(x_dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * z1))
        self.encode2 = nn.Sequential(nn.Linear(z1, hidden), nn.Tanh(), nn.Linear(hidden, 2 * z2))
        self.prior1 = nn.Sequential(nn.Linear(z2, hidden), nn.Tanh(), nn.Linear(hidden, 2 * z1))
        if tied:
            if z1 != z2:
                raise ConfigError("tied needs z1 == z2")
            self.prior1[0] = self.encode2[0]
        self.decoder = nn.Sequential(nn.Linear(z1, hidden), nn.Tanh(), nn.Linear(hidden, x_dim))

    def init_kwargs(self) -> dict[str, Any]:
        return {"x_dim": self.x_dim, "z1": self.z1, "z2": self.z2, "hidden": self.hidden, "tied": self.tied}

    @staticmethod
    def _normal(raw: torch.Tensor) -> dist.TorchDistribution:
        loc, scale = raw.chunk(2, dim=-1)
        return dist.Normal(loc, F.softplus(scale) + 1e-3).to_event(1)

    @pyro_method
    def model(self, x, kl_weight=1.0):
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=kl_weight):
                z2 = pyro.sample("z2", dist.Normal(x.new_zeros(self.z2), x.new_ones(self.z2)).to_event(1))
                z1 = pyro.sample("z1", self._normal(self.prior1(z2)))
            return pyro.sample("x", dist.Bernoulli(logits=self.decoder(z1)).to_event(1), obs=x)

    @pyro_method
    def guide(self, x, kl_weight=1.0):
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=kl_weight):
            z1 = pyro.sample("z1", self._normal(self.encode1(x)))
            return pyro.sample("z2", self._normal(self.encode2(z1)))

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:  # q(z1|x), for the run's figures
        return self._normal(self.encode1(x))

    def observation(self, z: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=self.decoder(z)).to_event(1)


WHY = ("the guide draws 'z2' depending on 'z1' while the model draws 'z1' depending on 'z2', so "
       "TraceMeanField_ELBO's closed-form KL for 'z1' would not estimate the ELBO")


def test_the_default_meanfield_trains_trace_with_one_line_and_an_explicit_one_is_refused(mnist_root, tmp_path):
    probe = torch.bernoulli(torch.full((16, 784), 0.3))
    model = TwoLayerBernoulli()
    notes = []
    config = TrainConfig(device="cpu")  # elbo: the default, meanfield
    _, compiled = step_module.build_step(model, config, torch.optim.Adam(model.parameters()), probe, log=notes.append)
    assert notes == [f"note: training --elbo trace, not the default meanfield: {WHY}"] and compiled
    run = TrainConfig(model=ModelConfig(z_dim=6, hidden_dims=(16,)), preset=None, data_dir=str(mnist_root),
                      train_limit=256, test_limit=64, epochs=1, batch_size=64, device="cpu", out=str(tmp_path / "run"))
    result = train(run, model=TwoLayerBernoulli(), progress=False)
    assert result.config.elbo == "trace" and json.loads((tmp_path / "run" / "config.json").read_text())["elbo"] == "trace"
    assert result.compiled and -800 < result.history[0]["test_elbo"] < 0
    with pytest.raises(ConfigError, match=r"^--elbo meanfield does not apply to this model: the guide draws 'z2'.*"
                                          r"; use --elbo trace$"):
        train(TrainConfig(**{**run.__dict__, "out": str(tmp_path / "explicit")}), model=TwoLayerBernoulli(),
              progress=False, elbo_chosen=True)
    assert not (tmp_path / "explicit").exists()


# --- STL and DReG on two layers --------------------------------------------------------------------------------

def test_stl_on_two_layers_has_zero_variance_at_the_exact_posterior():
    """Each site's score term is taken at all values fixed: a cancelling term built from the trace's own
    q(z2|z1) would also remove the path through z1, and the gradient would not vanish here."""
    model = TwoLayerLinear("bottom-up")
    model.set_exact_posterior()
    x = model.simulate(4)
    params = model.guide_parameters()
    stl = gradients(make_elbo("trace", gradient="stl"), model, x, params)
    standard = gradients(make_elbo("trace"), model, x, params)
    assert stl.abs().max() < 1e-3 and standard.var(0).sum() > 1.0


def test_stl_on_two_layers_is_unbiased_with_less_variance():
    model = TwoLayerLinear("bottom-up")
    model.set_exact_posterior(nudge=0.05)
    x = model.simulate(4)
    params = model.guide_parameters()
    stl = gradients(make_elbo("trace", gradient="stl"), model, x, params)
    standard = gradients(make_elbo("trace"), model, x, params)
    assert_same_expectation(stl, standard)
    assert stl.var(0).sum() < 0.5 * standard.var(0).sum()


def test_dreg_on_two_layers_matches_the_iwae_gradient_in_expectation_with_a_quieter_encoder():
    model = TwoLayerLinear("bottom-up")
    model.set_exact_posterior(nudge=0.02)
    x = model.simulate(4)
    encoder, decoder = model.guide_parameters(), [model.A, model.a, model.W, model.b]
    iwae, dreg = make_elbo("iwae", num_particles=5), make_elbo("iwae", num_particles=5, gradient="dreg")
    dreg_grads, iwae_grads = gradients(dreg, model, x, encoder + decoder), gradients(iwae, model, x, encoder + decoder)
    split = sum(p.numel() for p in encoder)
    for columns in (slice(None, split), slice(split, None)):
        assert_same_expectation(dreg_grads[:, columns], iwae_grads[:, columns])
    assert dreg_grads[:, :split].var(0).sum() < 0.5 * iwae_grads[:, :split].var(0).sum()


def test_dreg_on_two_layers_is_tucker_et_al_s_estimator_draw_by_draw():
    """For the same draws: the encoder gets sum_j w~_j^2 d/dphi [log p(x, z_j) - log q_phibar(z_j)] with z_j = z_j(phi)
    through *both* sites (phibar: phi held fixed in the density), the decoder sum_j w~_j d/dtheta log p(x, z_j).
    A weight hook on each of the guide's own values would weight the path through z1 into z2 twice."""
    model = TwoLayerLinear("bottom-up")
    model.set_exact_posterior(nudge=0.3)
    x, k = model.simulate(3), 4
    encoder, decoder = model.guide_parameters(), [model.A, model.a, model.W, model.b]
    torch.manual_seed(8)
    loss = make_elbo("iwae", num_particles=k, gradient="dreg").differentiable_loss(model.model, model.guide, x)
    got = torch.autograd.grad(loss, encoder + decoder)

    torch.manual_seed(8)  # the same draws, by hand
    particles = pyro.plate("num_particles_vectorized", k, dim=-2)
    guide_trace = poutine.trace(particles(model.guide)).get_trace(x)
    z1, z2 = guide_trace.nodes["z1"]["value"], guide_trace.nodes["z2"]["value"]  # [k, B, .], functions of phi
    fixed = {p: p.detach() for p in encoder}
    L1, c1, T1, L2, c2, T2 = (fixed[p] for p in encoder)
    log_q = (dist.MultivariateNormal(x @ L1.T + c1, scale_tril=_tril(T1, Z1)).log_prob(z1)
             + dist.MultivariateNormal(z1 @ L2.T + c2, scale_tril=_tril(T2, Z2)).log_prob(z2))

    def log_p(z1, z2):
        return (dist.MultivariateNormal(torch.zeros(Z2), scale_tril=torch.eye(Z2)).log_prob(z2)
                + dist.MultivariateNormal(z2 @ model.A.T + model.a, scale_tril=model.s1 * torch.eye(Z1)).log_prob(z1)
                + dist.Normal(z1 @ model.W.T + model.b, model.s).to_event(1).log_prob(x))

    log_w = log_p(z1, z2) - log_q  # [k, B]
    weights = torch.softmax(log_w.detach(), dim=0)
    want_encoder = torch.autograd.grad(-(weights**2 * log_w).sum(), encoder, retain_graph=True)
    want_decoder = torch.autograd.grad(-(weights * log_p(z1.detach(), z2.detach())).sum(), decoder)
    for g, w in zip(got, [*want_encoder, *want_decoder]):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-4 * float(w.abs().max())), (g, w)


def test_dreg_on_two_layers_is_the_iwae_bound_of_the_same_draws():
    model = TwoLayerLinear("bottom-up")
    model.set_exact_posterior(nudge=0.1)
    x = model.simulate(3)
    torch.manual_seed(4)
    dreg = float(make_elbo("iwae", num_particles=6, gradient="dreg").differentiable_loss(model.model, model.guide, x))
    torch.manual_seed(4)
    renyi = make_elbo("iwae", num_particles=6).loss(model.model, model.guide, x)
    assert dreg == pytest.approx(renyi, rel=1e-5)


def test_dreg_with_a_flow_guide_matches_the_iwae_gradient_in_expectation():
    """The hooks sit on the model's views of z, so a flow's cached inverse no longer skips them."""
    from models.linear import LinearGaussianVAE

    gen = torch.Generator().manual_seed(2)
    model = LinearGaussianVAE(x_dim=5, z_dim=2, guide="iaf")
    with torch.no_grad():
        model.weight.copy_(torch.randn(5, 2, generator=gen))
    x = torch.randn(4, 5, generator=gen)
    encoder = list(model.encoder.parameters()) + list(model.posterior_head.parameters())
    iwae, dreg = make_elbo("iwae", num_particles=4), make_elbo("iwae", num_particles=4, gradient="dreg")
    assert_same_expectation(gradients(dreg, model, x, encoder), gradients(iwae, model, x, encoder))


def test_dreg_refuses_latent_sites_with_different_kl_weights():
    class Uneven(TwoLayerLinear):
        @pyro_method
        def guide(self, x, kl_weight=1.0):
            with pyro.plate("data", x.shape[0]):
                z1 = pyro.sample("z1", dist.MultivariateNormal(x @ self.L1.T + self.c1, scale_tril=_tril(self.T1, Z1)))
                with poutine.scale(scale=0.5):
                    return pyro.sample("z2", dist.MultivariateNormal(z1 @ self.L2.T + self.c2,
                                                                     scale_tril=_tril(self.T2, Z2)))

    model = Uneven()
    with pytest.raises(ConfigError, match="needs one KL weight"):
        make_elbo("iwae", num_particles=2, gradient="dreg").differentiable_loss(model.model, model.guide,
                                                                                 model.simulate(2))


# --- the compiled loss on several sites --------------------------------------------------------------------------

@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("name, gradient", [("trace", "standard"), ("meanfield", "standard"), ("trace", "stl")])
def test_the_compiled_loss_on_two_layers_passes_the_compile_check(name, gradient, tied):
    """``tied``: a parameter reached under two names, which Pyro's ``pyro.ops.jit.trace`` failed on with a bare
    ``AssertionError`` (it passes the tensor twice; `inference.training.compiled.SharedParameterFunction` passes it once)."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    model = TwoLayerBernoulli(tied=tied)
    probe = torch.bernoulli(torch.full((16, 784), 0.3))
    check_compiled(model.model, model.guide, dict(model.named_parameters()), make_elbo(name, True, gradient=gradient),
                   make_elbo(name, gradient=gradient), probe)


def test_a_compile_failure_without_a_message_names_where_it_was_raised(tmp_path):
    """As Pyro's bare ``assert`` in ``pyro.ops.jit`` did: ``AssertionError: `` said nothing. (The assert lives in a
    module of its own: pytest rewrites the asserts of test files to carry a message.)"""
    (tmp_path / "bare_assert.py").write_text("def check(x):\n    assert x.shape[0] < 0\n")
    spec = importlib.util.spec_from_file_location("bare_assert", tmp_path / "bare_assert.py")
    bare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bare)
    with pytest.raises(AssertionError) as caught:
        bare.check(torch.zeros(2))
    assert str(caught.value) == ""
    assert failure_cause(caught.value) == f"AssertionError at {tmp_path / 'bare_assert.py'}:2 (assert x.shape[0] < 0)"
    assert failure_cause(RuntimeError("shapes differ\n" + "tensor " * 100)) == "RuntimeError: shapes differ"

    class Broken(TwoLayerBernoulli):
        @pyro_method
        def model(self, x, kl_weight=1.0):
            bare.check(x)
            return super().model(x, kl_weight)

    model = Broken()
    with pytest.raises(CompileError, match=r"failed on a batch of 4: AssertionError at .*bare_assert\.py:2 "
                                           r"\(assert x\.shape\[0\] < 0\)$"):
        check_compiled(model.model, model.guide, dict(model.named_parameters()), make_elbo("trace", True),
                       make_elbo("trace"), torch.bernoulli(torch.full((4, 784), 0.3)))
