"""Gradient estimators: same expectation as the standard gradient, no more variance; compiled where promised.

The oracle is `LinearGaussianVAE` (probabilistic PCA) with a fixed model and a
full-covariance guide set to the exact posterior and then nudged, so the
expected gradient is clearly non-zero while q sits near p(z|x), where the
sticking-the-landing and DReG estimators are meant to help.
"""

from __future__ import annotations

import math

import pyro
import pytest
import torch

from inference import svi
from inference.training.compiled import check_compiled
from inference.training.objectives import IWAE_DReG, JitIWAE_DReG, TraceSTL_ELBO, make_elbo
from models import HierarchicalVAE, VAE
from models.guides import MIN_SCALE
from models.linear import LinearGaussianVAE
from pyro_vae.agreement import relative_difference
from pyro_vae.config import ModelConfig, TrainConfig
from pyro_vae.errors import CompileError, ConfigError
from user_models import StyleContentVAE, TwoLayerVAE

DRAWS = 400


def near_posterior_model(nudge: float = 0.05, guide: str = "full") -> tuple[LinearGaussianVAE, torch.Tensor]:
    """A fixed pPCA model, its guide at the exact posterior (``diagonal``: its marginals) plus a nudge, and 4
    datapoints drawn from the model."""
    gen = torch.Generator().manual_seed(7)
    model = LinearGaussianVAE(x_dim=5, z_dim=2, noise_scale=0.5, guide=guide)
    with torch.no_grad():
        model.weight.copy_(torch.randn(5, 2, generator=gen))
        model.bias.copy_(torch.randn(5, generator=gen) * 0.3)
        w, s2 = model.weight, model.noise_scale**2
        cov = torch.linalg.inv(torch.eye(2) + w.T @ w / s2)
        gain = cov @ w.T / s2  # posterior mean = gain (x - b)
        tril = torch.linalg.cholesky(cov) if guide == "full" else cov.diagonal().sqrt().diag()
        diag_raw = torch.log(torch.expm1(tril.diagonal() - MIN_SCALE))  # inverse of softplus(.) + MIN_SCALE
        inputs = model.posterior_head.num_inputs
        weight = torch.zeros(inputs, 5)
        weight[:2] = gain
        bias = torch.cat([-gain @ model.bias, diag_raw, tril[1, :1] if guide == "full" else tril[1, :0]])
        model.encoder.weight.copy_(weight + nudge * torch.randn(inputs, 5, generator=gen))
        model.encoder.bias.copy_(bias + nudge * torch.randn(inputs, generator=gen))
        z = torch.randn(4, 2, generator=gen)
        x = z @ w.T + model.bias + 0.5 * torch.randn(4, 5, generator=gen)
    return model, x


def gradients(elbo, model: LinearGaussianVAE, x: torch.Tensor, params: list[torch.Tensor], kl_weight: float = 1.0,
              via_loss_and_grads: bool = False) -> torch.Tensor:
    """``[DRAWS, P]``: the loss gradient w.r.t. ``params`` (flattened) for seeds 0..DRAWS-1."""
    rows = []
    for seed in range(DRAWS):
        torch.manual_seed(seed)
        if hasattr(elbo, "differentiable_loss") and not via_loss_and_grads:
            loss = elbo.differentiable_loss(model.model, model.guide, x, kl_weight)
            grads = torch.autograd.grad(loss, params)
        else:  # RenyiELBO, or what pyro.infer.SVI calls: gradients land in .grad
            for p in model.parameters():
                p.grad = None
            elbo.loss_and_grads(model.model, model.guide, x, kl_weight)
            grads = [p.grad.clone() for p in params]
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows).double()


def assert_same_expectation(a: torch.Tensor, b: torch.Tensor) -> None:
    """Every component's mean agrees within Monte Carlo error, and the means are far from 0 (so this can fail)."""
    se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
    z = (a.mean(0) - b.mean(0)) / se.clamp_min(1e-12)
    assert z.abs().max() < 5, z
    assert (a.mean(0).abs() / se.clamp_min(1e-12)).max() > 6  # a real signal to agree on


