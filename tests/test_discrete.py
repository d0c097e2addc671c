"""Issue 26: discrete likelihoods over 2^b levels, dequantization, and bits/dim of the discrete image.

The pmfs sum to 1 for any parameters, match a hand computation at edge and interior bins, keep finite
gradients at extreme parameters and sample in their support; the dequantized estimate is a lower bound on the
exact log-probability of a toy model's bins; bits/dim of a known pmf; bad input is one line each.
"""

from __future__ import annotations

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from inference import svi
from inference.evaluate import evaluate
from inference.reports.figures import unit_scale
from inference.estimators.importance import estimate_log_marginal
from inference.estimators.units import bits_per_dim, bits_per_dim_kind
from models import VAE, HierarchicalVAE, LatentModel
from models.guides import MIN_SCALE
from models.likelihoods import (BetaBinomialLikelihood, DiscretizedLogistic, DiscretizedLogisticMixture,
                                make_likelihood)
from pyro_vae.config import ModelConfig, TrainConfig, resolve_defaults
from pyro_vae.data import DataSplits, Images, check_images
from pyro_vae.errors import ConfigError, DataError

from test_bad_input import TINY, assert_refused, run

TOP = 255
LEVELS = torch.arange(TOP + 1, dtype=torch.float64)

#: (loc, log_scale) of one component: random, tiny and huge scales, locations far outside 0..255 and at the edges.
EXTREMES = [(100.0, 2.0), (127.3, -30.0), (127.3, 40.0), (-1e4, 0.0), (1e4, 0.0), (-1e4, 40.0), (0.0, -5.0),
            (255.0, -5.0), (0.5, 1.0), (254.5, 1.0), (3e38, 0.0)]


def pmf(d: DiscretizedLogisticMixture) -> torch.Tensor:
    """P(k) for every level k = 0..top of a scalar-batched distribution: ``[top + 1]``."""
    return d.expand((TOP + 1,)).log_prob(LEVELS).exp()


@pytest.mark.parametrize("components", [1, 5])
@pytest.mark.parametrize("loc,log_scale", EXTREMES)
def test_the_discretized_logistic_pmf_sums_to_one(components, loc, log_scale):
    gen = torch.Generator().manual_seed(components)
    logits = torch.randn(components, generator=gen, dtype=torch.float64) * 3
    locs = torch.full((components,), loc, dtype=torch.float64) + torch.randn(components, generator=gen,
                                                                            dtype=torch.float64) * 10
    d = DiscretizedLogisticMixture(logits, locs, torch.full((components,), log_scale, dtype=torch.float64), TOP)
    p = pmf(d)
    assert torch.isfinite(p).all() and (p >= 0).all()
    assert abs(p.sum().item() - 1) < 1e-6
    assert torch.isclose(d.mean, (LEVELS * p).sum(), rtol=1e-9, atol=1e-6)  # E[X] summed over the levels


def test_random_mixtures_sum_to_one_in_a_batch():
    gen = torch.Generator().manual_seed(0)
    shape = (7, 10)
    d = DiscretizedLogisticMixture(torch.randn(shape, generator=gen, dtype=torch.float64),
                                   torch.rand(shape, generator=gen, dtype=torch.float64) * 400 - 70,
                                   torch.randn(shape, generator=gen, dtype=torch.float64) * 4, TOP)
    log_p = d.expand((TOP + 1, 7)).log_prob(LEVELS[:, None].expand(-1, 7))
    assert torch.allclose(log_p.exp().sum(0), torch.ones(7, dtype=torch.float64), atol=1e-6)


def _sigmoid(t: float) -> float:
    return 1 / (1 + math.exp(-t))


