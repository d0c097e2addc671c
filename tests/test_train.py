"""Training: the CLI's outputs, learning on real MNIST, exact resume, faults."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
from pyro.nn import pyro_method

from inference.training import step as step_module
from inference import svi
from pyro_vae.agreement import relative_difference
from inference.training.objectives import make_elbo
from inference.svi import main, train
from inference.training.loop import evaluate_elbo
from models import VAE, register_model
from pyro_vae import checkpoint
from pyro_vae.checkpoint import load
from pyro_vae.config import ModelConfig, TrainConfig, resolve_defaults
from pyro_vae.errors import CompileError, DataError, TrainingDiverged

from conftest import REPO, cuda_only

SMALL = ModelConfig(z_dim=8, hidden_dims=(64,))


def small_config(mnist_root: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(model=SMALL, preset=None, data_dir=str(mnist_root), train_limit=640, test_limit=200,
                    epochs=1, batch_size=64, device="cpu", out=str(out))
    settings.update(overrides)
    return TrainConfig(**settings)


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inference.svi", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, **kwargs)


def test_cli_writes_config_metrics_checkpoint_and_figures(mnist_root, tmp_path):
    out = tmp_path / "run"
    status = main(["--epochs", "2", "--train-limit", "500", "--test-limit", "100", "--latent-dim", "6",
                   "--hidden-dims", "32,16", "--batch-size", "100", "--data-dir", str(mnist_root), "--device", "cpu",
                   "--out", str(out), "--no-progress"])
    assert status == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["z_dim"] == 6 and config["model"]["hidden_dims"] == [32, 16] and config["epochs"] == 2
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    for line in lines:
        assert set(line) == {"epoch", "train_elbo", "test_elbo", "test_rate", "test_distortion", "sites", "seconds"}
        assert set(line["sites"]) == {"z"} and line["sites"]["z"]["units"] == 6 and line["sites"]["z"]["active_units"] > 0
        assert line["sites"]["z"]["rate"] == pytest.approx(line["test_rate"])
        assert line["train_elbo"] < 0 and line["test_elbo"] < 0 and line["seconds"] > 0
        assert line["test_rate"] > 0 and line["test_elbo"] == pytest.approx(-(line["test_rate"] + line["test_distortion"]))
    for name in ("samples.png", "reconstructions.png", "elbo.png", "latent.png", "interpolation.png"):
        assert (out / "figures" / name).stat().st_size > 0
    assert not (out / "figures" / "manifold.png").exists()  # z_dim 6: no plane to grid
    vae, loaded = load(out / "checkpoint.pt", device="cpu")
    assert isinstance(vae, VAE) and loaded.to_dict() == config
    assert vae.config.hidden_dims == (32, 16) and not vae.training
    payload = checkpoint.read(out)
    assert payload["epoch"] == 2 and payload["step"] == 0 and len(payload["history"]) == 2
    # the loaded model reproduces the recorded test ELBO (same frozen split, same seed)
    test = load_splits_for(loaded)
    assert evaluate_elbo(vae, test, seed=loaded.test_seed) == pytest.approx(lines[-1]["test_elbo"], rel=1e-5)


def load_splits_for(config: TrainConfig) -> torch.Tensor:
    from pyro_vae.data import load_splits

    return load_splits(dataclasses.replace(config.data_spec(), train_limit=1, download=False)).test


def test_a_few_hundred_steps_raise_the_test_elbo(mnist_root, tmp_path):
    config = small_config(mnist_root, tmp_path / "run", model=ModelConfig(), train_limit=12800, test_limit=1000,
                          epochs=3, batch_size=128)  # default architecture, 300 steps
    untrained = VAE.from_config(config.model)
    result = train(config, progress=False)
    before = evaluate_elbo(untrained, result.data.test, seed=0)
    after = evaluate_elbo(result.model, result.data.test, seed=0)
    assert before < -500  # ~ -784 log 2 at initialisation
    assert after > before + 300 and after > -210, (before, after)
    tests = [h["test_elbo"] for h in result.history]
    assert tests[-1] > tests[0]


@pytest.mark.parametrize("jit", [False, True], ids=["plain", "jit"])
def test_resume_at_an_epoch_boundary_equals_training_straight(mnist_root, tmp_path, jit):
    straight = train(small_config(mnist_root, tmp_path / "a", epochs=2, jit=jit), progress=False)
    train(small_config(mnist_root, tmp_path / "b", epochs=1, jit=jit), progress=False)
    resumed = train(small_config(mnist_root, tmp_path / "b", epochs=2, jit=jit), resume=True, progress=False)
    a, b = _params(straight.model), _params(resumed.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda hs: [{k: v for k, v in h.items() if k != "seconds"} for h in hs]  # noqa: E731
    assert strip(straight.history) == strip(resumed.history)
    assert (tmp_path / "b" / "metrics.jsonl").read_text().count("\n") == 2


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(mnist_root, tmp_path, monkeypatch):
    config = small_config(mnist_root, tmp_path / "run")
    train(config, progress=False)
    good = (tmp_path / "run" / "checkpoint.pt").read_bytes()

    real_make_step, calls = step_module.make_step, []

    def make_step_then_nan(*args, **kwargs):
        real = real_make_step(*args, **kwargs)

        def step(x, kl_weight):
            calls.append(1)
            loss = real(x, kl_weight)
            return torch.tensor(float("nan")) if len(calls) == 3 else loss

        return step

    monkeypatch.setattr(step_module, "make_step", make_step_then_nan)
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 3.*last good checkpoint") as info:
        train(small_config(mnist_root, tmp_path / "run", epochs=2), resume=True, progress=False)
    assert (info.value.epoch, info.value.step) == (2, 3)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == good


def test_bernoulli_on_grey_levels_is_rejected_before_training(mnist_root, tmp_path):
    with pytest.raises(DataError, match="needs binary pixels.*--binarize dynamic or static"):
        train(small_config(mnist_root, tmp_path / "run", binarize="none",
                           model=dataclasses.replace(SMALL, likelihood="bernoulli")), progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when CUDA is absent")
def test_cuda_without_cuda_names_the_fix(tmp_path):
    result = _run_cli("--device", "cuda", "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "--device cuda was asked for" in result.stderr and "--device cpu" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()
    assert "--device cuda" in _run_cli("--cuda", "--out", str(tmp_path / "run")).stderr


def test_resume_without_a_checkpoint_is_an_error_and_writes_nothing(tmp_path):
    result = _run_cli("--resume", "--out", str(tmp_path / "nothing"))
    assert result.returncode == 2 and "no checkpoint at" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "nothing").exists()


def test_resume_from_a_corrupt_checkpoint_is_an_error_and_overwrites_nothing(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint at all")
    result = _run_cli("--resume", "--out", str(out))
    assert result.returncode == 2 and "not a readable checkpoint" in result.stderr and "Traceback" not in result.stderr
    assert (out / "checkpoint.pt").read_bytes() == b"not a checkpoint at all"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]


def test_an_existing_run_is_not_overwritten_and_resume_keeps_its_model(mnist_root, tmp_path):
    config = small_config(mnist_root, tmp_path / "run")
    train(config, progress=False)
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    assert main(["--out", str(tmp_path / "run"), "--data-dir", str(mnist_root), "--no-progress"]) == 2
    assert main(["--resume", "--out", str(tmp_path / "run"), "--latent-dim", "3"]) == 2
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def test_config_from_args_applies_preset_and_overrides():
    args = svi.build_parser().parse_args(["--preset", "pyro-example", "--latent-dim", "10", "--lr", "0.01", "--cuda"])
    config = svi.config_from_args(args)
    assert config.model == ModelConfig(z_dim=10, hidden_dims=(400,), activation="softplus")
    assert config.lr == 0.01 and config.device == "cuda" and config.preset == "pyro-example"
    default = svi.config_from_args(svi.build_parser().parse_args([]))
    assert default.model == ModelConfig() and default.elbo == "meanfield" and default.binarize is None  # the policy's
    assert resolve_defaults(default).model == ModelConfig().resolved() and resolve_defaults(default).binarize == "dynamic"
    assert default.out.startswith("runs")
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("elbo, jit", [("meanfield", False), ("trace", True)])
def test_other_objectives_train(mnist_root, tmp_path, elbo, jit):
    result = train(small_config(mnist_root, tmp_path / "run", elbo=elbo, jit=jit), progress=False)
    assert -700 < result.history[0]["test_elbo"] < 0


@cuda_only
def test_training_on_cuda(mnist_root, tmp_path):
    result = train(small_config(mnist_root, tmp_path / "run", device="cuda"), progress=False)
    assert next(result.model.parameters()).is_cuda and result.data.train.pixels.is_cuda
    assert -700 < result.history[0]["test_elbo"] < 0
    vae, _ = load(tmp_path / "run", device="cuda")
    assert next(vae.parameters()).is_cuda


@cuda_only
def test_data_handed_in_on_the_cpu_trains_on_cuda(mnist_root, tmp_path):
    """What the notebooks do: load_splits on the CPU, then train(..., data=) with the default device."""
    from pyro_vae.data import load_splits

    config = small_config(mnist_root, tmp_path / "run", device="cuda")
    data = load_splits("mnist", data_dir=mnist_root, train_limit=config.train_limit, test_limit=config.test_limit)
    result = train(config, progress=False, data=data)
    assert result.data.train.pixels.is_cuda and result.data.test.is_cuda and not data.train.pixels.is_cuda
    assert -700 < result.history[0]["test_elbo"] < 0


def test_jit_step_compiles_once(monkeypatch):
    """make_step binds model/guide once: Pyro's JIT cache keys on id(model), so a fresh bound method per
    step would recompile every step (what made --jit 3x slower before)."""
    from pyro.infer import JitTrace_ELBO

    real_trace, traces = torch.jit.trace, []

    def counting_trace(*args, **kwargs):
        traces.append(1)
        return real_trace(*args, **kwargs)

    monkeypatch.setattr(torch.jit, "trace", counting_trace)
    vae = VAE(z_dim=4, hidden_dims=(16,))
    step = step_module.make_step(vae, JitTrace_ELBO(), torch.optim.Adam(vae.parameters(), lr=1e-3))
    x = torch.bernoulli(torch.full((8, 784), 0.3))
    losses = [step(x, torch.tensor(1.0)) for _ in range(4)]
    assert len(traces) == 1 and all(torch.isfinite(loss) for loss in losses)
    assert torch.isfinite(step(x[:3], torch.tensor(1.0)))  # the traced graph takes another batch size as it is
    assert len(traces) == 1


def test_compiled_trace_elbo_has_the_plain_gradient():
    """Pyro 1.9's JitTrace_ELBO.differentiable_loss doubles the gradient; ours must equal Trace_ELBO's."""
    vae = VAE(z_dim=4, hidden_dims=(16,))
    x = torch.bernoulli(torch.full((8, 784), 0.3))
    params = list(vae.parameters())
    model, guide = vae.model, vae.guide  # bound once: the compiled loss caches its trace on id(model)

    def loss_and_grads(elbo):
        torch.manual_seed(3)
        loss = elbo.differentiable_loss(model, guide, x, torch.tensor(1.0))
        return [loss, *torch.autograd.grad(loss, params)]

    compiled = make_elbo("trace", jit=True)
    loss_and_grads(compiled)  # compile
    for got, want in zip(loss_and_grads(compiled), loss_and_grads(make_elbo("trace"))):
        assert torch.allclose(got.detach(), want.detach(), rtol=1e-5, atol=1e-6 * float(want.detach().abs().max()))


def test_a_compile_check_counts_matching_infinities_and_nans_as_agreement_and_nothing_else():
    inf, nan = float("inf"), float("nan")
    want = torch.tensor([1.0, -inf, inf, nan, 4.0])
    assert relative_difference(want.clone(), want) == 0
    assert relative_difference(want + torch.tensor([0.0, 0, 0, 0, 0.04]), want) == pytest.approx(0.01)
    for bad in ([nan, -inf, inf, nan, 4.0], [1.0, inf, inf, nan, 4.0], [1.0, -inf, 3.0, nan, 4.0],
                [1.0, -inf, inf, 2.0, 4.0]):  # a NaN or an infinity where the other has none, an inf's sign
        assert relative_difference(torch.tensor(bad), want) == inf
    assert relative_difference(torch.tensor([-inf, nan]), torch.tensor([-inf, nan])) == 0
    assert relative_difference(None, None) == 0 and relative_difference(None, want) == inf


@register_model("test-frozen-sum")
class FrozenSumVAE(VAE):
    """A model that computes a Python number from the data: tracing freezes it at the probe batch's value."""

    @pyro_method
    def model(self, x, kl_weight=1.0):
        pyro.factor("pixel_count", x.new_tensor(float(x.sum())))
        return super().model(x, kl_weight)