def guide_params(model: LinearGaussianVAE) -> list[torch.Tensor]:
    return list(model.encoder.parameters())


def test_sticking_the_landing_is_unbiased_with_less_variance():
    pyro.clear_param_store()
    model, x = near_posterior_model()
    params = guide_params(model)
    standard = gradients(make_elbo("trace"), model, x, params)
    stl = gradients(make_elbo("trace", gradient="stl"), model, x, params)
    assert_same_expectation(stl, standard)
    assert stl.var(0).sum() < 0.5 * standard.var(0).sum(), (stl.var(0).sum(), standard.var(0).sum())


def test_stl_has_zero_variance_at_the_exact_posterior():
    """Roeder et al.'s point: at q = p(z|x) the path derivative of log p(x, z) - log q(z|x) vanishes."""
    pyro.clear_param_store()
    model, x = near_posterior_model(nudge=0.0)  # exact: the full guide holds p(z|x)
    params = guide_params(model)
    standard = gradients(make_elbo("trace"), model, x, params)
    stl = gradients(make_elbo("trace", gradient="stl"), model, x, params)
    assert stl.abs().max() < 1e-3 and standard.var(0).sum() > 1.0


def test_closed_form_kl_is_unbiased_with_no_more_variance():
    """With the diagonal guide (Pyro has no closed-form KL from a full-covariance Normal to the factorised prior)."""
    pyro.clear_param_store()
    model, x = near_posterior_model(guide="diagonal")
    params = guide_params(model)
    standard = gradients(make_elbo("trace"), model, x, params)
    meanfield = gradients(make_elbo("meanfield"), model, x, params)
    assert_same_expectation(meanfield, standard)
    assert meanfield.var(0).sum() < standard.var(0).sum()  # a silent fallback to sampling would tie exactly


def test_dreg_matches_the_iwae_gradient_in_expectation_with_a_quieter_encoder():
    pyro.clear_param_store()
    model, x = near_posterior_model()
    encoder, decoder = guide_params(model), [model.weight, model.bias]
    iwae, dreg = make_elbo("iwae", num_particles=5), make_elbo("iwae", num_particles=5, gradient="dreg")
    assert isinstance(dreg, IWAE_DReG)
    for params in (encoder, decoder):
        assert_same_expectation(gradients(dreg, model, x, params), gradients(iwae, model, x, params))
    assert gradients(dreg, model, x, encoder).var(0).sum() < 0.5 * gradients(iwae, model, x, encoder).var(0).sum()


def test_dreg_loss_is_the_iwae_bound_of_the_same_draws():
    pyro.clear_param_store()
    model, x = near_posterior_model()
    dreg = make_elbo("iwae", num_particles=7, gradient="dreg")
    torch.manual_seed(3)
    loss = dreg.differentiable_loss(model.model, model.guide, x)
    torch.manual_seed(3)
    z = model.posterior(x).rsample((7,))  # the draws the guide makes under that seed
    log_w = model.observation(z).log_prob(x) + model.prior(x).log_prob(z) - model.posterior(x).log_prob(z)
    bound = (torch.logsumexp(log_w, 0) - math.log(7)).sum()
    assert float(loss) == pytest.approx(-float(bound), rel=1e-5)


FAMILIES = {"vae": lambda: VAE(z_dim=4, hidden_dims=(32,)),
            "hierarchical": lambda: HierarchicalVAE(784, (6, 3), ((32,), (16,))),
            "from-scratch": lambda: TwoLayerVAE(hidden=32)}


#: (--elbo, --gradient, k) of every compiled objective
COMPILED = [("trace", "standard", 1), ("meanfield", "standard", 1), ("trace", "stl", 1), ("iwae", "standard", 5),
            ("iwae", "dreg", 5)]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("name, gradient, k", COMPILED)