@pytest.mark.parametrize("level", [0, 1, 77, 254, 255])
def test_log_prob_at_edge_and_interior_bins_equals_a_hand_computation(level):
    pi, locs, scales = (0.3, 0.7), (20.0, 240.0), (5.0, 3.0)
    want = 0.0
    for w, m, s in zip(pi, locs, scales):
        upper = 1.0 if level == TOP else _sigmoid((level + 0.5 - m) / s)  # the top bin takes [top - 1/2, inf)
        lower = 0.0 if level == 0 else _sigmoid((level - 0.5 - m) / s)  # level 0 takes (-inf, 1/2]
        want += w * (upper - lower)
    d = DiscretizedLogisticMixture(torch.tensor(pi, dtype=torch.float64).log(), torch.tensor(locs, dtype=torch.float64),
                                   torch.tensor(scales, dtype=torch.float64).log(), TOP)
    assert d.log_prob(torch.tensor(float(level), dtype=torch.float64)).item() == pytest.approx(math.log(want),
                                                                                                rel=1e-10)


def test_a_bin_far_from_the_mean_keeps_a_finite_log_mass():
    """Where sigmoid(a) - sigmoid(b) rounds to 0, the log-space form still gives the bin's log mass."""
    d = DiscretizedLogisticMixture(torch.zeros(1), torch.tensor([250.0]), torch.tensor([0.0]), TOP)  # float32
    lp = d.log_prob(torch.tensor(10.0))
    # log(sigmoid(a) - sigmoid(b)) ~ -(250 - 10.5) + log(1 - e^-1) for a bin 240 scales below the mean
    assert torch.isfinite(lp) and lp.item() == pytest.approx(-(250 - 10.5) + math.log(1 - math.exp(-1)), abs=1e-3)


@pytest.mark.parametrize("name", ["discretized-logistic", "beta-binomial"])
@pytest.mark.parametrize("raw_value", [-1e4, -50.0, 0.0, 50.0, 1e4])
def test_gradients_are_finite_at_extreme_parameters(name, raw_value):
    likelihood = make_likelihood(name, mixture_components=3)
    x = torch.tensor([[0.0, 1.0, 128.0, 254.0, 255.0]])
    raw = torch.full((1, likelihood.params_per_pixel * x.shape[1]), raw_value, requires_grad=True)
    lp = likelihood(raw).log_prob(x)
    lp.sum().backward()
    assert torch.isfinite(lp).all() and torch.isfinite(raw.grad).all()


@pytest.mark.parametrize("log_scale", [-40.0, 0.0, 40.0, 200.0])
def test_distribution_gradients_are_finite_for_tiny_and_huge_scales(log_scale):
    loc = torch.tensor([5.0, -300.0, 600.0], requires_grad=True)
    ls = torch.full((3,), log_scale, requires_grad=True)
    d = DiscretizedLogisticMixture(torch.zeros(3), loc, ls, TOP)
    lp = d.expand((5,)).log_prob(torch.tensor([0.0, 3.0, 128.0, 254.0, 255.0]))
    lp.sum().backward()
    assert torch.isfinite(lp).all() and torch.isfinite(loc.grad).all() and torch.isfinite(ls.grad).all()


@pytest.mark.parametrize("a,b", [(1.0, 1.0), (1e-3, 1e-3), (1e4, 1e-3), (1e-3, 1e4), (1e4, 1e4), (0.4, 7.0)])
def test_the_beta_binomial_pmf_sums_to_one(a, b):
    d = dist.BetaBinomial(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
                          total_count=TOP)
    p = d.expand((TOP + 1,)).log_prob(LEVELS).exp()
    assert abs(p.sum().item() - 1) < 1e-6


def test_the_beta_binomial_likelihood_clamps_its_concentrations_and_has_its_mean():
    likelihood = BetaBinomialLikelihood()
    raw = torch.tensor([[-1e4, 1e4, 0.0, 1e4]])  # alpha for 2 pixels, then beta for 2
    d = likelihood(raw)
    alpha, beta = d.base_dist.concentration1, d.base_dist.concentration0
    assert alpha.min() >= likelihood.MIN_CONCENTRATION and beta.max() <= likelihood.MAX_CONCENTRATION
    assert torch.allclose(d.mean, TOP * alpha / (alpha + beta))


@pytest.mark.parametrize("name", ["discretized-logistic", "beta-binomial"])
def test_samples_lie_in_the_support(name):
    likelihood = make_likelihood(name, mixture_components=4)
    raw = torch.randn(6, likelihood.params_per_pixel * 20) * 5
    x = likelihood(raw).sample((3,))
    assert x.shape == (3, 6, 20)
    assert (x == x.round()).all() and x.min() >= 0 and x.max() <= TOP
    support = likelihood(raw).support
    assert support.is_discrete and bool(support.check(x).all())


