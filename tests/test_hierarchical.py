"""The hierarchical family (Burda et al.'s stacked layers) and the VampPrior: densities, programs, config, CLI."""

from __future__ import annotations

import json
import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from inference import svi
from inference.evaluate import evaluate
from inference.reports.report import published_entry
from inference.estimators.importance import estimate_log_marginal
from inference.training.step import objective_for
from models import VAE, HierarchicalVAE, build_from_config
from models.guides import MIN_SCALE
from models.priors import DiagonalNormalMixture, StandardNormal
from pyro_vae.checkpoint import load
from pyro_vae.config import PRESETS, ModelConfig, TrainConfig, resolve_defaults
from pyro_vae.errors import ConfigError

TINY = ["--epochs", "1", "--train-limit", "256", "--test-limit", "32", "--batch-size", "64", "--device", "cpu",
        "--no-progress"]


def _binary(n: int = 5, d: int = 784, seed: int = 3) -> torch.Tensor:
    return torch.bernoulli(torch.rand(n, d, generator=torch.Generator().manual_seed(seed)))


def _log_normal(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """sum_d log N(z_d; loc_d, scale_d) written out, float64."""
    z, loc, scale = z.double(), loc.double(), scale.double()
    return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def _diagonal(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    loc, scale_raw = raw.chunk(2, dim=-1)
    return loc, F.softplus(scale_raw) + MIN_SCALE


def _mixture_by_hand(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log (1/K) sum_k N(z; loc_k, diag scale_k^2) for z [N, D], loc/scale [K, D], one component at a time."""
    per_component = torch.stack([_log_normal(z, loc[k], scale[k]) for k in range(loc.shape[0])], -1)
    return torch.logsumexp(per_component, -1) - math.log(loc.shape[0])


def _site_log_prob(model, site: str, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """What Pyro scores at ``site`` when the model is run with ``site`` = ``z``."""
    trace = poutine.trace(poutine.condition(model.model, {site: z})).get_trace(x)
    return trace.nodes[site]["fn"].log_prob(z)


@torch.no_grad()
def test_vamp_log_density_is_the_mixture_of_the_pseudo_inputs_posteriors():
    x = _binary()
    vae = VAE(z_dim=3, hidden_dims=(16,), prior="vamp", pseudo_inputs=4)
    u = torch.sigmoid(vae.vamp.pseudo_logits)
    assert u.shape == (4, 784) and 0 < u.min() and u.max() < 1
    loc, scale = _diagonal(vae.encoder(u))
    z = 3 * torch.randn(6, 3)
    expected = _mixture_by_hand(z, loc, scale)
    assert isinstance(vae.prior(x), DiagonalNormalMixture)
    assert torch.allclose(vae.prior(x).log_prob(z).double(), expected, atol=1e-4)
    assert torch.allclose(_site_log_prob(vae, "z", z[:5], x).double(), expected[:5], atol=1e-4)

    # the top layer of the hierarchical family: u up the bottom-up path, the lower layer at its mean
    two = HierarchicalVAE(latent_dims=(5, 3), layer_hidden_dims=((16,), (8,)), prior="vamp", pseudo_inputs=4)
    u = torch.sigmoid(two.vamp.pseudo_logits)
    loc1, _ = _diagonal(two.encoders[0](u))
    loc2, scale2 = _diagonal(two.encoders[1](loc1))
    expected = _mixture_by_hand(z, loc2, scale2)
    assert torch.allclose(two.prior(x).log_prob(z).double(), expected, atol=1e-4)
    assert torch.allclose(_site_log_prob(two, "z2", z[:5], x).double(), expected[:5], atol=1e-4)

    # other guide families mix through torch's MixtureSameFamily: the same mixture
    full = VAE(z_dim=3, hidden_dims=(16,), guide="full", prior="vamp", pseudo_inputs=4)
    q = full.posterior(torch.sigmoid(full.vamp.pseudo_logits))
    per_component = torch.stack([q.log_prob(zi) for zi in z])  # [N, K]
    expected = torch.logsumexp(per_component, -1) - math.log(4)
    assert torch.allclose(full.prior(x).log_prob(z), expected, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_standard_normal_prior_is_normal_bit_for_bit(dtype):
    """Values and gradients equal to the bit those of ``dist.Normal(zeros, ones)``, also expanded by a plate and at
    a value that broadcasts against it; the KL divergence, moments and draws are Normal's; both families use it."""
    torch.manual_seed(0)
    z = 3 * torch.randn(7, 4, 50, dtype=dtype)
    ours = StandardNormal.of_size(50, z).to_event(1)
    plain = pyro.distributions.Normal(z.new_zeros(50), z.new_ones(50)).to_event(1)
    for p, q, value in ((ours, plain, z), (ours.expand([4]), plain.expand([4]), z),
                        (ours.expand([4]), plain.expand([4]), z[0, 0])):
        leaves = [value.clone().requires_grad_(True) for _ in range(2)]
        got, want = p.log_prob(leaves[0]), q.log_prob(leaves[1])
        assert got.shape == want.shape and torch.equal(got, want)
        got.sum().backward()
        want.sum().backward()
        assert torch.equal(leaves[0].grad, leaves[1].grad)
    assert isinstance(ours.expand([4]).base_dist, StandardNormal) and ours.expand([4]).batch_shape == (4,)
    q = pyro.distributions.Normal(z[0], 0.5 + z[1].abs()).to_event(1)
    assert torch.equal(torch.distributions.kl_divergence(q, ours), torch.distributions.kl_divergence(q, plain))
    assert torch.equal(ours.mean, plain.mean) and torch.equal(ours.variance, plain.variance)
    assert ours.sample((3,)).shape == (3, 50) and ours.sample().dtype == dtype
    for model in (VAE(z_dim=5, hidden_dims=(16,)),
                  HierarchicalVAE.from_config(ModelConfig.hierarchical((6, 5), ((16,), (16,))))):
        assert isinstance(model.prior(z).base_dist, StandardNormal)
    assert VAE(z_dim=5, hidden_dims=(16,)).standard_normal_code
    # Normal's constructor, as Pyro's LocScaleReparam rebuilds a site: any location and scale, Normal's density
    shifted = StandardNormal(z.new_full((50,), 2.0), z.new_full((50,), 3.0))
    assert torch.equal(shifted.log_prob(z), pyro.distributions.Normal(z.new_full((50,), 2.0), 3.0).log_prob(z))
    assert torch.equal(ours.base_dist.log_prob(z.float() if dtype == torch.float64 else z.double()),
                       plain.base_dist.log_prob(z.float() if dtype == torch.float64 else z.double()))


@torch.no_grad()
def test_diagonal_mixture_is_exact_at_the_smallest_scales_and_samples_its_components():
    loc = torch.tensor([[0.0, 1.0], [5.0, -2.0]])
    scale = torch.tensor([[MIN_SCALE, 0.5], [1.0, MIN_SCALE]])
    z = loc + torch.tensor([[2e-3, -0.3], [0.5, 1e-3]])  # near each component, where cancellation would bite
    assert torch.allclose(DiagonalNormalMixture(loc, scale).log_prob(z).double(), _mixture_by_hand(z, loc, scale),
                          rtol=1e-6)
    draws = DiagonalNormalMixture(loc, scale).sample((4000,))
    assert draws.shape == (4000, 2)
    assert abs((draws[:, 0] > 2.5).float().mean().item() - 0.5) < 0.05  # equal weights


def test_meanfield_elbo_falls_back_to_the_sampled_kl_for_the_vamp_prior():
    """No KL(Normal || mixture) is registered, so TraceMeanField_ELBO scores log p(z) - log q(z|x) at the sample:
    with the same draws it is Trace_ELBO exactly; with N(0, I) it takes the KL in closed form and differs."""
    x = _binary()
    for prior, same in (("vamp", True), ("standard", False)):
        vae = VAE(z_dim=4, hidden_dims=(16,), prior=prior)
        losses = []
        for elbo in (TraceMeanField_ELBO(), Trace_ELBO()):
            pyro.set_rng_seed(7)
            losses.append(elbo.loss(vae.model, vae.guide, x))
        assert (losses[0] == pytest.approx(losses[1], rel=1e-6)) == same, (prior, losses)


def test_one_layer_hierarchical_is_the_vae():
    pyro.set_rng_seed(0)
    vae = VAE(z_dim=6, hidden_dims=(32, 16))
    pyro.set_rng_seed(0)
    one = HierarchicalVAE(latent_dims=(6,), layer_hidden_dims=((32, 16),))
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), one.state_dict().values()))  # same draws
    one.encoders[0].load_state_dict(vae.encoder.state_dict())  # and the same parameters, whatever the draw order
    one.decoder.load_state_dict(vae.decoder.state_dict())
    x = _binary(8)
    for kl_weight in (1.0, 0.3):
        losses = []
        for m in (vae, one):
            pyro.set_rng_seed(11)
            losses.append(Trace_ELBO().loss(m.model, m.guide, x, kl_weight))
        assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    assert torch.allclose(one.encode(x), vae.encode(x)) and torch.allclose(one.reconstruct(x), vae.reconstruct(x))