def test_every_compiled_loss_has_the_plain_loss_and_gradients(family, name, gradient, k):
    """Each objective's compiled loss and every parameter's gradient equal the plain ones to 1e-5 relative, on the
    same draws, on the batch it was traced on and on half of it: one latent site, two stacked ones, and a model
    written from scratch (two layers, its guide bottom-up). For DReG the weight hook sits between two graphs:
    were it lost, the encoder's gradients would be off by the factor w~ (about 1/k here)."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    model = FAMILIES[family]()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    differences = check_compiled(model.model, model.guide, params, make_elbo(name, True, k, gradient),
                                 make_elbo(name, False, k, gradient), torch.bernoulli(torch.full((16, 784), 0.3)))
    assert set(differences) == {"loss", *params}
    assert max(differences.values()) < 1e-5, differences


@pytest.mark.parametrize("name, gradient, k", COMPILED)
def test_a_compiled_loss_first_called_without_gradients_is_not_traced_then(name, gradient, k):
    """A loss taken under ``torch.no_grad()`` first (a validation loss) runs the program itself: traced then, the
    graph kept the no-gradient forms, and Pyro's JitTrace_ELBO then gave gradients off by a relative 1.3."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = VAE(z_dim=4, hidden_dims=(32,))
    x, weight = torch.bernoulli(torch.full((16, 784), 0.3)), torch.tensor(0.7)
    compiled, plain = make_elbo(name, True, k, gradient), make_elbo(name, False, k, gradient)
    with torch.no_grad():
        values = []
        for elbo in (compiled, plain):
            torch.manual_seed(1)
            values.append(float(elbo.differentiable_loss(vae.model, vae.guide, x, weight)))
    assert values[0] == pytest.approx(values[1], rel=1e-6)  # the same draws: no trace ran (tracing draws more)
    params = {n: p for n, p in vae.named_parameters()}
    differences = check_compiled(vae.model, vae.guide, params, compiled, plain, x)
    assert max(differences.values()) < 1e-5, differences


class ScoredNormal(pyro.distributions.Normal):
    """A Normal that Pyro samples without ``rsample``."""

    has_rsample = False


class ScoreFunctionVAE(VAE):
    """A VAE whose guide draws z without ``rsample``: ``Trace_ELBO`` estimates its gradient by the score function,
    so the loss's value and the surrogate's differ."""

    def posterior(self, x: torch.Tensor):
        normal = super().posterior(x).base_dist
        return ScoredNormal(normal.loc, normal.scale).to_event(1)


def test_the_compiled_trace_loss_has_the_plain_value_where_a_guide_site_is_scored_by_its_score_function():
    """Pyro's per-particle loss value is a Python float, frozen by a trace: the compiled one is recomputed from the
    traces, and equals ``Trace_ELBO``'s where the surrogate's value does not."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = ScoreFunctionVAE(z_dim=4, hidden_dims=(32,))
    params = {n: p for n, p in vae.named_parameters()}
    differences = check_compiled(vae.model, vae.guide, params, make_elbo("trace", True), make_elbo("trace", False),
                                 torch.bernoulli(torch.full((16, 784), 0.3)))
    assert max(differences.values()) < 1e-5, differences


class CountingVAE(VAE):
    """A VAE that counts how often its Python programs run (a compiled graph runs none of them)."""

    runs = 0

    def model(self, *args, **kwargs):
        self.runs += 1
        return super().model(*args, **kwargs)

    def guide(self, *args, **kwargs):
        self.runs += 1
        return super().guide(*args, **kwargs)


@pytest.mark.parametrize("name, gradient, k", COMPILED)
def test_a_compiled_loss_given_a_fresh_bound_method_each_step_traces_once(name, gradient, k):
    """``elbo.differentiable_loss(vae.model, vae.guide, x)`` in a loop passes new bound-method objects each step,
    with new ids while the old ones live. Pyro's JIT losses keyed their graphs by ``id(model)`` and traced again."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = CountingVAE(z_dim=4, hidden_dims=(32,))
    x, weight = torch.bernoulli(torch.full((8, 784), 0.3)), torch.tensor(0.7)
    elbo, kept = make_elbo(name, True, k, gradient), []
    for step in range(4):
        kept.append((vae.model, vae.guide))  # alive, so no id is reused
        elbo.differentiable_loss(*kept[-1], x, weight).backward()
        if step == 0:
            runs_to_trace = vae.runs
    assert runs_to_trace > 0 and vae.runs == runs_to_trace


