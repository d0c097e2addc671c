"""A model of one's own from the command line (issue 39): ``--import FILE --family NAME --model-args JSON`` trains
it, ``--resume`` rebuilds it, the report, the figures and the comparison load it; without ``--import`` its checkpoint
is refused in one line that names the flag; bad ``--model-args`` are one line each and write nothing. And the
library apart from the command lines: training does not import the report, the kept import paths still work, the
commands keep every flag they had, AIS takes its settings as one dataclass."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inference import compare as compare_command
from inference import evaluate as evaluate_command
from inference import figures as figures_command
from inference import svi
from inference.estimators.ais import AISSettings, ais_log_marginal
from models import registry
from models.vae import VAE

from conftest import REPO

#: A user's own model, written to a file of its own: one latent site ``code``, observed site ``pixels``.
OWN_MODEL = '''
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from models import register_model
from models.base import LatentModel


@register_model("own-file-vae")
class OwnFileVAE(LatentModel):
    def __init__(self, x_dim: int = 784, z_dim: int = 4, hidden: int = 16):
        super().__init__()
        if z_dim > 64:
            raise ValueError(f"z_dim {z_dim} is more than this model takes (64)")
        self.x_dim, self.z_dim, self.hidden = x_dim, z_dim, hidden
        self.encoder = nn.Sequential(nn.Linear(x_dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * z_dim))
        self.decoder = nn.Sequential(nn.Linear(z_dim, hidden), nn.Tanh(), nn.Linear(hidden, x_dim))

    def init_kwargs(self):
        return {"x_dim": self.x_dim, "z_dim": self.z_dim, "hidden": self.hidden}

    def model(self, x, kl_weight=1.0):
        with pyro.plate("data", len(x)):
            with poutine.scale(scale=kl_weight):
                code = pyro.sample("code", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            pyro.sample("pixels", dist.Bernoulli(logits=self.decoder(code)).to_event(1), obs=x)

    def guide(self, x, kl_weight=1.0):
        loc, raw = self.encoder(x).chunk(2, -1)
        with pyro.plate("data", len(x)), poutine.scale(scale=kl_weight):
            pyro.sample("code", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))
'''

TINY = ["--train-limit", "256", "--test-limit", "32", "--batch-size", "64", "--device", "cpu", "--no-progress"]


@pytest.fixture
def own_model_file(tmp_path, monkeypatch) -> Path:
    """The user's file, in a folder of its own; imported afresh by each test and unregistered after it."""
    folder = tmp_path / "my_project"
    folder.mkdir()
    path = folder / "own_file_model.py"
    path.write_text(OWN_MODEL)
    monkeypatch.setattr(registry, "_BY_NAME", dict(registry._BY_NAME))
    monkeypatch.setattr(registry, "_NAME_OF", dict(registry._NAME_OF))
    monkeypatch.delitem(sys.modules, "own_file_model", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield path
    sys.modules.pop("own_file_model", None)


def run(main, argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as e:  # a flag argparse refuses
        status = e.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_error_line(err: str) -> str:
    assert err.startswith("error: ") and err.strip().count("\n") == 0 and "Traceback" not in err, err
    return err.strip()


def test_a_model_of_ones_own_goes_through_train_resume_evaluate_figures_compare(own_model_file, mnist_root,
                                                                              tmp_path, capsys):
    out = tmp_path / "run"
    own = ["--import", str(own_model_file)]
    train = [*own, "--family", "own-file-vae", "--model-args", '{"z_dim": 3, "hidden": 24}', *TINY,
             "--data-dir", str(mnist_root), "--out", str(out)]
    status, stdout, err = run(svi.main, [*train, "--epochs", "1"], capsys)
    assert status == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["family"] == "own-file-vae" and config["model"]["model_args"] == {"z_dim": 3, "hidden": 24}
    assert config["preset"] is None  # no published preset describes this model
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    assert payload["model"] == "own-file-vae" and payload["model_kwargs"] == {"x_dim": 784, "z_dim": 3, "hidden": 24}

    # --resume rebuilds it from the checkpoint (the same command line, one more epoch)
    status, _, err = run(svi.main, [*train, "--epochs", "2", "--resume"], capsys)
    assert status == 0, err
    assert [h["epoch"] for h in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [1, 2]
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["sites"]["code"]["units"] == 3

    # the report, the figures and the comparison
    status, stdout, err = run(evaluate_command.main, [str(out), *own, "--num-samples", "20", "--test-limit", "16",
                                                      "--device", "cpu", "--no-progress"], capsys)
    assert status == 0, err
    assert json.loads((out / "report" / "report.json").read_text())["log_px"]["mean"] < 0
    status, stdout, err = run(evaluate_command.main, [str(out), *own, "--num-samples", "40", "--test-limit", "16",
                                                      "--device", "cpu", "--no-progress", "--out", str(tmp_path / "r40")],
                              capsys)
    assert status == 0, err
    status, stdout, err = run(figures_command.main, [str(out), *own, "--out", str(tmp_path / "figs"), "--test-limit",
                                                     "16", "--device", "cpu"], capsys)
    assert status == 0, err
    assert (tmp_path / "figs" / "samples.png").exists() and (tmp_path / "figs" / "reconstructions.png").exists()
    status, stdout, err = run(compare_command.main, [str(out), str(tmp_path / "r40"), *own, "--json"], capsys)
    assert status == 0, err
    assert json.loads(stdout)["comparisons"][0]["difference"]["log_px"]["n"] == 16


def test_a_module_on_sys_path_is_imported_by_name(own_model_file, capsys):
    sys.path.append(str(own_model_file.parent))
    parsed = svi.build_parser().parse_args(["--import", "own_file_model", "--family", "own-file-vae"])
    from pyro_vae.cli import import_modules

    (module,) = import_modules(parsed.imports)
    assert module.__name__ == "own_file_model" and "own-file-vae" in registry.registered_models()
    config = svi.config_from_args(parsed)
    assert config.model.family == "own-file-vae" and config.model.model_args == {}


def test_a_checkpoint_of_an_unregistered_model_is_refused_naming_import(own_model_file, mnist_root, tmp_path,
                                                                        capsys):
    out = tmp_path / "run"
    status, _, err = run(svi.main, ["--import", str(own_model_file), "--family", "own-file-vae", *TINY, "--epochs", "1",
                                    "--data-dir", str(mnist_root), "--out", str(out)], capsys)
    assert status == 0, err
    before = sorted(p.name for p in out.iterdir())
    for command in ("inference.evaluate", "inference.figures"):  # a fresh process, as a user's shell runs it
        done = subprocess.run([sys.executable, "-m", command, str(out), "--device", "cpu"], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr
        line = one_error_line(done.stderr)
        assert "'own-file-vae', which is not a registered model" in line and "--import MODULE_OR_FILE" in line, line
    done = subprocess.run([sys.executable, "-m", "inference.svi", "--resume", "--out", str(out), "--epochs", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--import" in one_error_line(done.stderr), done.stderr
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written: no report/, no figures redrawn


@pytest.mark.parametrize("model_args, words", [
    ("{z_dim: 3}", "argument --model-args: expected a JSON object"),
    ("[3, 4]", "argument --model-args: expected a JSON object"),
    ('{"z_dim": NaN}', "(NaN is not a finite number)"),
    ('{"z_dim": {"deep": 1}}', "values must be null, true/false, numbers, strings or lists of them nested at most 16 deep; z_dim is not"),
    ('{"z_dim": 3, "depth": 2}', "--model-args gives OwnFileVAE arguments it does not take: depth"),
    ('{"z_dim": 2.5}', "--model-args's model argument z_dim=2.5 is not int"),
    ('{"z_dim": 65}', "--model-args do not build OwnFileVAE: ValueError: z_dim 65 is more than this model takes"),
])
def test_bad_model_args_are_one_line_and_write_nothing(own_model_file, mnist_root, tmp_path, capsys, model_args,
                                                       words):
    out = tmp_path / "run"
    status, _, err = run(svi.main, ["--import", str(own_model_file), "--family", "own-file-vae", "--model-args",
                                    model_args, *TINY, "--epochs", "1", "--data-dir", str(mnist_root), "--out",
                                    str(out)], capsys)
    assert status == 2
    assert words in one_error_line(err), err
    assert not out.exists()


@pytest.mark.parametrize("argv, words", [
    (["--family", "own-file-vae"], "--family own-file-vae is not a registered model"),
    (["--import", "no_such_module_anywhere"], "--import no_such_module_anywhere: no module named"),
    (["--import", "missing/own.py"], "--import missing/own.py: no such file"),
    (["--import", "OWN", "--family", "own-file-vae", "--latent-dim", "3"], "--latent-dim sets the vae/hierarchical"),
    (["--import", "OWN", "--family", "own-file-vae", "--preset", "burda2015-iwae"], "--preset burda2015-iwae sets"),
    (["--model-args", '{"z_dim": 3}'], "--model-args builds a registered model of your own"),
])
def test_a_family_that_cannot_be_built_is_one_line_and_writes_nothing(own_model_file, tmp_path, capsys, argv,
                                                                      words):
    out = tmp_path / "run"
    argv = [str(own_model_file) if a == "OWN" else a for a in argv]
    status, _, err = run(svi.main, [*argv, *TINY, "--epochs", "1", "--out", str(out)], capsys)
    assert status == 2
    assert words in one_error_line(err), err
    assert not out.exists()


@pytest.mark.parametrize("model_args, words", [
    ('{"z_dim": 3, "z_dim": 5}', "z_dim given twice"),
    ('{"z_dim": ' + "[" * 2000 + "]" * 2000 + "}", "nested"),
])
def test_ambiguous_or_deep_model_args_are_one_line(own_model_file, tmp_path, capsys, model_args, words):
    status, _, err = run(svi.main, ["--import", str(own_model_file), "--family", "own-file-vae", "--model-args",
                                    model_args, "--out", str(tmp_path / "run")], capsys)
    assert status == 2 and words in one_error_line(err) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("body, status, words", [
    ("import sys\nsys.exit(3)\n", 2, "exited while it was imported (SystemExit: 3)"),
    ("raise KeyboardInterrupt\n", 130, "stopped by SIGINT"),
])
def test_a_module_that_exits_or_is_interrupted_while_imported_is_one_line(tmp_path, capsys, monkeypatch, body, status,
                                                                          words):
    monkeypatch.setattr(sys, "path", list(sys.path))
    module = tmp_path / "exiting_model_file.py"
    module.write_text(body)
    got, _, err = run(svi.main, ["--import", str(module), "--out", str(tmp_path / "run")], capsys)
    assert got == status and words in one_error_line(err) and not (tmp_path / "run").exists()


def test_an_import_that_would_hide_another_module_is_refused(tmp_path, capsys):
    (tmp_path / "this.py").write_text(OWN_MODEL)  # the standard library's `this`, not imported by anything here
    folder = tmp_path / "pkg"
    folder.mkdir()
    for target, words in [(tmp_path / "this.py", "its name 'this' is another module's"),
                          (folder, "is a folder"), (tmp_path / "notes.txt", "no such file")]:
        status, _, err = run(figures_command.main, [str(tmp_path), "--import", str(target)], capsys)
        assert status == 2 and words in one_error_line(err), err
    (tmp_path / "notes.txt").write_text("")
    status, _, err = run(figures_command.main, [str(tmp_path), "--import", str(tmp_path / "notes.txt")], capsys)
    assert status == 2 and "is not a .py file" in one_error_line(err)


#: A model whose constructor takes a Literal and a fixed-length tuple; and one whose init_kwargs() a checkpoint could
#: not hold (a tensor), which must be refused before it trains.
ANNOTATED_MODELS = OWN_MODEL + '''

from typing import Literal


@register_model("own-annotated-vae")
class AnnotatedVAE(OwnFileVAE):
    def __init__(self, mode: Literal["a", "b"] = "a", widths: tuple[int, int] = (16, 8), **kwargs):
        super().__init__(hidden=widths[0], **kwargs)
        self.mode, self.widths = mode, tuple(widths)

    def init_kwargs(self):
        own = {k: v for k, v in super().init_kwargs().items() if k != "hidden"}  # hidden is widths[0]
        return {**own, "mode": self.mode, "widths": list(self.widths)}


@register_model("own-unsaveable-vae")
class UnsaveableVAE(OwnFileVAE):
    def init_kwargs(self):
        return {**super().init_kwargs(), "x_dim": torch.tensor(784)}


@register_model("own-misbuilt-vae")
class MisbuiltVAE(OwnFileVAE):
    def init_kwargs(self):
        return {**super().init_kwargs(), "z_dim": 100 * self.z_dim}  # its constructor refuses what it says
'''


def test_annotated_arguments_are_checked_and_an_unsaveable_model_is_refused_before_training(own_model_file, mnist_root,
                                                                                            tmp_path, capsys):
    own_model_file.write_text(ANNOTATED_MODELS)
    base = ["--import", str(own_model_file), *TINY, "--epochs", "1", "--data-dir", str(mnist_root)]
    good = [*base, "--family", "own-annotated-vae", "--model-args", '{"mode": "b", "widths": [24, 8]}']
    status, _, err = run(svi.main, [*good, "--out", str(tmp_path / "good")], capsys)
    assert status == 0, err
    status, _, err = run(evaluate_command.main, [str(tmp_path / "good"), "--import", str(own_model_file),
                                                 "--num-samples", "10", "--test-limit", "8", "--device", "cpu",
                                                 "--no-progress"], capsys)
    assert status == 0, err  # what init_kwargs() gave loads back
    for args, words in [('{"mode": "c"}', "mode='c' is not Literal"), ('{"widths": [1, 2, 3]}', "is not tuple[int, int]")]:
        status, _, err = run(svi.main, [*base, "--family", "own-annotated-vae", "--model-args", args, "--out",
                                        str(tmp_path / "bad")], capsys)
        assert status == 2 and words in one_error_line(err), err
    for family in ("own-unsaveable-vae", "own-misbuilt-vae"):
        status, _, err = run(svi.main, [*base, "--family", family, "--out", str(tmp_path / "bad")], capsys)
        assert status == 2 and "could not be rebuilt" in one_error_line(err), err
    assert not (tmp_path / "bad").exists()


def test_a_likelihood_that_cannot_take_the_served_pixels_is_one_line_before_anything_is_written(own_model_file,
                                                                                                mnist_root, tmp_path,
                                                                                                capsys):
    out = tmp_path / "run"
    status, _, err = run(svi.main, ["--import", str(own_model_file), "--family", "own-file-vae", "--binarize", "none",
                                    *TINY, "--epochs", "1", "--data-dir", str(mnist_root), "--out", str(out)], capsys)
    assert status == 2, err
    line = one_error_line(err)
    assert "cannot score the images served with --binarize none" in line and "site 'pixels'" in line, line
    assert "Bernoulli" in line and not out.exists()


def test_a_module_that_raises_while_imported_is_one_line(tmp_path, capsys):
    broken = tmp_path / "broken_model_file.py"
    broken.write_text("raise RuntimeError('this module needs a GPU')\n")
    status, _, err = run(svi.main, ["--import", str(broken), "--out", str(tmp_path / "run")], capsys)
    assert status == 2
    assert one_error_line(err).startswith(f"error: --import {broken} failed: RuntimeError: this module needs a GPU")
    assert "broken_model_file" not in sys.modules and not (tmp_path / "run").exists()


def test_training_does_not_import_the_report():
    code = ("import sys, inference.svi, inference.training; "
            "print(sorted(m for m in sys.modules if m.startswith(('inference.reports.report', 'inference.evaluate'))))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_import_paths_of_readme_docs_and_notebooks_still_work():
    from inference.ais import ais_log_marginal as kept_ais, bdmc
    from inference.estimators import ais, importance, rate_distortion
    from inference.evaluate import citable_sentence, evaluate
    from inference.figures import draw_run_figures, interpolate, interpolation_pairs, latent_codes, manifold
    from inference.importance import estimate_log_marginal
    from inference.rate_distortion import rate_distortion as kept_rate_distortion
    from inference.reports import figures, report
    from inference.svi import train
    from inference.training import loop

    assert kept_ais is ais.ais_log_marginal and bdmc is ais.bdmc
    assert estimate_log_marginal is importance.estimate_log_marginal
    assert kept_rate_distortion is rate_distortion.rate_distortion
    assert evaluate is report.evaluate and citable_sentence is report.citable_sentence and train is loop.train
    assert (draw_run_figures, interpolate, interpolation_pairs, latent_codes, manifold) == (
        figures.draw_run_figures, figures.interpolate, figures.interpolation_pairs, figures.latent_codes,
        figures.manifold)


#: Every flag each command had before the library moved apart from them (issue 39), which scripts depend on.
FLAGS_BEFORE = {
    svi: "--activation --arch --batch-size --binarize --bit-depth --channels --channels-first --cuda --cuda-graph "
         "--data-dir --dataset --dequantize --device --elbo --epochs --eval-samples --family --flow-steps --gradient "
         "--guide --help --hidden-dims --image-size --init --jit --kl-warmup --kl-weight --latent-dim --latent-dims "
         "--layer-hidden-dims --likelihood --lr --memory-budget --mixture-components --no-cuda-graph --no-jit "
         "--no-progress --num-particles --obs-scale --out --preset --prior --pseudo-inputs --resume --schedule --seed "
         "--split-seed --test-fraction --test-limit --test-seed --train-limit --workers",
    evaluate_command: "--ais-chains --ais-limit --ais-steps --ais-tuning --batch-size --bdmc --chunk-size --data-dir "
                      "--device --gap-limit --gaps --help --no-progress --num-samples --out --seed --test-limit",
    figures_command: "--data-dir --device --help --out --seed --test-limit",
    compare_command: "--help --json --out",
}


@pytest.mark.parametrize("command", list(FLAGS_BEFORE), ids=lambda m: m.__name__)
def test_every_command_keeps_its_flags_and_takes_import(command, capsys):
    with pytest.raises(SystemExit) as done:
        command.main(["--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    for flag in [*FLAGS_BEFORE[command].split(), "--import"]:
        assert f"{flag} " in shown or f"{flag}\n" in shown or f"{flag}," in shown or f"{flag}=" in shown, flag


def test_ais_takes_its_settings_as_one_dataclass_and_the_old_keywords_alike():
    torch.manual_seed(0)
    vae = VAE(z_dim=2, hidden_dims=(8,))
    x = torch.bernoulli(torch.full((3, 784), 0.3))
    settings = AISSettings(num_chains=2, num_steps=3, leapfrog_steps=2, compiled=False)
    by_settings = ais_log_marginal(vae.model, vae.guide, x, settings, seed=4)
    by_keywords = ais_log_marginal(vae.model, vae.guide, x, num_chains=2, num_steps=3, leapfrog_steps=2,
                                   compiled=False, seed=4)
    assert torch.equal(by_settings.log_weights, by_keywords.log_weights)
    with pytest.raises(TypeError, match="AISSettings"):
        ais_log_marginal(vae.model, vae.guide, x, 2)  # the old positional num_chains: refused, not misread
    with pytest.raises(TypeError, match="unknown AIS setting"):
        ais_log_marginal(vae.model, vae.guide, x, num_chain=2)