def test_two_layer_programs_sites_plates_and_kl_weight():
    model = build_from_config(PRESETS["burda2015-2layer"].model)
    x = _binary(7)
    guide = poutine.trace(model.guide).get_trace(x, 0.25)
    joint = poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(x, 0.25)
    latent = lambda t: [n for n, s in t.nodes.items() if s["type"] == "sample" and not s["is_observed"]
                        and n != "data"]
    assert latent(guide) == ["z1", "z2"] and latent(joint) == ["z2", "z1"]  # bottom-up, top-down
    for trace in (guide, joint):
        for name, size in (("z1", 100), ("z2", 50)):
            site = trace.nodes[name]
            assert site["value"].shape == (7, size) and site["scale"] == 0.25
            assert [f.name for f in site["cond_indep_stack"]] == ["data"]
    assert joint.nodes["x"]["scale"] == 1.0 and joint.nodes["x"]["fn"].event_shape == (784,)
    assert torch.isfinite(torch.as_tensor(Trace_ELBO().loss(model.model, model.guide, x)))


def test_two_layer_preset_is_burda_et_al_architecture():
    model = build_from_config(PRESETS["burda2015-2layer"].model)
    widths = lambda net: [m.out_features for m in net if isinstance(m, torch.nn.Linear)]
    assert [widths(net) for net in model.encoders] == [[200, 200, 200], [100, 100, 100]]  # q(z1|x), q(z2|z1): loc, scale
    assert widths(model.conditionals[0]) == [100, 100, 200] and widths(model.decoder) == [200, 200, 784]
    assert isinstance(model.encoders[0][1], torch.nn.Tanh)
    assert PRESETS["burda2015-2layer"].train == {"elbo": "trace"} and PRESETS["burda2015-2layer"].published_nll == 85.33
    assert PRESETS["burda2015-2layer-iwae"].train == {"elbo": "iwae", "num_particles": 50}
    assert PRESETS["burda2015-2layer-iwae"].published_nll == 82.90