def test_the_mixture_decodes_three_k_parameters_per_pixel_parameter_major():
    likelihood = DiscretizedLogistic(components=2)
    assert likelihood.params_per_pixel == 6
    raw = torch.zeros(1, 6 * 3)
    raw[0, 2 * 3 + 1] = 0.25  # the first mean of pixel 1: parameter-major, logits (2 x D), means (2 x D), scales
    d = likelihood(raw).base_dist
    assert d.loc[0, 1, 0].item() == pytest.approx(TOP * 0.75) and d.loc[0, 0, 0].item() == pytest.approx(TOP / 2)


# --- dequantization: a lower bound on the exact log-probability of the bins ---------------------------------

class ToyDensity(LatentModel):
    """z ~ N(0, 1); each of D values y_d ~ N(sigmoid(z + c_d), 0.2): the bin masses are Normal CDFs, so
    P(x) = int p(z) prod_d P(bin x_d | z) dz is a 1-D integral (computed by quadrature)."""

    def __init__(self, offsets: torch.Tensor):
        super().__init__()
        self.offsets = offsets

    def init_kwargs(self):
        return {}

    def model(self, x, kl_weight=1.0):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([x.shape[0]]).to_event(0))
            loc = torch.sigmoid(z.unsqueeze(-1) + self.offsets)
            return pyro.sample("x", dist.Normal(loc, 0.2).to_event(1), obs=x)

    def guide(self, x, kl_weight=1.0):
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", dist.Normal(x.mean(-1) * 2 - 1, 1.2))


def exact_log_prob(model: ToyDensity, levels: torch.Tensor, bits: int) -> torch.Tensor:
    """log P(x) = log int N(z) prod_d [Phi((x_d + 1) / 2^b) - Phi(x_d / 2^b)] dz by the trapezoid rule on a fine grid."""
    z = torch.linspace(-9, 9, 20001, dtype=torch.float64)
    loc = torch.sigmoid(z[:, None, None] + model.offsets.double())  # [Z, 1, D]
    normal = torch.distributions.Normal(loc, 0.2)
    lo, hi = levels.double() / 2 ** bits, (levels.double() + 1) / 2 ** bits
    mass = (normal.cdf(hi) - normal.cdf(lo)).log().sum(-1)  # [Z, B]
    integrand = (torch.distributions.Normal(0.0, 1.0).log_prob(z)[:, None] + mass).exp()
    return torch.trapezoid(integrand, z, dim=0).log()


def test_the_dequantized_estimate_is_a_lower_bound_on_the_exact_log_probability():
    bits, dim = 3, 4
    model = ToyDensity(torch.tensor([-1.0, 0.0, 0.5, 1.5]))
    levels = torch.tensor([[1.0, 3.0, 4.0, 7.0], [0.0, 2.0, 5.0, 6.0], [4.0, 4.0, 4.0, 4.0]])
    exact = exact_log_prob(model, levels, bits)
    many = estimate_log_marginal(model.model, model.guide, levels.double(), 4000, 1000, (1, 10), seed=0,
                                 dequantize_bits=bits)
    assert (many.elbo < exact).all()  # the ELBO with u drawn: a bound, strictly below
    assert (many.iwae[10] <= exact + 1e-3).all()
    assert (many.log_px <= exact + 0.02).all()  # a lower bound in expectation; K = 4000 is close to it
    assert (many.log_px > exact - 0.5).all()
    # the constant: the estimate includes -D b log 2
    assert (many.elbo < -dim * bits * math.log(2) + 10).all()


# --- units -----------------------------------------------------------------------------------------------------

def test_bits_per_dim_of_a_known_pmf():
    assert bits_per_dim(784 * math.log(256), 784, "discrete") == pytest.approx(8.0)
    assert bits_per_dim(784 * math.log(2), 784, "binary") == pytest.approx(1.0)
    assert bits_per_dim(100.0, 784, "density") is None