def test_a_loss_that_does_not_trace_faithfully_is_caught_before_training(mnist_root, tmp_path):
    probe = torch.bernoulli(torch.full((16, 784), 0.3))
    vae = FrozenSumVAE(z_dim=4, hidden_dims=(16,))
    with pytest.raises(CompileError, match="differ on a batch of 8"):
        step_module.make_step(vae, make_elbo("trace", jit=True), torch.optim.Adam(vae.parameters()), probe=probe,
                              reference=make_elbo("trace"))
    # the default falls back to the plain loss and says why; --jit insists and fails
    notes = []
    config = small_config(mnist_root, tmp_path / "auto")
    vae = FrozenSumVAE.from_config(SMALL)
    _, compiled = step_module.build_step(vae, config, torch.optim.Adam(vae.parameters()), probe, log=notes.append)
    assert not compiled and "training with the uncompiled loss" in notes[0]
    with pytest.raises(CompileError):
        train(small_config(mnist_root, tmp_path / "insist", jit=True), model=FrozenSumVAE.from_config(SMALL),
              progress=False)
    assert not (tmp_path / "insist").exists()


def test_default_compiles_and_falls_back_where_it_cannot(mnist_root, tmp_path):
    assert train(small_config(mnist_root, tmp_path / "default"), progress=False).compiled  # meanfield
    assert train(small_config(mnist_root, tmp_path / "trace", elbo="trace"), progress=False).compiled
    assert not train(small_config(mnist_root, tmp_path / "off", jit=False), progress=False).compiled
    iwae = train(small_config(mnist_root, tmp_path / "iwae", elbo="iwae", num_particles=2), progress=False)
    assert iwae.compiled and -700 < iwae.history[0]["test_elbo"] < 0
    assert train(small_config(mnist_root, tmp_path / "dreg", elbo="iwae", gradient="dreg", num_particles=2),
                 progress=False).compiled  # two graphs, the weight hook between them