def test_two_layer_capabilities_and_log_marginal_above_the_elbo():
    model = HierarchicalVAE(latent_dims=(8, 4), layer_hidden_dims=((32,), (16,)))
    x = _binary(6)
    assert model.code_site == "z1" and model.z_dim == 8 and model.likelihood.binary_data
    samples = model.generate(5)
    assert samples.shape == (5, 784) and 0 <= samples.min() and samples.max() <= 1
    assert model.encode(x).shape == (6, 8) and model.decode(model.encode(x)).shape == (6, 784)
    assert torch.allclose(model.encode(x), model.posterior(x).mean)
    assert model.reconstruct(x).shape == (6, 784)
    est = estimate_log_marginal(model.model, model.guide, x, num_samples=50)
    assert torch.isfinite(est.log_px).all() and (est.log_px >= est.elbo).all()


def test_closed_form_kl_is_biased_for_stacked_layers_so_meanfield_is_refused_or_replaced():
    """TraceMeanField_ELBO replaces E[log p(z1|z2) - log q(z1|x)] by -KL(q(z1|x) || p(z1|z2)) at the guide's z2,
    as if z2 did not depend on z1; it does (q(z2|z1)), so the two differ (here by nats, layers coupled)."""
    pyro.set_rng_seed(0)
    model = HierarchicalVAE(latent_dims=(4, 2), layer_hidden_dims=((32,), (16,)))
    with torch.no_grad():
        for net in (model.encoders[1], model.conditionals[0]):
            for layer in net:
                if isinstance(layer, torch.nn.Linear):
                    layer.weight.mul_(3)  # couple the layers
        x, n = _binary(4), 100_000
        q1 = model.layer_posterior(0, x)
        z1 = q1.sample((n,))
        p1 = model.conditional(0, model.layer_posterior(1, z1).sample())
        bias = (p1.log_prob(z1) - p1.log_prob(q1.sample((n,)))).mean(0)  # joint minus what the closed form sees
    assert bias.abs().max() > 1.0, bias
    # the general check (inference.training.step.objective_for) sees it: refused when asked for, the default falls back
    two_layer = build_from_config(PRESETS["burda2015-2layer"].model)
    probe = _binary(4)
    with pytest.raises(ConfigError, match="--elbo meanfield does not apply to this model: .*'z1'"):
        objective_for(two_layer, TrainConfig(elbo="meanfield"), probe, chosen=True)
    notes = []
    assert objective_for(two_layer, TrainConfig(elbo="meanfield"), probe, log=notes.append).elbo == "trace"
    assert len(notes) == 1 and notes[0].startswith("note: training --elbo trace")
    one_layer = build_from_config(PRESETS["burda2015-2layer"].model.changed(
        {"latent_dims": (8,), "layer_hidden_dims": ((32,),)}))
    assert objective_for(one_layer, TrainConfig(elbo="meanfield"), probe, chosen=True).elbo == "meanfield"