def test_the_report_gives_eight_bits_per_dim_for_the_uniform_pmf(tmp_path, grey_images):
    """A beta-binomial with alpha = beta = 1 is uniform over 0..255 whatever z: log P(x) = -D log 256 exactly."""
    data = DataSplits.from_arrays(grey_images.reshape(-1, 28, 28), binarize="none", encoding="levels")
    config = TrainConfig(model=ModelConfig(z_dim=2, hidden_dims=(8,), likelihood="beta-binomial"), epochs=1,
                         binarize="none", train_limit=None, out=str(tmp_path / "run"), device="cpu", lr=1e-12)
    model = VAE(z_dim=2, hidden_dims=(8,), likelihood="beta-binomial")
    with torch.no_grad():  # p(x|z) uniform for every z, and q(z|x) = p(z) = N(0, I): every weight is P(x)
        decoder, encoder = ([m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
                            for net in (model.decoder, model.encoder))
        decoder.weight.zero_()
        decoder.bias.fill_(math.log(math.e - 1))  # softplus^-1(1)
        encoder.weight.zero_()
        encoder.bias[:2] = 0.0
        encoder.bias[2:] = math.log(math.expm1(1 - MIN_SCALE))
    svi.train(config, data=data, model=model, progress=False)
    report = evaluate(tmp_path / "run", images=data.test, num_samples=30, chunk_size=30, progress=False)
    assert report["bits_per_dim_kind"] == "discrete"
    assert report["bits_per_dim"] == pytest.approx(8.0, abs=5e-5)  # the float32 pmf: lgamma rounding
    assert report["nll"] == pytest.approx(784 * math.log(256), rel=1e-5)
    saved = json.loads((tmp_path / "run" / "report" / "report.json").read_text())
    assert saved["bits_per_dim_kind"] == "discrete" and saved["bit_depth"] == 8
    assert "bits per dim (discrete)" in (tmp_path / "run" / "report" / "report.md").read_text()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["bit_depth"] == 8
    from pyro_vae import checkpoint
    payload = checkpoint.read(tmp_path / "run" / "checkpoint.pt")
    assert checkpoint.config_of(payload).bit_depth == 8 and payload["model_kwargs"]["bit_depth"] == 8


def test_a_density_has_no_bits_per_dim_and_says_so(tmp_path, grey_images):
    data = DataSplits.from_arrays(grey_images.reshape(-1, 28, 28), binarize="none")
    config = TrainConfig(model=ModelConfig(z_dim=2, hidden_dims=(8,), likelihood="continuous-bernoulli"),
                         epochs=1, binarize="none", out=str(tmp_path / "run"), device="cpu")
    svi.train(config, data=data, progress=False)
    report = evaluate(tmp_path / "run", images=data.test, num_samples=30, chunk_size=30, progress=False)
    assert report["bits_per_dim_kind"] == "density" and report["bits_per_dim"] is None
    text = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "bits per dim" not in text and "not comparable" in text
    assert json.loads((tmp_path / "run" / "report" / "report.json").read_text())["bits_per_dim"] is None


def test_the_kind_of_a_user_model_comes_from_its_observed_support():
    toy = ToyDensity(torch.zeros(4))
    x = torch.rand(3, 4)
    assert bits_per_dim_kind(toy.model, toy.guide, x, "none", "none") == "density"
    assert bits_per_dim_kind(toy.model, toy.guide, x, "none", "uniform") == "dequantized-bound"
    vae = VAE(x_dim=4, z_dim=2, hidden_dims=(4,), likelihood="discretized-logistic", mixture_components=1)
    assert bits_per_dim_kind(vae.model, vae.guide, torch.tensor([[0.0, 5.0, 255.0, 9.0]]), "none", "none") == "discrete"
    binary = VAE(x_dim=4, z_dim=2, hidden_dims=(4,))
    assert bits_per_dim_kind(binary.model, binary.guide, torch.tensor([[0.0, 1.0, 1.0, 0.0]]), "dynamic",
                             "none") == "binary"


# --- data: levels stay integers, dequantized values stay in their bins ----------------------------------------

def test_levels_are_served_as_integers_and_dequantized_values_in_their_bins(grey_images):
    levels = Images(grey_images, "none", encoding="levels")
    batch = next(levels.batches(16, shuffle=False))
    assert torch.equal(batch, grey_images[:16].float()) and torch.equal(levels.frozen(0), grey_images.float())
    assert levels.bit_depth == 8
    deq = Images(grey_images, "none", encoding="dequantized")
    b0, b1 = next(deq.batches(16, epoch=0, shuffle=False)), next(deq.batches(16, epoch=1, shuffle=False))
    x = grey_images[:16].float()
    assert ((b0 * 256 >= x) & (b0 * 256 < x + 1)).all() and not torch.equal(b0, b1)  # fresh u per batch
    assert torch.equal(deq.frozen(3), deq.frozen(3))  # the test split is fixed once


def test_old_configs_load_and_keep_their_kwargs():
    old = {"x_dim": 784, "z_dim": 50, "hidden_dims": [200, 200], "activation": "tanh", "likelihood": "bernoulli",
           "guide": "diagonal", "obs_scale": 1.0, "flow_steps": 2, "arch": "mlp"}
    config = ModelConfig.from_dict(old).validated()
    assert config.mixture_components == 10 and config.bit_depth == 8 and config == ModelConfig(**old).resolved()
    assert VAE(**old).init_kwargs() == old
    assert TrainConfig.from_dict({"model": old}).dequantize == "none"
    k1 = VAE(likelihood="discretized-logistic", mixture_components=1).init_kwargs()
    assert k1["mixture_components"] == 1 and k1["bit_depth"] == 8 and VAE(**k1).likelihood.params_per_pixel == 3


# --- defaults ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,likelihood,binarize", [
    ([], "bernoulli", "dynamic"),  # MNIST: Bernoulli on dynamic binarisation, unchanged
    (["--binarize", "none"], "discretized-logistic", "none"),
    (["--binarize", "static"], "bernoulli", "static"),
    (["--mixture-components", "1"], "discretized-logistic", "none"),
    (["--dequantize", "uniform"], "continuous-bernoulli", "none"),
    (["--likelihood", "gaussian-learned", "--dequantize", "uniform"], "gaussian-learned", "none"),
    (["--likelihood", "beta-binomial"], "beta-binomial", "none"),
])
def test_likelihood_defaults(argv, likelihood, binarize, tmp_path):
    config = resolve_defaults(svi.config_from_args(svi.build_parser().parse_args([*argv, "--out", str(tmp_path)])))
    assert (config.model.likelihood, config.binarize) == (likelihood, binarize)


