"""The VAE's Pyro programs: site names, shapes, plates, presets, the ELBO."""

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import JitTrace_ELBO, Trace_ELBO, TraceMeanField_ELBO

from models import VAE
from models.guides import MIN_SCALE
from pyro_vae.config import PRESETS


def _traces(vae, x):
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    return guide_trace, model_trace


def sample_sites(trace):
    return {name: site for name, site in trace.nodes.items() if site["type"] == "sample" and name != "data"}


def test_sites_shapes_and_plates():
    vae = VAE(z_dim=7, hidden_dims=(32,))
    x = torch.bernoulli(torch.full((5, 784), 0.3))
    guide_trace, model_trace = _traces(vae, x)

    assert set(sample_sites(guide_trace)) == {"z"}
    assert set(sample_sites(model_trace)) == {"z", "x"}
    z, obs = model_trace.nodes["z"], model_trace.nodes["x"]
    assert not z["is_observed"] and obs["is_observed"]
    assert torch.equal(obs["value"], x)
    assert z["value"].shape == (5, 7) and torch.equal(z["value"], guide_trace.nodes["z"]["value"])
    for site, event in ((z, (7,)), (obs, (784,)), (guide_trace.nodes["z"], (7,))):
        assert site["fn"].batch_shape == (5,) and site["fn"].event_shape == event
        frames = [(f.name, f.size, f.dim) for f in site["cond_indep_stack"]]
        assert frames == [("data", 5, -1)]


def test_prior_is_standard_normal():
    vae = VAE(z_dim=3, hidden_dims=(8,))
    prior = vae.prior(torch.zeros(2, 784))
    assert torch.equal(prior.base_dist.loc, torch.zeros(3)) and torch.equal(prior.base_dist.scale, torch.ones(3))


def test_guide_scale_positive_and_bounded_away_from_zero():
    vae = VAE(z_dim=4, hidden_dims=(16,))
    with torch.no_grad():  # drive the raw scale outputs to -1e4: softplus alone would give 0
        vae.encoder[-1].bias[4:] = -1e4
    q = vae.posterior(torch.rand(3, 784))
    assert (q.base_dist.scale >= MIN_SCALE).all()
    assert torch.isfinite(q.log_prob(q.sample())).all()


@pytest.mark.parametrize("elbo", [Trace_ELBO(), TraceMeanField_ELBO(), JitTrace_ELBO()], ids=["trace", "meanfield", "jit"])
def test_elbo_is_finite_and_has_gradients(elbo):
    vae = VAE(z_dim=5, hidden_dims=(20,))
    x = torch.bernoulli(torch.full((6, 784), 0.2))
    loss = elbo.loss(vae.model, vae.guide, x)
    assert math.isfinite(loss) and loss > 0  # a negative ELBO of binary images at initialisation
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), elbo)
    assert math.isfinite(svi.step(x))
    assert {n for n in pyro.get_param_store()} >= {"encoder$$$0.weight", "decoder$$$0.weight"}


def test_meanfield_and_trace_estimate_the_same_elbo():
    """Analytic-KL and sampled-KL estimators agree in expectation (many particles)."""
    vae = VAE(z_dim=5, hidden_dims=(20,))
    x = torch.bernoulli(torch.full((4, 784), 0.2))
    kw = dict(num_particles=4000, vectorize_particles=True)
    sampled = Trace_ELBO(**kw).loss(vae.model, vae.guide, x)
    analytic = TraceMeanField_ELBO(**kw).loss(vae.model, vae.guide, x)
    assert abs(sampled - analytic) < 0.01 * abs(analytic)


def test_jit_loss_matches_plain_loss_when_batch_size_changes():
    vae = VAE(z_dim=5, hidden_dims=(20,))
    jit = JitTrace_ELBO()
    for n in (16, 3, 16):
        x = torch.bernoulli(torch.full((n, 784), 0.4))
        torch.manual_seed(1)
        plain = Trace_ELBO().loss(vae.model, vae.guide, x)
        torch.manual_seed(1)
        assert jit.loss(vae.model, vae.guide, x) == pytest.approx(plain, rel=1e-6)


def test_presets_build_the_published_architectures():
    burda = VAE.from_config(PRESETS["burda2015"].model)
    assert [m.out_features for m in burda.encoder if hasattr(m, "out_features")] == [200, 200, 100]
    assert [m.out_features for m in burda.decoder if hasattr(m, "out_features")] == [200, 200, 784]
    assert isinstance(burda.encoder[1], torch.nn.Tanh)
    pyro_example = VAE.from_config(PRESETS["pyro-example"].model)
    assert [m.out_features for m in pyro_example.encoder if hasattr(m, "out_features")] == [400, 100]
    assert isinstance(pyro_example.encoder[1], torch.nn.Softplus)


def test_unknown_names_are_rejected_with_the_choices():
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'.*bernoulli"):
        VAE(likelihood="poisson")
    with pytest.raises(ValueError, match="unknown guide 'flow'.*diagonal"):
        VAE(guide="flow")


def test_generate_and_reconstruct_give_images_in_unit_interval():
    vae = VAE(z_dim=5, hidden_dims=(20,))
    for images in (vae.generate(9), vae.reconstruct(torch.rand(4, 784).round())):
        assert images.shape[1] == 784 and ((images >= 0) & (images <= 1)).all()