@pytest.mark.parametrize("name, gradient, k", COMPILED)
def test_one_compiled_loss_serves_two_models_in_turn(name, gradient, k):
    """One loss object, two models with their own parameters, called in turn: each call has its own model's plain
    loss and gradients. Pyro's JitTrace_ELBO ran its first model's program for both; a compiled function that kept
    one parameter layout passed the first model's graph the second's parameters (the graph refused their count)."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    models = [VAE(z_dim=4, hidden_dims=(32,)), TwoLayerVAE(hidden=32)]
    x, weight = torch.bernoulli(torch.full((8, 784), 0.3)), torch.tensor(0.7)
    compiled, plain = make_elbo(name, True, k, gradient), make_elbo(name, False, k, gradient)
    for m in models:  # the first call of each traces (and draws more than a step does)
        compiled.differentiable_loss(m.model, m.guide, x, weight)
    for m in [*models, *models]:
        params = list(m.parameters())
        results = []
        for elbo in (compiled, plain):
            torch.manual_seed(1)
            loss = elbo.differentiable_loss(m.model, m.guide, x, weight)
            results.append([loss.detach(), *torch.autograd.grad(loss, params)])
        for got, want in zip(*results):
            assert relative_difference(got, want) < 1e-5


@pytest.mark.parametrize("name, gradient, k", [("trace", "stl", 1), ("iwae", "dreg", 3)])
def test_a_batch_size_frozen_by_tracing_is_refused_in_one_line_that_says_how_to_write_it(name, gradient, k):
    """``pyro.plate("data", len(x))`` runs on the traced batch and fails on any other: the error names the cause."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    model = StyleContentVAE(hidden=16)  # its plates take len(x)
    cause = r"on a batch of 8: RuntimeError: The expanded size .*freezes.*x\.shape\[0\]"
    with pytest.raises(CompileError, match=cause) as caught:
        check_compiled(model.model, model.guide, dict(model.named_parameters()), make_elbo(name, True, k, gradient),
                       make_elbo(name, False, k, gradient), torch.bernoulli(torch.full((16, 784), 0.3)))
    assert "\n" not in str(caught.value)


def test_gradient_flags_apply_to_their_objective_only(mnist_root, tmp_path):
    parse = lambda *a: svi.config_from_args(svi.build_parser().parse_args(list(a)))  # noqa: E731
    assert parse("--gradient", "stl").gradient == "stl"
    for elbo, gradient in (("meanfield", "stl"), ("trace", "dreg"), ("iwae", "stl")):
        with pytest.raises(ConfigError, match=f"--gradient {gradient} does not apply to --elbo {elbo}"):
            make_elbo(elbo, gradient=gradient)
    assert isinstance(make_elbo("iwae", jit=True, num_particles=2, gradient="dreg"), JitIWAE_DReG)


@pytest.mark.parametrize("elbo, gradient, particles, compiled", [("trace", "stl", 1, True), ("iwae", "dreg", 3, True),
                                                                 ("iwae", "standard", 3, True),
                                                                 ("meanfield", "standard", 1, True)])
def test_each_estimator_trains_and_compiles_where_promised(mnist_root, tmp_path, elbo, gradient, particles, compiled):
    config = TrainConfig(model=ModelConfig(z_dim=8, hidden_dims=(64,)), preset=None, data_dir=str(mnist_root),
                         train_limit=640, test_limit=200, epochs=1, batch_size=64, device="cpu", out=str(tmp_path / "r"),
                         elbo=elbo, gradient=gradient, num_particles=particles)
    result = svi.train(config, progress=False)
    assert result.compiled is compiled and -700 < result.history[0]["test_elbo"] < 0
    assert result.config.gradient == gradient