@pytest.mark.parametrize("argv,activation", [
    (["--binarize", "none"], "relu"),  # the discrete likelihoods' default (tanh stops using z: BENCHMARKS.md)
    (["--likelihood", "beta-binomial", "--activation", "tanh"], "tanh"),  # --activation says
    (["--likelihood", "gaussian-learned", "--dequantize", "uniform"], "tanh"),  # continuous: the preset's
    ([], "tanh"),
])
def test_the_discrete_likelihoods_default_to_relu(argv, activation, tmp_path):
    config = resolve_defaults(svi.config_from_args(svi.build_parser().parse_args([*argv, "--out", str(tmp_path)])))
    assert config.model.activation == activation


@pytest.mark.parametrize("family,arch", [("vae", "mlp"), ("vae", "conv"), ("hierarchical", "mlp")])
def test_encoders_see_levels_as_pixels_in_the_unit_interval(family, arch):
    """A model of levels 0..255 and one of pixels in [0, 1], with the same weights, give the same q(z|x) for the
    same images: the encoder divides levels by the top level (raw levels saturate its first layer)."""
    kwargs = ({"latent_dims": (4, 3), "layer_hidden_dims": ((16,), (8,))} if family == "hierarchical"
              else {"z_dim": 4, "hidden_dims": (16,), "arch": arch})
    build = HierarchicalVAE if family == "hierarchical" else VAE
    torch.manual_seed(0)
    levels = build(likelihood="discretized-logistic", mixture_components=1, activation="tanh", **kwargs)
    unit = build(likelihood="gaussian-learned", activation="tanh", **kwargs)
    unit.load_state_dict({k: v for k, v in levels.state_dict().items() if not k.startswith("decoder")}, strict=False)
    x = torch.randint(0, 256, (5, 784)).float()
    q_levels, q_unit = levels.posterior(x), unit.posterior(x / 255)
    assert torch.allclose(q_levels.mean, q_unit.mean, atol=1e-6)
    assert torch.allclose(q_levels.variance, q_unit.variance, atol=1e-6)