def test_jit_flags_parse_and_may_change_on_resume(mnist_root, tmp_path):
    parse = lambda *a: svi.config_from_args(svi.build_parser().parse_args(list(a)))  # noqa: E731
    assert parse().jit is None and parse("--jit").jit is True and parse("--no-jit").jit is False
    train(small_config(mnist_root, tmp_path / "run"), progress=False)
    resumed = parse("--resume", "--out", str(tmp_path / "run"), "--no-jit", "--epochs", "2")
    assert resumed.jit is False and resumed.epochs == 2


@pytest.mark.parametrize("mode_before", [False, True])
def test_cpu_training_flushes_denormals_and_restores_the_callers_mode(mnist_root, tmp_path, monkeypatch,
                                                                       mode_before):
    """Denormal floats take x86's slow path (an IWAE k = 50 step took 3x the time): training on the CPU counts them
    as 0, and afterwards the calling thread's mode is what it was (torch's worker threads: `denormals_flushed`)."""
    from inference.training import loop
    from pyro_vae.device import denormals_flushed_now

    seen = []
    inner = loop._train
    monkeypatch.setattr(loop, "_train", lambda *a, **k: (seen.append(denormals_flushed_now()), inner(*a, **k))[1])
    torch.set_flush_denormal(mode_before)
    try:
        assert denormals_flushed_now() == mode_before
        result = train(small_config(mnist_root, tmp_path / "run"), progress=False)
        assert seen == [True] and result.history
        assert denormals_flushed_now() == mode_before
    finally:
        torch.set_flush_denormal(False)