def _config(*flags: str) -> TrainConfig:
    """The run the flags make: mapped to fields by the command line, completed and checked as `train` does."""
    return resolve_defaults(svi.config_from_args(svi.build_parser().parse_args(list(flags)))).validated()


def test_flags_size_the_layers_and_pick_the_prior():
    two = _config("--preset", "burda2015-2layer")
    assert two.model == PRESETS["burda2015-2layer"].model.resolved() and two.elbo == "trace" and two.model.z_dim == 100
    iwae = _config("--preset", "burda2015-2layer-iwae")
    assert iwae.elbo == "iwae" and iwae.num_particles == 50
    small = _config("--preset", "burda2015-2layer", "--latent-dims", "8,4", "--layer-hidden-dims", "32/16")
    assert small.model.latent_dims == (8, 4) and small.model.layer_hidden_dims == ((32,), (16,))
    assert (small.model.z_dim, small.model.hidden_dims) == (8, (32,))
    one = _config("--family", "hierarchical")  # burda2015's one layer as an L = 1 stack
    assert one.model.latent_dims == (50,) and one.model.layer_hidden_dims == ((200, 200),)
    flat = _config("--preset", "burda2015-2layer", "--family", "vae")
    assert flat.model.family == "vae" and flat.model.latent_dims is None and flat.model.z_dim == 100
    vamp = _config("--prior", "vamp", "--pseudo-inputs", "20")
    assert (vamp.model.prior, vamp.model.pseudo_inputs) == ("vamp", 20) and vamp.model.family == "vae"
    assert _config("--prior", "vamp").model.pseudo_inputs == 500


@pytest.mark.parametrize("flags, message", [
    (["--pseudo-inputs", "20"], "--pseudo-inputs sets the VampPrior"),
    (["--prior", "vamp", "--guide", "iaf"], "--prior vamp .* not iaf"),
    (["--preset", "burda2015-2layer", "--latent-dim", "10"], "--latent-dim sizes the vae family"),
    (["--preset", "burda2015-2layer", "--guide", "full"], "diagonal Normals"),
    (["--preset", "burda2015-2layer", "--latent-dims", "8,4,2"], "one list of widths per layer: 3"),
    (["--latent-dims", "100,50"], "hierarchical family's layers"),
], ids=["k-without-vamp", "vamp-iaf", "latent-dim", "full-guide", "widths-count", "vae-latent-dims"])
def test_settings_no_model_can_take_are_one_line_config_errors(flags, message):
    with pytest.raises(ConfigError, match=message) as caught:
        _config(*flags)
    assert "\n" not in str(caught.value)


