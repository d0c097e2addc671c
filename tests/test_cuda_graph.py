"""The CUDA-graph step: how --cuda-graph resolves, that the CPU never graphs, that a failed capture changes
nothing, the guard's comparison; and on a GPU, graphed training against plain training and exact resume."""

from __future__ import annotations

import copy

import pytest
import torch

from inference import svi
from inference.training import step as step_module
from inference.training.cuda_graph import (CudaGraphStep, _Snapshot, build_graph_step, compare_outcomes, set_capturable,
                                  step_outcome, wants_graph)
from inference.training.objectives import make_elbo
from inference.svi import train
from models import VAE
from pyro_vae import checkpoint
from pyro_vae.config import TrainConfig
from pyro_vae.errors import CaptureError, ConfigError

from conftest import cuda_only
from test_train import SMALL, small_config

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _tiny_step(seed: int = 0):
    """A small VAE, its Adam and its plain (compiled-free) step on the CPU."""
    torch.manual_seed(seed)
    vae = VAE(z_dim=4, hidden_dims=(16,))
    optim = torch.optim.Adam(vae.parameters(), lr=1e-3)
    return vae, optim, step_module.make_step(vae, make_elbo("meanfield"), optim)


def test_the_flag_resolves_none_true_and_false():
    assert not wants_graph(None, CPU) and not wants_graph(False, CPU) and not wants_graph(False, CUDA)
    assert wants_graph(None, CUDA) and wants_graph(True, CUDA)
    assert not wants_graph(None, CUDA, world_size=2) and not wants_graph(None, CUDA, compiled=False)
    for kwargs, words in [({"device": CPU}, "this run is on cpu"),
                          ({"device": CUDA, "world_size": 2}, r"not under torchrun \(2 processes"),
                          ({"device": CUDA, "compiled": False}, "this run's loss is not compiled")]:
        with pytest.raises(ConfigError, match=words):
            wants_graph(True, **kwargs)
    parse = lambda *a: svi.config_from_args(svi.build_parser().parse_args(list(a)))  # noqa: E731
    assert parse().cuda_graph is None and parse("--cuda-graph").cuda_graph is True
    assert parse("--no-cuda-graph").cuda_graph is False
    with pytest.raises(ConfigError, match="cuda_graph must be True, False or None"):
        TrainConfig(cuda_graph="yes").validated()


def test_build_step_never_graphs_on_the_cpu(mnist_root, tmp_path):
    vae = VAE.from_config(SMALL)
    probe = torch.bernoulli(torch.full((64, 784), 0.3))
    for request in (None, False):
        config = small_config(mnist_root, tmp_path, cuda_graph=request)
        step, compiled = step_module.build_step(vae, config, torch.optim.Adam(vae.parameters()), probe)
        assert compiled and isinstance(step, step_module.PlainStep) and not isinstance(step, CudaGraphStep)
    with pytest.raises(ConfigError, match="--cuda-graph captures the training step in a CUDA graph, but this run is on cpu"):
        step_module.build_step(vae, small_config(mnist_root, tmp_path, cuda_graph=True),
                               torch.optim.Adam(vae.parameters()), probe)
    result = train(small_config(mnist_root, tmp_path / "run"), progress=False)
    assert result.compiled and not result.graphed


def test_the_flag_may_change_on_resume(mnist_root, tmp_path):
    train(small_config(mnist_root, tmp_path / "run"), progress=False)
    resumed = svi.config_from_args(svi.build_parser().parse_args(
        ["--resume", "--out", str(tmp_path / "run"), "--no-cuda-graph", "--epochs", "2"]))
    assert resumed.cuda_graph is False and resumed.epochs == 2


def test_a_snapshot_puts_parameters_and_adam_state_back_in_place():
    vae, optim, step = _tiny_step()
    x = torch.bernoulli(torch.full((8, 784), 0.3))
    fresh_model, initial = copy.deepcopy(vae), _params(vae)
    tensors = list(vae.parameters())
    snapshot = _Snapshot(tensors, optim)
    addresses = [t.data_ptr() for t in tensors]
    for _ in range(3):
        step(x, 1.0)
    moments = [optim.state[p]["exp_avg"] for p in tensors]
    snapshot.restore(in_place=True)  # the state was absent: zero moments and step 0, in the same tensors
    assert [t.data_ptr() for t in tensors] == addresses and _equal(_params(vae), _params(fresh_model))
    assert all(optim.state[p]["exp_avg"] is m and not m.any() for p, m in zip(tensors, moments))
    assert all(float(optim.state[p]["step"]) == 0 for p in tensors)
    # from there a step is the fresh model's first step, draw for draw
    fresh_step = step_module.make_step(fresh_model, make_elbo("meanfield"), torch.optim.Adam(fresh_model.parameters()))
    torch.manual_seed(1)
    step(x, 1.0)
    torch.manual_seed(1)
    fresh_step(x, 1.0)
    assert _equal(_params(vae), _params(fresh_model))
    snapshot.restore(in_place=False)  # before any capture: copies put back, the absent state removed
    assert not optim.state and _equal(_params(vae), initial)