def test_stl_surrogate_leaves_the_loss_value_alone():
    pyro.clear_param_store()
    model, x = near_posterior_model()
    torch.manual_seed(1)
    stl = TraceSTL_ELBO(max_plate_nesting=1).differentiable_loss(model.model, model.guide, x)
    torch.manual_seed(1)
    plain = pyro.infer.Trace_ELBO(max_plate_nesting=1).differentiable_loss(model.model, model.guide, x)
    assert float(stl) == pytest.approx(float(plain), rel=1e-6)


def test_stl_leaves_the_decoder_gradient_alone_and_svi_gets_the_stl_gradient():
    pyro.clear_param_store()
    model, x = near_posterior_model()
    decoder = [model.weight, model.bias]
    stl, standard = make_elbo("trace", gradient="stl"), make_elbo("trace")
    assert torch.allclose(gradients(stl, model, x, decoder), gradients(standard, model, x, decoder), atol=1e-6)
    encoder = guide_params(model)  # what pyro.infer.SVI calls (loss_and_grads) gives the same STL gradient
    assert torch.allclose(gradients(stl, model, x, encoder, via_loss_and_grads=True), gradients(stl, model, x, encoder),
                          atol=1e-6)


def test_dreg_under_a_kl_weight_matches_the_iwae_gradient_of_that_weight():
    """With beta scaling the latent site, the encoder factor is (1 - beta) w~ + beta w~^2, not w~^2."""
    pyro.clear_param_store()
    model, x = near_posterior_model()
    encoder = guide_params(model)
    iwae, dreg = make_elbo("iwae", num_particles=5), make_elbo("iwae", num_particles=5, gradient="dreg")
    assert_same_expectation(gradients(dreg, model, x, encoder, kl_weight=0.3),
                            gradients(iwae, model, x, encoder, kl_weight=0.3))


def test_dreg_refuses_what_it_cannot_estimate():
    """One particle is refused; a flow guide is not (tests/test_multisite.py checks its gradient's expectation)."""
    from models.vae import VAE

    with pytest.raises(ConfigError, match="at least 2"):
        make_elbo("iwae", num_particles=1, gradient="dreg")
    pyro.clear_param_store()
    vae = VAE(z_dim=3, hidden_dims=(8,), guide="iaf")
    loss = make_elbo("iwae", num_particles=2, gradient="dreg").differentiable_loss(
        vae.model, vae.guide, torch.bernoulli(torch.full((4, 784), 0.3)), 1.0)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("family", ["vae", "hierarchical", "from-scratch"])
@pytest.mark.parametrize("k", [1, 5])
def test_the_iwae_loss_as_tensors_is_renyi_elbos_and_compiles_to_the_same(family, k):
    """`IWAE_ELBO` (the default --elbo iwae) gives RenyiELBO(alpha=0)'s loss and gradients on the same draws; its
    compiled form the same again (1e-5 relative), on one latent site, on two stacked ones, and on a model written
    from scratch."""
    torch.manual_seed(0)
    model = FAMILIES[family]()
    x = torch.bernoulli(torch.full((16, 784), 0.3))
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(elbo):
        pyro.clear_param_store()
        torch.manual_seed(1)
        if hasattr(elbo, "differentiable_loss"):
            loss = elbo.differentiable_loss(model.model, model.guide, x, 0.7)
            loss.backward()
        else:
            loss = torch.tensor(elbo.loss_and_grads(model.model, model.guide, x, 0.7))
        grads = [p.grad.clone() for p in params]
        for p in params:
            p.grad = None
        return float(loss), grads

    options = dict(num_particles=k, vectorize_particles=k > 1, max_plate_nesting=1)
    want = loss_and_grads(pyro.infer.RenyiELBO(alpha=0.0, **options))
    got = loss_and_grads(make_elbo("iwae", num_particles=k))
    assert got[0] == pytest.approx(want[0], rel=1e-6)
    assert all(relative_difference(g, w) < 1e-6 for g, w in zip(got[1], want[1]))
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    differences = check_compiled(model.model, model.guide, named, make_elbo("iwae", jit=True, num_particles=k),
                                 make_elbo("iwae", num_particles=k), x)
    assert max(differences.values()) < 1e-5
