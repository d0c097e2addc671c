"""The learning-rate schedule: Burda et al. (2015)'s epoch boundaries and rates, a real run that follows them,
exact resume across a boundary, and old checkpoints that predate the setting."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from inference.training import step as step_module
from inference import svi
from inference.svi import train
from pyro_vae import checkpoint
from pyro_vae.config import ModelConfig, TrainConfig
from pyro_vae.errors import CheckpointError, ConfigError
from pyro_vae.schedule import SCHEDULES, adam_settings, burda2015_stage, learning_rate, total_epochs

#: lr_i = 0.001 * 10^(-i/7), written out (not computed by the formula under test).
BURDA_RATES = (0.001, 0.0007196856730011521, 0.0005179474679231212, 0.00037275937203149406,
               0.0002682695795279726, 0.000193069772888325, 0.0001389495494373138, 0.0001)
#: 0-based epoch -> stage: the first and last epoch of every stage.
BOUNDARIES = {0: 0, 1: 1, 3: 1, 4: 2, 12: 2, 13: 3, 39: 3, 40: 4, 120: 4, 121: 5, 363: 5, 364: 6, 1092: 6,
              1093: 7, 3279: 7}

TINY = ModelConfig(z_dim=4, hidden_dims=(16,))


def tiny_config(mnist_root: Path, out: Path, **overrides) -> TrainConfig:
    """3 steps of 64 images per epoch, a small net: seconds per run."""
    settings = dict(model=TINY, preset=None, data_dir=str(mnist_root), train_limit=192, test_limit=32, epochs=5,
                    batch_size=64, device="cpu", out=str(out), schedule="burda2015")
    settings.update(overrides)
    return TrainConfig(**settings)


def test_burda2015_epoch_boundaries_and_rates():
    for epoch, stage in BOUNDARIES.items():
        assert burda2015_stage(epoch) == stage, epoch
        assert learning_rate("burda2015", 1e-3, epoch) == pytest.approx(BURDA_RATES[stage], rel=1e-12, abs=1e-12)
    assert total_epochs("burda2015") == 3280 == sum(3**i for i in range(8))
    lengths = [0] * 8
    for epoch in range(3280):
        lengths[burda2015_stage(epoch)] += 1
    assert lengths == [3**i for i in range(8)]
    # past the protocol's end the last rate stays; the base scales every rate
    assert learning_rate("burda2015", 1e-3, 3280) == learning_rate("burda2015", 1e-3, 10**6) == pytest.approx(1e-4, rel=1e-12)
    assert learning_rate("burda2015", 0.02, 13) == pytest.approx(20 * BURDA_RATES[3], rel=1e-12)
    assert all(learning_rate("constant", 0.02, e) == 0.02 for e in (0, 1, 4, 3279, 5000))
    assert total_epochs("constant") is None
    assert adam_settings("burda2015") == {"betas": (0.9, 0.999), "eps": 1e-4} and adam_settings("constant") == {}
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        learning_rate("linear", 1e-3, 0)
    with pytest.raises(ValueError, match="epoch must be at least 0"):
        burda2015_stage(-1)


def _recording_optimiser_settings(monkeypatch) -> list[tuple[float, float, tuple]]:
    """Patch the step so that each call records (lr, eps, betas) of every parameter group it steps with."""
    real_make_step, seen = step_module.make_step, []

    def make_step(model, elbo, optim, *args, **kwargs):
        real = real_make_step(model, elbo, optim, *args, **kwargs)

        def step(x, kl_weight):
            seen.append({(g["lr"], g["eps"], tuple(g["betas"])) for g in optim.param_groups})
            return real(x, kl_weight)
        return step

    monkeypatch.setattr(step_module, "make_step", make_step)
    return seen


def test_a_burda2015_run_steps_at_each_epochs_rate_with_adams_eps_1e_4(mnist_root, tmp_path, monkeypatch):
    seen = _recording_optimiser_settings(monkeypatch)
    result = train(tiny_config(mnist_root, tmp_path / "run"), progress=False)  # epochs 0..4: stages 0, 1, 1, 1, 2
    assert len(seen) == 5 * 3 and len(result.history) == 5
    for call, groups in enumerate(seen):
        (lr, eps, betas), = groups
        assert lr == pytest.approx(BURDA_RATES[[0, 1, 1, 1, 2][call // 3]], rel=1e-12), call
        assert eps == 1e-4 and betas == (0.9, 0.999)
    saved = checkpoint.read(tmp_path / "run")
    group, = saved["optim_state"]["param_groups"]
    assert group["eps"] == 1e-4 and group["lr"] == pytest.approx(BURDA_RATES[2], rel=1e-12)
    assert saved["config"]["schedule"] == "burda2015"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["schedule"] == "burda2015"


def test_constant_keeps_the_rate_and_torchs_adam_defaults(mnist_root, tmp_path, monkeypatch):
    seen = _recording_optimiser_settings(monkeypatch)
    train(tiny_config(mnist_root, tmp_path / "run", schedule="constant", epochs=2, lr=3e-3), progress=False)
    assert seen == [{(3e-3, 1e-8, (0.9, 0.999))}] * 6


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _signal_at_call(monkeypatch, call: int) -> None:
    """Send this process SIGTERM during step number ``call`` (1-based): training checkpoints after that step."""
    real_make_step, calls = step_module.make_step, []

    def make_step(*args, **kwargs):
        real = real_make_step(*args, **kwargs)

        def step(x, kl_weight):
            calls.append(1)
            if len(calls) == call:
                os.kill(os.getpid(), signal.SIGTERM)
            return real(x, kl_weight)
        return step

    monkeypatch.setattr(step_module, "make_step", make_step)


@pytest.mark.parametrize("stop", ["epoch-boundary", "mid-epoch"])
def test_resume_across_a_schedule_boundary_equals_training_straight(mnist_root, tmp_path, monkeypatch, stop):
    straight = train(tiny_config(mnist_root, tmp_path / "a"), progress=False)
    if stop == "epoch-boundary":  # stop after epoch 4 of 5: the resumed epoch starts stage 2
        train(tiny_config(mnist_root, tmp_path / "b", epochs=4), progress=False)
    else:  # stop after step 2 of 3 in epoch 4 (stage 1); the rest of it, then epoch 5 at stage 2
        with monkeypatch.context() as patch:
            _signal_at_call(patch, 11)
            stopped = train(tiny_config(mnist_root, tmp_path / "b"), progress=False)
        assert stopped.interrupted and stopped.position == (3, 2)
    resumed = train(tiny_config(mnist_root, tmp_path / "b"), resume=True, progress=False)
    a, b = _params(straight.model), _params(resumed.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda hs: [{k: v for k, v in h.items() if k != "seconds"} for h in hs]  # noqa: E731
    assert strip(straight.history) == strip(resumed.history)
    groups = [checkpoint.read(tmp_path / run)["optim_state"]["param_groups"] for run in ("a", "b")]
    assert groups[0] == groups[1]


def test_the_flag_parses_sets_the_protocols_epochs_and_is_part_of_the_run(mnist_root, tmp_path):
    parse = lambda *a: svi.config_from_args(svi.build_parser().parse_args(list(a)))  # noqa: E731
    default = parse()
    assert default.schedule == "constant" and default.epochs == 10 and default.lr == 1e-3
    burda = parse("--schedule", "burda2015")
    assert burda.schedule == "burda2015" and burda.epochs == 3280 and burda.lr == 1e-3
    assert burda.batch_size == default.batch_size  # the paper's 20 is the user's to choose
    assert parse("--schedule", "burda2015", "--epochs", "3", "--lr", "0.002").epochs == 3
    assert TrainConfig.from_dict(json.loads(json.dumps(burda.to_dict()))) == burda
    assert set(SCHEDULES) == {"constant", "burda2015"}
    with pytest.raises(ConfigError, match="--schedule must be one of constant, burda2015, got 'linear'"):
        TrainConfig(schedule="linear").validated()
    train(tiny_config(mnist_root, tmp_path / "run", schedule="constant", epochs=1), progress=False)
    with pytest.raises(CheckpointError, match=r"--schedule burda2015 \(the run's: constant\)"):
        parse("--resume", "--out", str(tmp_path / "run"), "--schedule", "burda2015")
    config = checkpoint.config_of(checkpoint.read(tmp_path / "run"))
    crafted = {"config": {**config.to_dict(), "schedule": "warp"}}
    with pytest.raises(CheckpointError, match="config is damaged.*--schedule must be one of"):
        checkpoint.config_of(crafted)


def test_a_checkpoint_from_before_the_schedule_resumes_as_constant(mnist_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    straight = train(tiny_config(mnist_root, tmp_path / "straight", schedule="constant", epochs=2), progress=False)
    train(tiny_config(mnist_root, out, schedule="constant", epochs=1), progress=False)
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    del payload["config"]["schedule"]  # as a checkpoint written before the field existed
    torch.save(payload, out / "checkpoint.pt")
    config = svi.config_from_args(svi.build_parser().parse_args(["--resume", "--out", str(out), "--epochs", "2"]))
    assert config.schedule == "constant"
    seen = _recording_optimiser_settings(monkeypatch)
    resumed = train(config, resume=True, progress=False)
    assert seen == [{(1e-3, 1e-8, (0.9, 0.999))}] * 3
    a, b = _params(straight.model), _params(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "config.json").read_text())["schedule"] == "constant"