def test_the_guard_compares_loss_gradients_and_updates():
    vae, optim, step = _tiny_step()
    params = dict(vae.named_parameters())
    x = torch.bernoulli(torch.full((8, 784), 0.3))
    snapshot = _Snapshot(list(params.values()), optim)

    def plain():
        loss = step.loss_and_grads(x, torch.tensor(0.7))
        grads = [p.grad.clone() for p in params.values()]
        optim.step()
        optim.zero_grad(set_to_none=True)
        return loss, grads

    state = torch.get_rng_state()
    want = step_outcome(plain, params, CPU)
    assert torch.equal(torch.get_rng_state(), state)  # a trial leaves the training stream where it was
    snapshot.restore(in_place=False)
    got = step_outcome(plain, params, CPU)
    snapshot.restore(in_place=False)
    compare_outcomes(got, want, len(x))  # the same step from the same state and seed: equal
    assert set(want) == {"loss", *(f"{kind} {name}" for kind in ("gradient", "update") for name in params)}
    name = next(iter(params))
    for key, change in [("loss", 1e-3), (f"gradient {name}", 1e-3), (f"update {name}", 1e-2)]:
        off = {**got, key: got[key] * (1 + change)}
        with pytest.raises(CaptureError, match=f"differ on a probe batch of 8 with the same seed \\(in {key}: "):
            compare_outcomes(off, want, len(x))
    compare_outcomes({**got, f"update {name}": got[f"update {name}"] * (1 + 1e-4)}, want, len(x))  # within 1e-3


def test_a_failed_capture_changes_nothing(monkeypatch):
    """On the CPU the capture itself fails (no CUDA): the error is a CaptureError and the state is as before."""
    vae, optim, step = _tiny_step()
    x = torch.bernoulli(torch.full((8, 784), 0.3))
    step(x, 1.0)  # an Adam state to keep
    before, optim_before, rng = _params(vae), copy.deepcopy(optim.state_dict()), torch.get_rng_state()
    with pytest.raises(CaptureError, match="capturing the training step in a CUDA graph failed"):
        build_graph_step(step.loss_and_grads, vae, optim, x[:5], batch_size=8)
    after = optim.state_dict()
    assert _equal(_params(vae), before) and torch.equal(torch.get_rng_state(), rng)
    assert all(not g["capturable"] for g in optim.param_groups) and all(p.grad is None for p in vae.parameters())
    assert after["param_groups"] == optim_before["param_groups"]
    assert all(torch.equal(after["state"][i][k], optim_before["state"][i][k]) for i in after["state"]
               for k in after["state"][i])


def test_a_failed_capture_falls_back_to_the_same_training(mnist_root, tmp_path, monkeypatch, capsys):
    """With the capture attempted (and failing, on the CPU) a run trains bit for bit as one that never tried."""
    plain = train(small_config(mnist_root, tmp_path / "plain", epochs=2, train_limit=600), progress=False)
    monkeypatch.setattr(step_module, "wants_graph", lambda request, *args, **kwargs: request is not False)
    capsys.readouterr()
    tried = train(small_config(mnist_root, tmp_path / "tried", epochs=2, train_limit=600), progress=False)
    assert not tried.graphed and "note: training without a CUDA graph: capturing" in capsys.readouterr().out
    assert _equal(_params(plain.model), _params(tried.model))
    with pytest.raises(CaptureError):
        train(small_config(mnist_root, tmp_path / "insist", cuda_graph=True), progress=False)
    assert not (tmp_path / "insist").exists()


def test_a_checkpoint_written_while_graphed_resumes_on_the_cpu(mnist_root, tmp_path):
    """A graphed run saves Adam with capturable=True; resuming must not carry that to a CPU Adam."""
    straight = train(small_config(mnist_root, tmp_path / "a", epochs=2), progress=False)
    train(small_config(mnist_root, tmp_path / "b", epochs=1), progress=False)
    payload = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for group in payload["optim_state"]["param_groups"]:
        group["capturable"] = True  # as a CUDA-graph run writes it
    torch.save(payload, tmp_path / "b" / "checkpoint.pt")
    resumed = train(small_config(mnist_root, tmp_path / "b", epochs=2), resume=True, progress=False)
    assert _equal(_params(straight.model), _params(resumed.model))
    groups = checkpoint.read(tmp_path / "b")["optim_state"]["param_groups"]
    assert all(not g["capturable"] for g in groups)


