"""Issue 38: one defaults policy for Python and the command line; every family learns from its defaults; a latent
site with no active unit is named in training, at the top of report.md and in report.json's collapsed_sites."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from inference import svi
from inference.estimators.active_units import collapse_warning, collapsed_sites
from inference.evaluate import evaluate
from models import build_from_config
from pyro_vae.config import (PRESETS, ModelConfig, TrainConfig, default_activation, defaults_line,
                             resolve_defaults)
from user_models import BlindDecoderVAE

#: Flags, and the explicit fields Python passes for the same run: (TrainConfig fields, ModelConfig fields, preset).
TABLE = [
    ([], {}, {}, None),
    (["--likelihood", "discretized-logistic", "--binarize", "none"], {"binarize": "none"},
     {"likelihood": "discretized-logistic"}, None),
    (["--binarize", "none"], {"binarize": "none"}, {}, None),
    (["--mixture-components", "3"], {}, {"mixture_components": 3}, None),
    (["--likelihood", "beta-binomial"], {}, {"likelihood": "beta-binomial"}, None),
    (["--likelihood", "gaussian"], {}, {"likelihood": "gaussian"}, None),
    (["--dequantize", "uniform", "--binarize", "none"], {"dequantize": "uniform", "binarize": "none"}, {}, None),
    (["--prior", "vamp"], {}, {"prior": "vamp"}, None),
    (["--activation", "relu", "--prior", "vamp"], {}, {"activation": "relu", "prior": "vamp"}, None),
    (["--likelihood", "discretized-logistic", "--activation", "tanh"], {},
     {"likelihood": "discretized-logistic", "activation": "tanh"}, None),
    (["--init", "as-built"], {"init": "as-built"}, {}, None),
    (["--likelihood", "continuous-bernoulli", "--init", "burda2015"], {"init": "burda2015"},
     {"likelihood": "continuous-bernoulli"}, None),
    (["--preset", "burda2015-2layer"], {"elbo": "trace"}, {}, "burda2015-2layer"),
    (["--preset", "burda2015-2layer", "--prior", "vamp"], {"elbo": "trace"}, {"prior": "vamp"}, "burda2015-2layer"),
    (["--preset", "burda2015-2layer", "--binarize", "none"], {"elbo": "trace", "binarize": "none"}, {},
     "burda2015-2layer"),
]


@pytest.mark.parametrize("flags,train_fields,model_fields,preset", TABLE, ids=[" ".join(t[0]) or "none" for t in TABLE])
def test_the_command_line_and_python_resolve_the_same_config(flags, train_fields, model_fields, preset, tmp_path):
    cli = svi.config_from_args(svi.build_parser().parse_args([*flags, "--out", str(tmp_path)]))
    base = PRESETS[preset].model if preset else ModelConfig()
    python = TrainConfig(model=dataclasses.replace(base, **model_fields), preset=preset or "burda2015",
                         out=str(tmp_path), **train_fields)
    assert cli == python  # the same explicit fields: the command line only maps flags to them
    assert resolve_defaults(cli) == resolve_defaults(python)  # so the one policy makes the same run of both
    run = resolve_defaults(cli)
    assert run.model.activation is not None and run.binarize is not None and run.init is not None


def test_an_explicit_choice_always_wins_and_defaults_are_recorded_and_said():
    chosen = resolve_defaults(TrainConfig(model=ModelConfig(likelihood="discretized-logistic", activation="tanh"),
                                          binarize="none", init="burda2015"))
    assert (chosen.model.activation, chosen.init) == ("tanh", "burda2015")
    assert "activation" not in chosen.defaults and "init" not in chosen.defaults
    levels = resolve_defaults(TrainConfig(model=ModelConfig(likelihood="discretized-logistic"), binarize="none"))
    assert levels.model.activation == "relu" == default_activation("discretized-logistic", "standard")[0]
    assert "under the discretized-logistic likelihood" in levels.defaults["activation"]
    line = defaults_line(levels)
    assert line.startswith("defaults: ") and "activation relu" in line and "--activation" in line
    assert resolve_defaults(levels) == levels  # idempotent: a resolved config comes back equal
    explicit = resolve_defaults(TrainConfig(model=ModelConfig(likelihood="bernoulli", activation="tanh",
                                                              mixture_components=10), binarize="dynamic",
                                            init="as-built"))
    assert explicit.defaults == {} and defaults_line(explicit) is None


def test_python_train_uses_the_policy_and_records_it(tmp_path, mnist_root, capsys):
    config = TrainConfig(model=ModelConfig(likelihood="discretized-logistic", hidden_dims=(32,), z_dim=4),
                         binarize="none", epochs=1, train_limit=200, test_limit=50, data_dir=str(mnist_root),
                         out=str(tmp_path / "run"))
    result = svi.train(config, progress=False)
    assert result.config.model.activation == "relu"  # tanh was the trap this policy closes
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["activation"] == "relu" and "activation" in saved["defaults"]
    out = capsys.readouterr().out
    assert out.count("defaults: ") == 1 and "activation relu (under the discretized-logistic likelihood)" in out


def test_old_configs_load_as_they_trained():
    old = TrainConfig().to_dict()
    for key in ("binarize", "init", "defaults"):
        old.pop(key)
    for key in ("activation", "likelihood", "mixture_components"):
        old["model"].pop(key)
    loaded = TrainConfig.from_dict(old)
    assert (loaded.binarize, loaded.init, loaded.model.activation, loaded.model.likelihood,
            loaded.model.mixture_components) == ("dynamic", "as-built", "tanh", "bernoulli", 10)


def test_the_burda2015_start_puts_the_decoder_at_the_mean_pixel():
    torch.manual_seed(0)
    model = build_from_config(PRESETS["burda2015-2layer"].model)
    mean = torch.rand(784) * 0.9 + 0.05
    assert model.initialise_burda2015(mean)
    z1 = torch.zeros(3, 100)
    torch.testing.assert_close(model.observation(z1).mean, mean.expand(3, -1), rtol=0, atol=1e-6)
    for net in (*model.encoders, *model.conditionals, model.decoder):
        linear = [m for m in net if isinstance(m, torch.nn.Linear)]
        assert all((m.bias == 0).all() for m in linear[:-1])
        bound = (6 / sum(linear[0].weight.shape)) ** 0.5  # Glorot-uniform
        assert linear[0].weight.abs().max() <= bound and linear[0].weight.abs().max() > 0.9 * bound


def test_the_report_and_training_name_a_collapsed_site(tmp_path, mnist_root, capsys):
    out = tmp_path / "blind"
    config = TrainConfig(epochs=2, train_limit=2000, test_limit=200, data_dir=str(mnist_root), out=str(out),
                         elbo="trace")
    result = svi.train(config, model=BlindDecoderVAE(), progress=False)
    printed = capsys.readouterr().out
    assert result.history[-1]["sites"]["z"]["active_units"] == 0
    assert printed.count("warning: latent site z has 0 of 4 active units after epoch 1: the model ignores it "
                         "(posterior collapse)") == 1  # once, not every epoch
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["sites"]["z"]["units"] for line in lines] == [4, 4]
    report = evaluate(out, num_samples=20, test_limit=50, ais_steps=0, progress=False)
    assert report["collapsed_sites"] == ["z"] == json.loads((out / "report" / "report.json").read_text())["collapsed_sites"]
    markdown = (out / "report" / "report.md").read_text()
    warning = collapse_warning("z", 4, "on these 50 images")
    assert warning in markdown and markdown.index(warning) < markdown.index("|")  # before the first table


def test_the_warning_waits_for_the_end_of_warm_up(tmp_path, mnist_root, capsys):
    config = TrainConfig(epochs=2, train_limit=1000, test_limit=100, data_dir=str(mnist_root), out=str(tmp_path / "w"),
                         elbo="trace", kl_warmup=2)
    svi.train(config, model=BlindDecoderVAE(), progress=False)
    printed = capsys.readouterr().out
    assert "after epoch 1" not in printed and "warning: latent site z has 0 of 4 active units after epoch 2" in printed


def test_collapsed_sites_lists_sites_with_no_active_unit():
    sites = {"z1": {"active_units": 3, "units": 10}, "z2": {"active_units": 0, "units": 5}, "z3": {"active_units": 0}}
    assert collapsed_sites(sites) == ["z2", "z3"]
    assert collapsed_sites({}) == []


@pytest.mark.slow
def test_the_default_vae_after_two_full_epochs_is_not_called_collapsed(tmp_path, mnist_root, capsys):
    out = tmp_path / "default"
    assert svi.main(["--epochs", "2", "--test-limit", "500", "--data-dir", str(mnist_root), "--out", str(out),
                     "--no-progress"]) == 0
    assert "warning: latent site" not in capsys.readouterr().out
    report = evaluate(out, num_samples=20, test_limit=100, ais_steps=0, progress=False)
    assert report["collapsed_sites"] == []
    assert "warning" not in (out / "report" / "report.md").read_text()


#: Each family's default command (less the run folder), trained one epoch on the full training set.
FAMILY_COMMANDS = {
    "vae": [],
    "two layers": ["--preset", "burda2015-2layer"],
    "vamp, one layer": ["--prior", "vamp"],
    "vamp, two layers": ["--preset", "burda2015-2layer", "--prior", "vamp"],
    "8-bit levels": ["--binarize", "none"],
}


@pytest.mark.slow
@pytest.mark.parametrize("flags", FAMILY_COMMANDS.values(), ids=FAMILY_COMMANDS.keys())
def test_each_family_learns_every_latent_site_from_its_defaults(flags, tmp_path, mnist_root, capsys):
    out = tmp_path / "run"
    assert svi.main([*flags, "--epochs", "1", "--test-limit", "1000", "--data-dir", str(mnist_root), "--out", str(out),
                     "--no-progress"]) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["sites"] and all(site["active_units"] > 0 for site in record["sites"].values()), record["sites"]
    assert "warning: latent site" not in capsys.readouterr().out


def test_a_resume_from_python_keeps_the_start_and_the_record_of_the_run(tmp_path, mnist_root):
    """A run started as-built (as every run before issue 38) resumes from a config that leaves init to the policy
    (whose default is now burda2015): the start and the defaults record are the checkpoint's, not refused."""
    out = tmp_path / "old"
    settings = dict(model=ModelConfig(z_dim=4, hidden_dims=(32,)), train_limit=256, test_limit=64,
                    data_dir=str(mnist_root), out=str(out), batch_size=64)
    first = svi.train(TrainConfig(epochs=1, init="as-built", **settings), progress=False)
    result = svi.train(TrainConfig(epochs=2, **settings), resume=True, progress=False)
    assert len(result.history) == 2 and result.config.init == "as-built"
    assert result.config.defaults == first.config.defaults and "init" not in result.config.defaults
    assert json.loads((out / "config.json").read_text())["init"] == "as-built"