def test_an_explicit_meanfield_on_two_layers_is_one_line_and_writes_nothing(mnist_root, tmp_path, capsys):
    status = svi.main(["--preset", "burda2015-2layer", "--elbo", "meanfield", "--epochs", "1", "--train-limit", "200",
                       "--test-limit", "50", "--data-dir", str(mnist_root), "--out", str(tmp_path / "run"),
                       "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.startswith("error: --elbo meanfield does not apply to this model") and "\n" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags", [["--pseudo-inputs", "0"], ["--latent-dims", "100,x"],
                                   ["--layer-hidden-dims", "200,200/"]])
def test_malformed_flags_are_refused_by_the_parser(flags, capsys):
    with pytest.raises(SystemExit) as caught:
        svi.build_parser().parse_args(flags)
    assert caught.value.code == 2 and capsys.readouterr().err.count("\n") == 1
    with pytest.raises(ConfigError, match="--pseudo-inputs must be a positive integer"):
        ModelConfig(prior="vamp", pseudo_inputs=0).validated()


def test_configs_round_trip_and_old_ones_load_as_the_one_layer_vae():
    for preset in ("burda2015-2layer", "burda2015-2layer-iwae"):
        config = resolve_defaults(TrainConfig(model=PRESETS[preset].model, preset=preset, **PRESETS[preset].train))
        saved = json.loads(json.dumps(config.to_dict()))
        assert TrainConfig.from_dict(saved) == config
        assert published_entry(saved)["nll"] == PRESETS[preset].published_nll
    old = resolve_defaults(TrainConfig()).to_dict()
    for field in ("family", "latent_dims", "layer_hidden_dims", "prior", "pseudo_inputs"):
        del old["model"][field]  # a config.json written before these fields
    loaded = TrainConfig.from_dict(old).validated()
    assert loaded.model == ModelConfig().resolved() and loaded.model.family == "vae" and published_entry(old)["nll"] == 86.76
    assert set(VAE().init_kwargs()) == {"x_dim", "z_dim", "hidden_dims", "activation", "likelihood", "guide",
                                        "obs_scale", "flow_steps", "arch"}  # a standard VAE's checkpoint as before


def test_two_layer_preset_trains_from_the_cli_loads_resumes_and_reports_the_published_nll(mnist_root, tmp_path):
    out = tmp_path / "run"
    common = ["--device", "cpu", "--no-progress", "--data-dir", str(mnist_root), "--out", str(out)]
    assert svi.main(["--preset", "burda2015-2layer", "--epochs", "1", "--train-limit", "500", "--test-limit", "100",
                     *common]) == 0
    model, config = load(out, device="cpu")
    assert isinstance(model, HierarchicalVAE) and model.latent_dims == (100, 50) and config.preset == "burda2015-2layer"
    assert svi.main(["--resume", "--epochs", "2", *common]) == 0
    model, config = load(out, device="cpu")
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and config.epochs == 2
    assert all(math.isfinite(h["test_elbo"]) for h in history)
    report = evaluate(out, num_samples=20, test_limit=8, device="cpu", progress=False)
    assert report["published"]["nll"] == 85.33 and report["log_px"]["mean"] >= report["elbo"]["mean"]
    assert "Published for preset `burda2015-2layer`: NLL 85.33" in (out / "report" / "report.md").read_text()


@pytest.mark.parametrize("flags", [
    ["--prior", "vamp", "--pseudo-inputs", "20", "--latent-dim", "6", "--hidden-dims", "48"],
    ["--preset", "burda2015-2layer", "--prior", "vamp", "--pseudo-inputs", "20", "--latent-dims", "8,4",
     "--layer-hidden-dims", "32/16"],
], ids=["vae", "hierarchical"])
def test_vamp_prior_trains_a_short_epoch_for_both_families(mnist_root, tmp_path, flags):
    out = tmp_path / "run"
    assert svi.main([*TINY, *flags, "--data-dir", str(mnist_root), "--out", str(out)]) == 0
    model, config = load(out, device="cpu")
    assert config.model.prior == "vamp" and model.vamp.num_pseudo_inputs == 20
    assert -700 < json.loads((out / "metrics.jsonl").read_text())["test_elbo"] < 0