def test_set_capturable_moves_the_step_counts():
    vae, optim, step = _tiny_step()
    step(torch.bernoulli(torch.full((8, 784), 0.3)), 1.0)
    set_capturable(optim, True)
    assert all(g["capturable"] for g in optim.param_groups)
    assert all(s["step"].dtype == torch.float32 and float(s["step"]) == 1 for s in optim.state.values())
    set_capturable(optim, False)
    assert all(s["step"].device.type == "cpu" and float(s["step"]) == 1 for s in optim.state.values())


# --- on a GPU -----------------------------------------------------------------------


@cuda_only
def test_build_step_graphs_by_default_on_cuda_without_host_syncs(mnist_root, tmp_path):
    vae = VAE.from_config(SMALL).cuda()
    probe = torch.bernoulli(torch.full((64, 784), 0.3, device="cuda"))
    optim = torch.optim.Adam(vae.parameters())
    step, compiled = step_module.build_step(vae, small_config(mnist_root, tmp_path, device="cuda"), optim, probe)
    assert compiled and isinstance(step, CudaGraphStep)
    kl = torch.ones((), device="cuda")
    step(probe, kl)  # the first call of a shape may capture; later ones only copy in, replay and clone
    step(probe[:10], kl)
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [step(probe, kl.fill_(0.5)) for _ in range(3)] + [step(probe[:10], kl)]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(torch.isfinite(loss) for loss in losses) and len(step.graphs) == 2
    plain, _ = step_module.build_step(vae, small_config(mnist_root, tmp_path, device="cuda", jit=False),
                                      torch.optim.Adam(vae.parameters()), probe)
    assert not isinstance(plain, CudaGraphStep)
    with pytest.raises(ConfigError, match="this run's loss is not compiled"):
        step_module.build_step(vae, small_config(mnist_root, tmp_path, device="cuda", jit=False, cuda_graph=True),
                               torch.optim.Adam(vae.parameters()), probe)


@cuda_only
@pytest.mark.parametrize("schedule", ["constant", "burda2015"])
def test_graphed_training_follows_plain_training_on_cuda(mnist_root, tmp_path, schedule):
    """600 images in batches of 64: 9 full batches (one graph) and one of 24 (a second graph) per epoch; under
    burda2015 the rate changes at epoch 2 (the graph's lr tensor is refilled)."""
    settings = dict(device="cuda", epochs=2, train_limit=600, schedule=schedule)
    plain = train(small_config(mnist_root, tmp_path / "plain", cuda_graph=False, **settings), progress=False)
    graphed = train(small_config(mnist_root, tmp_path / "graphed", cuda_graph=True, **settings), progress=False)
    assert graphed.graphed and not plain.graphed
    for a, b in zip(plain.history, graphed.history):
        assert b["train_elbo"] == pytest.approx(a["train_elbo"], rel=1e-4)
        assert b["test_elbo"] == pytest.approx(a["test_elbo"], rel=1e-3)
    a, b = _params(plain.model), _params(graphed.model)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-2  # 20 Adam steps of at most ~lr each
    groups = checkpoint.read(tmp_path / "graphed")["optim_state"]["param_groups"]
    assert all(isinstance(g["lr"], float) for g in groups)  # the graph's lr tensor stays out of the checkpoint


@cuda_only
def test_graphed_resume_is_exact_on_cuda(mnist_root, tmp_path):
    settings = dict(device="cuda", train_limit=600, cuda_graph=True, schedule="burda2015")
    straight = train(small_config(mnist_root, tmp_path / "a", epochs=3, **settings), progress=False)
    train(small_config(mnist_root, tmp_path / "b", epochs=1, **settings), progress=False)
    resumed = train(small_config(mnist_root, tmp_path / "b", epochs=3, **settings), resume=True, progress=False)
    assert straight.graphed and resumed.graphed
    assert _equal(_params(straight.model), _params(resumed.model))
    strip = lambda hs: [{k: v for k, v in h.items() if k != "seconds"} for h in hs]  # noqa: E731
    assert strip(straight.history) == strip(resumed.history)
    on_cpu = train(small_config(mnist_root, tmp_path / "b", epochs=4, device="cpu", train_limit=600,
                                schedule="burda2015"), resume=True, progress=False)  # a graphed run continues on the CPU
    assert not on_cpu.graphed and len(on_cpu.history) == 4