def test_the_vampprior_pseudo_inputs_are_images_in_the_datas_units():
    torch.manual_seed(0)
    model = VAE(z_dim=4, hidden_dims=(16,), likelihood="beta-binomial", prior="vamp", pseudo_inputs=3)
    u = model.vamp.pseudo_inputs() / 255  # levels, not (0, 1): nearly blank images, pixels 0.05 + 0.01 N(0, 1)
    assert u.shape == (3, 784) and 0 < u.min() and u.max() < 0.1 and abs(u.mean() - 0.05) < 0.002


def test_colour_defaults_to_the_discretized_logistic_mixture(tmp_path):
    import numpy as np
    path = tmp_path / "colour.npy"
    np.save(path, np.zeros((10, 8, 8, 3), dtype=np.uint8))
    config = resolve_defaults(svi.config_from_args(svi.build_parser().parse_args(["--dataset", f"array:{path}",
                                                                                  "--out", str(tmp_path / "o")])))
    assert (config.model.likelihood, config.model.mixture_components, config.binarize) == (
        "discretized-logistic", 10, "none")


# --- bad input: one line each ----------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,words", [
    (["--likelihood", "discretized-logistic", "--binarize", "dynamic"], ("--binarize dynamic", "grey levels")),
    (["--likelihood", "beta-binomial", "--binarize", "static"], ("--binarize static",)),
    (["--likelihood", "discretized-logistic", "--dequantize", "uniform"], ("--dequantize", "pmf")),
    (["--likelihood", "bernoulli", "--dequantize", "uniform"], ("--dequantize",)),
    (["--likelihood", "gaussian", "--mixture-components", "3"], ("--mixture-components",)),
])
def test_bad_settings_are_one_line(argv, words, tmp_path, capsys):
    status, err = run(svi.main, [*argv, *TINY, "--out", str(tmp_path / "run")], capsys)
    assert_refused(status, err, *words)
    assert not (tmp_path / "run").exists()


def test_a_bit_depth_the_files_do_not_have_is_one_line(mnist_root, tmp_path, capsys):
    status, err = run(svi.main, ["--binarize", "none", "--bit-depth", "16", "--data-dir", str(mnist_root), *TINY,
                                 "--out", str(tmp_path / "run")], capsys)
    assert_refused(status, err, "--bit-depth 16", "8-bit")


def test_a_discrete_likelihood_on_float_data_is_one_line(tmp_path, capsys):
    import numpy as np
    path = tmp_path / "floats.npy"
    np.save(path, np.random.default_rng(0).random((400, 6, 6)).astype(np.float32))
    status, err = run(svi.main, ["--dataset", f"array:{path}", "--binarize", "none", *TINY,
                                 "--out", str(tmp_path / "run")], capsys)
    assert_refused(status, err, "integer grey levels", "floats")


def test_check_images_refuses_floats_and_binary_pixels_for_a_discrete_likelihood():
    with pytest.raises(DataError, match="integer grey levels 0..255.*floats"):
        check_images(torch.rand(4, 10), top=255, likelihood="discretized-logistic")
    with pytest.raises(DataError, match="binary"):
        check_images(torch.randint(0, 2, (4, 10)).float(), top=255)
    with pytest.raises(DataError, match="levels 0..255"):
        check_images(torch.full((2, 3), 256.0), top=255)
    check_images(torch.randint(0, 256, (4, 10)).float(), top=255)
    check_images(torch.randint(0, 256, (4, 10), dtype=torch.uint8), top=255)


def test_training_a_discrete_likelihood_on_unit_floats_from_python_is_refused(tmp_path, grey_images):
    data = DataSplits.from_arrays(grey_images.reshape(-1, 28, 28), binarize="none")  # encoding unit: [0, 1]
    config = TrainConfig(model=ModelConfig(z_dim=2, hidden_dims=(8,), likelihood="discretized-logistic"),
                         epochs=1, binarize="none", out=str(tmp_path / "run"), device="cpu")
    with pytest.raises(DataError, match="integer grey levels"):
        svi.train(config, data=data, progress=False)


def test_a_dequantized_report_runs_ais_and_bdmc_and_refuses_gaps_for_now(tmp_path, grey_images):
    data = DataSplits.from_arrays(grey_images.reshape(-1, 28, 28), binarize="none", encoding="dequantized")
    config = TrainConfig(model=ModelConfig(z_dim=2, hidden_dims=(8,), likelihood="gaussian-learned"), epochs=1,
                         binarize="none", dequantize="uniform", out=str(tmp_path / "run"), device="cpu")
    svi.train(config, data=data, progress=False)
    with pytest.raises(ConfigError, match="--gaps"):
        evaluate(tmp_path / "run", images=grey_images.float(), num_samples=10, gaps=True, progress=False)
    report = evaluate(tmp_path / "run", images=grey_images.float()[:4], num_samples=50, chunk_size=50,
                      ais_steps=3, ais_chains=2, bdmc_images=2, progress=False)
    assert report["bits_per_dim_kind"] == "dequantized-bound" and report["bits_per_dim"] > 0
    assert report["ais"]["bits_per_dim"] > 0 and math.isfinite(report["bdmc"]["gap"]["mean"])
    assert "lower bound on the log-probability" in (tmp_path / "run" / "report" / "report.md").read_text()


def test_dequantized_ais_is_a_lower_bound_on_the_exact_log_probability():
    from inference.estimators.ais import dequantized_ais
    bits = 3
    model = ToyDensity(torch.tensor([-1.0, 0.0, 0.5, 1.5]))
    levels = torch.tensor([[1.0, 3.0, 4.0, 7.0], [4.0, 4.0, 4.0, 4.0]], dtype=torch.float64)
    exact = exact_log_prob(model, levels, bits)
    est = dequantized_ais(model.model, model.guide, levels, bits, num_chains=200, num_steps=20, seed=0)
    # a stochastic lower bound: above the exact value by at most Monte Carlo noise (3 of its standard errors)
    assert est.log_px.shape == (2,) and (est.log_px <= exact + 3 * est.se).all() and (est.log_px > exact - 0.5).all()


# --- figures: decoder means scaled to [0, 1] ------------------------------------------------------------------

def test_figures_draw_decoder_means_of_levels_scaled_to_unit(tmp_path, grey_images, monkeypatch):
    from inference import figures as run_figures
    from pyro_vae import figures

    drawn = []
    monkeypatch.setattr(figures, "save_image_grid", lambda images, path, *a, **k: drawn.append(images) or path)
    monkeypatch.setattr(figures, "save_reconstructions",
                        lambda originals, recon, path, *a, **k: drawn.extend([originals, recon]) or path)
    model = VAE(z_dim=2, hidden_dims=(8,), likelihood="discretized-logistic", mixture_components=2)
    assert unit_scale(model, grey_images.float()) == pytest.approx(1 / 255)
    run_figures.draw_run_figures(model, grey_images.float(), None, [], tmp_path, log=lambda line: None)
    assert drawn and all(0 <= float(d.min()) and float(d.max()) <= 1 for d in drawn)
    assert max(float(d.max()) for d in drawn) > 0.2  # levels really were scaled, not clipped to 0
    assert unit_scale(VAE(z_dim=2, hidden_dims=(8,)), torch.rand(3, 784)) == 1.0


def test_a_bernoulli_on_dequantized_data_is_refused_in_one_line(tmp_path, capsys):
    status, err = run(svi.main, ["--likelihood", "bernoulli", "--dequantize", "uniform", *TINY,
                                 "--out", str(tmp_path / "run")], capsys)
    assert_refused(status, err, "--dequantize", "bernoulli")
