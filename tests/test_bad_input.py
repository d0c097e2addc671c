"""Bad input, hostile checkpoints and interruptions: one ``error:`` line, exit 2, nothing already written changed.

Each case runs a command line (``main(argv)`` of ``inference.svi`` or
``inference.evaluate``, as ``python -m`` does) and checks the exit status, that
stderr is one line starting ``error:`` with no traceback, the words that name
the problem, and that every file in the run folder hashes as before.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inference import evaluate as evaluate_module
from inference import svi
from inference.training import loop
from models import VAE, LatentModel, register_model
from models.registry import check_init_kwargs, model_class
from pyro_vae import checkpoint
from pyro_vae.config import ModelConfig, TrainConfig
from pyro_vae.errors import CheckpointError, ConfigError

from conftest import MNIST_FILES, REPO

TINY = ["--epochs", "1", "--train-limit", "256", "--test-limit", "32", "--latent-dim", "4", "--hidden-dims", "16",
        "--batch-size", "64", "--device", "cpu", "--no-progress"]


def hashes(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` -> its sha256 (empty when the folder does not exist)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run(main, argv: list[str], capsys) -> tuple[int, str]:
    """``main(argv)`` as the command line runs it: (exit status, stderr)."""
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's own refusals
        status = e.code
    return status, capsys.readouterr().err


def assert_refused(status: int, stderr: str, *words: str) -> None:
    assert status == 2, stderr
    assert stderr.startswith("error: ") and stderr.strip().count("\n") == 0, stderr
    assert "Traceback" not in stderr
    for word in words:
        assert word in stderr, (word, stderr)


@pytest.fixture(scope="module")
def trained(mnist_root, tmp_path_factory) -> Path:
    """A finished one-epoch run; tests copy it rather than change it."""
    out = tmp_path_factory.mktemp("bad-input") / "run"
    assert svi.main([*TINY, "--data-dir", str(mnist_root), "--out", str(out)]) == 0
    return out


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def rewrite_checkpoint(folder: Path, change) -> None:
    """Apply ``change(payload)`` to ``folder/checkpoint.pt`` (as an attacker or a damaged disk would)."""
    payload = torch.load(folder / "checkpoint.pt", weights_only=True)
    change(payload)
    torch.save(payload, folder / "checkpoint.pt")


# --- training flags -------------------------------------------------------------------

FILE = "a-file"  # placeholder: a path under tmp_path that is a regular file

TRAIN_CASES = {
    "lr zero": (["--lr", "0"], "--lr must be a positive finite number"),
    "lr negative": (["--lr", "-0.001"], "--lr must be a positive finite number"),
    "lr nan": (["--lr", "nan"], "--lr must be a positive finite number, got nan"),
    "obs-scale zero": (["--likelihood", "gaussian", "--obs-scale", "0"], "--obs-scale must be a positive"),
    "obs-scale negative": (["--likelihood", "gaussian", "--obs-scale", "-1"], "--obs-scale must be a positive"),
    "obs-scale unused": (["--obs-scale", "0.5"], "the 'bernoulli' likelihood does not use it"),
    "obs-scale unused even at 1": (["--likelihood", "continuous-bernoulli", "--obs-scale", "1"], "does not use it"),
    "kl-weight negative": (["--kl-weight", "-1"], "--kl-weight must be finite and at least 0"),
    "kl-weight inf": (["--kl-weight", "inf"], "--kl-weight must be finite"),
    "kl-weight nan": (["--kl-weight", "nan"], "--kl-weight must be finite"),
    "kl-warmup negative": (["--kl-warmup", "-1"], "--kl-warmup must be a finite number of epochs"),
    "epochs zero": (["--epochs", "0"], "--epochs: expected a positive integer"),
    "lr not a number": (["--lr", "fast"], "argument --lr"),
    "train-limit above the split": (["--train-limit", "70000"], "--train-limit 70000", "60000"),
    "test-limit above the split": (["--test-limit", "20000"], "--test-limit 20000", "10000"),
    "out is a file": (["--out", FILE], "is a file, not a folder"),
    "out under a file": (["--out", FILE + "/run"], "cannot be created", "is a file"),
    "seed negative": (["--seed", "-1"], "--seed must be an integer from 0 to 2**32 - 1"),
    "schedule unknown": (["--schedule", "linear"], "argument --schedule: invalid choice: 'linear'", "burda2015"),
    "cuda-graph on the cpu": (["--cuda-graph"], "--cuda-graph captures the training step", "this run is on cpu"),
}


@pytest.mark.parametrize("argv, words", [(c[0], c[1:]) for c in TRAIN_CASES.values()], ids=TRAIN_CASES.keys())
def test_training_flags_are_refused_in_one_line_before_anything_is_written(mnist_root, tmp_path, capsys, argv, words):
    (tmp_path / FILE).write_text("keep me")
    argv = [str(tmp_path / a) if a.startswith(FILE) else a for a in argv]
    out = ["--out", str(tmp_path / "run")] if "--out" not in argv else []
    before = hashes(tmp_path)
    status, stderr = run(svi.main, [*TINY, "--data-dir", str(mnist_root), *out, *argv], capsys)
    assert_refused(status, stderr, *words)
    assert hashes(tmp_path) == before and not (tmp_path / "run").exists()


def test_an_unwritable_out_is_found_before_data_loading(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    # no data at --data-dir: if data were loaded first, the error would be about missing MNIST files
    status, stderr = run(svi.main, [*TINY, "--data-dir", str(tmp_path / "no-data"), "--out", str(tmp_path / "file" / "x")],
                         capsys)
    assert_refused(status, stderr, "--out", "cannot be created")


# --- data files -----------------------------------------------------------------------

def _damage(path: Path, how: str, good: Path) -> None:
    if how == "truncated":
        path.write_bytes(good.read_bytes()[:5000])
    elif how == "garbage":
        path.write_bytes(os.urandom(4096))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "not a file":
        path.mkdir()


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty", "not a file"])
@pytest.mark.parametrize("split", ["train", "t10k"])
def test_damaged_data_files_are_named_as_unreadable(mnist_root, tmp_path, capsys, how, split):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    bad = f"{split}-images-idx3-ubyte"
    for name in MNIST_FILES:
        if name != bad:
            (raw / name).symlink_to(mnist_root / "MNIST" / "raw" / name)
    _damage(raw / bad, how, mnist_root / "MNIST" / "raw" / bad)
    status, stderr = run(svi.main, [*TINY, "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run")], capsys)
    assert_refused(status, stderr, "is unreadable", bad)
    assert not (tmp_path / "run").exists()


# --- resume ---------------------------------------------------------------------------

def test_the_same_command_line_with_resume_is_accepted(mnist_root, tmp_path, capsys):
    argv = [*TINY, "--data-dir", str(mnist_root), "--out", str(tmp_path / "run"), "--seed", "3"]
    assert svi.main(argv) == 0
    assert run(svi.main, [*argv, "--resume"], capsys)[0] == 0  # nothing to do: already 1 epoch
    argv[argv.index("--epochs") + 1] = "2"
    assert run(svi.main, [*argv, "--resume"], capsys)[0] == 0
    assert checkpoint.read(tmp_path / "run")["epoch"] == 2


def test_resume_names_each_changed_flag_with_both_values(run_copy, capsys):
    before = hashes(run_copy)
    status, stderr = run(svi.main, [*TINY, "--out", str(run_copy), "--resume", "--seed", "5", "--lr", "0.01",
                                    "--hidden-dims", "16,8"], capsys)
    assert_refused(status, stderr, "--seed 5 (the run's: 0)", "--lr 0.01 (the run's: 0.001)",
                   "--hidden-dims 16,8 (the run's: 16)")
    assert hashes(run_copy) == before


def test_resume_names_a_nan_parameter(run_copy, capsys):
    def poison(payload):
        payload["model_state"]["decoder.0.weight"][0, 0] = float("nan")

    rewrite_checkpoint(run_copy, poison)
    before = hashes(run_copy)
    status, stderr = run(svi.main, ["--out", str(run_copy), "--resume", "--epochs", "2", "--no-progress"], capsys)
    assert_refused(status, stderr, "decoder.0.weight", "NaN or infinite")
    assert hashes(run_copy) == before


# --- evaluate -------------------------------------------------------------------------

EVALUATE_CASES = {
    "batch-size 0": (["--batch-size", "0"], "--batch-size: expected a positive integer"),
    "chunk-size 0": (["--chunk-size", "0"], "--chunk-size: expected a positive integer"),
    "num-samples 0": (["--num-samples", "0"], "--num-samples: expected a positive integer"),
    "test-limit 0": (["--test-limit", "0"], "--test-limit: expected a positive integer"),
    "test-limit -1": (["--test-limit", "-1"], "--test-limit: expected a positive integer"),
    "gap-limit 0": (["--gaps", "--gap-limit", "0"], "--gap-limit: expected a positive integer"),
    "test-limit above the split": (["--test-limit", "20000"], "--test-limit 20000", "10000"),
    "out under a file": (["--out", "config.json/report"], "cannot be created"),
    "ais-steps -1": (["--ais-steps", "-1"], "--ais-steps: expected a non-negative integer"),
    "ais-chains 0": (["--ais-steps", "5", "--ais-chains", "0"], "--ais-chains: expected a positive integer"),
    "ais-limit 0": (["--ais-steps", "5", "--ais-limit", "0"], "--ais-limit: expected a positive integer"),
    "bdmc without ais-steps": (["--bdmc", "5"], "--bdmc needs --ais-steps"),
}


@pytest.mark.parametrize("argv, words", [(c[0], c[1:]) for c in EVALUATE_CASES.values()], ids=EVALUATE_CASES.keys())
def test_evaluate_flags_are_refused_in_one_line(run_copy, capsys, argv, words):
    argv = [str(run_copy / a) if a.startswith("config.json") else a for a in argv]
    before = hashes(run_copy)
    status, stderr = run(evaluate_module.main, [str(run_copy), "--num-samples", "5", "--no-progress", "--device", "cpu",
                                                *argv], capsys)
    assert_refused(status, stderr, *words)
    assert hashes(run_copy) == before


def test_evaluate_refuses_a_model_whose_pixels_do_not_match_the_data(run_copy, capsys):
    config = checkpoint.config_of(checkpoint.read(run_copy))
    (run_copy / "checkpoint.pt").unlink()
    checkpoint.save(run_copy / "checkpoint.pt", VAE(x_dim=100, z_dim=4, hidden_dims=(16,)), config)
    before = hashes(run_copy)
    status, stderr = run(evaluate_module.main, [str(run_copy), "--num-samples", "5", "--no-progress"], capsys)
    assert_refused(status, stderr, "takes 100 pixels per image", "[784]")
    assert hashes(run_copy) == before


def test_evaluate_refuses_to_guess_the_data_of_a_run_trained_from_python(mnist_root, tmp_path, capsys):
    from pyro_vae.data import DataSplits, Images

    pixels = torch.randint(0, 256, (128, 64), dtype=torch.uint8)
    data = DataSplits(Images(pixels, "dynamic"), torch.bernoulli(torch.full((16, 64), 0.5)), 0)
    config = TrainConfig(model=ModelConfig(x_dim=64, z_dim=2, hidden_dims=(8,)), preset=None, epochs=1, batch_size=32,
                         device="cpu", out=str(tmp_path / "run"))
    assert svi.train(config, data=data, progress=False).config.dataset == "custom"
    status, stderr = run(evaluate_module.main, [str(tmp_path / "run"), "--num-samples", "5", "--no-progress"], capsys)
    assert_refused(status, stderr, "handed over from Python", "images=x")
    report = evaluate_module.evaluate(tmp_path / "run", num_samples=5, images=data.test, progress=False)
    assert report["n_images"] == 16 and report["log_px"]["mean"] >= report["elbo"]["mean"]


def test_evaluate_names_an_infinite_parameter(run_copy, capsys):
    def poison(payload):
        payload["model_state"]["encoder.0.bias"][3] = float("inf")

    rewrite_checkpoint(run_copy, poison)
    before = hashes(run_copy)
    status, stderr = run(evaluate_module.main, [str(run_copy), "--num-samples", "5", "--no-progress"], capsys)
    assert_refused(status, stderr, "encoder.0.bias", "NaN or infinite")
    assert hashes(run_copy) == before


# --- hostile checkpoints --------------------------------------------------------------

def _hostile(marker: Path) -> dict[str, dict]:
    command = f"touch {marker}"
    return {
        "os.system (the issue's three keys)": {"format_version": 1, "model_class": "os:system",
                                               "model_kwargs": {"command": command}},
        "os.system, full payload": {"model_class": "os:system", "model_kwargs": {"command": command}},
        "subprocess.getoutput": {"model_class": "subprocess:getoutput", "model_kwargs": {"cmd": command}},
        "builtins.exec": {"model_class": "builtins:exec",
                          "model_kwargs": {"source": f"open({str(marker)!r}, 'w').close()"}},
        "a torch module, not a model": {"model_class": "torch.nn:Linear",
                                        "model_kwargs": {"in_features": 2, "out_features": 2}},
        "format 2, unregistered name": {"format_version": 2, "model": "os:system", "model_kwargs": {"command": command}},
        "unknown constructor argument": {"model_kwargs": {"z_dim": 4, "command": command}},
        "argument of the wrong type": {"model_kwargs": {"z_dim": "4; touch marker"}},
    }


HOSTILE_IDS = list(_hostile(Path("m")))


@pytest.mark.parametrize("case", HOSTILE_IDS)
def test_a_hostile_checkpoint_runs_no_code(run_copy, tmp_path, capsys, case):
    marker = tmp_path / "pwned"
    change = _hostile(marker)[case]

    def craft(payload):
        if len(change) == 3:  # the bare dict of the issue, nothing else
            payload.clear()
        elif "model_class" in change:
            payload.pop("model", None)
            payload["format_version"] = 1
        payload.update(change)

    rewrite_checkpoint(run_copy, craft)
    before = hashes(run_copy)
    status, stderr = run(evaluate_module.main, [str(run_copy), "--num-samples", "5", "--no-progress"], capsys)
    assert_refused(status, stderr)
    with pytest.raises(CheckpointError):
        checkpoint.load(run_copy, device="cpu")
    status, stderr = run(svi.main, ["--out", str(run_copy), "--resume", "--epochs", "2", "--eval-samples", "5",
                                    "--no-progress"], capsys)
    assert_refused(status, stderr)
    assert not marker.exists() and hashes(run_copy) == before


def test_a_format_1_checkpoint_of_a_built_in_class_still_loads(run_copy):
    def to_format_1(payload):
        payload["format_version"] = 1
        payload["model_class"] = "models.vae:VAE"
        del payload["model"]

    want = checkpoint.load(run_copy, device="cpu")[0].state_dict()
    rewrite_checkpoint(run_copy, to_format_1)
    vae, _ = checkpoint.load(run_copy, device="cpu")
    assert type(vae) is VAE and all(torch.equal(vae.state_dict()[k], v) for k, v in want.items())


# --- the registry ---------------------------------------------------------------------

def test_the_registry_takes_only_latent_models_and_one_class_per_name():
    with pytest.raises(ConfigError, match="LatentModel subclass"):
        register_model("not-a-model")(torch.nn.Linear)
    with pytest.raises(ConfigError, match="taken by models.vae:VAE"):
        @register_model("vae")
        class Impostor(VAE):
            pass
    assert model_class("vae") is VAE
    with pytest.raises(CheckpointError, match="not a registered model"):
        model_class("models.vae:VAE")  # a path is not a name (format 2)


def test_an_unregistered_variant_is_refused_before_training(mnist_root, tmp_path):
    class Unregistered(VAE):
        pass

    config = TrainConfig(model=ModelConfig(z_dim=4, hidden_dims=(16,)), preset=None, data_dir=str(mnist_root),
                         train_limit=64, test_limit=8, epochs=1, device="cpu", out=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="not a registered model.*register_model"):
        svi.train(config, model=Unregistered(z_dim=4, hidden_dims=(16,)), progress=False)
    assert not (tmp_path / "run").exists()


@register_model("test-two-scales")
class TwoScales(LatentModel):
    """Checks keyword-only and defaulted arguments of a user's own family."""

    def __init__(self, x_dim: int, scales: tuple[float, ...] = (1.0,), *, name: str | None = None):
        super().__init__()


def test_constructor_arguments_are_checked_against_the_signature():
    assert check_init_kwargs(TwoScales, {"x_dim": 3, "scales": [0.5, 2], "name": None})
    for bad, words in [({"scales": [1.0]}, "lacks TwoScales arguments: x_dim"),
                       ({"x_dim": 3, "scales": ["a"]}, "is not tuple[float, ...]"),
                       ({"x_dim": 3.5}, "x_dim=3.5 is not int"),
                       ({"x_dim": True}, "is not int"),
                       ({"x_dim": 3, "scales": [float("nan")]}, "is not"),
                       ({"x_dim": 3, "other": 1}, "does not take: other")]:
        with pytest.raises(CheckpointError, match=words.replace("[", r"\[").replace(".", r"\.")):
            check_init_kwargs(TwoScales, bad)


# --- provenance -----------------------------------------------------------------------

def test_the_report_hashes_the_bytes_it_loaded(run_copy, monkeypatch):
    loaded = (run_copy / "checkpoint.pt").read_bytes()
    real_parse = checkpoint.parse

    def parse_while_another_run_saves(data, *args, **kwargs):
        (run_copy / "checkpoint.pt").write_bytes(b"a later checkpoint")  # the file changes after it was read
        return real_parse(data, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "parse", parse_while_another_run_saves)
    report = evaluate_module.evaluate(run_copy, num_samples=5, test_limit=4, device="cpu", progress=False)
    assert report["checkpoint"]["sha256"] == hashlib.sha256(loaded).hexdigest()


def test_a_crash_leftover_is_removed_and_the_checkpoint_has_the_run_files_mode(mnist_root, run_copy):
    leftover = run_copy / "checkpoint.pt.0123abcd.tmp"
    leftover.write_bytes(b"half a checkpoint")
    assert svi.main(["--out", str(run_copy), "--resume", "--epochs", "2", "--no-progress", "--data-dir",
                     str(mnist_root)]) == 0
    assert not leftover.exists() and not list(run_copy.glob("*.tmp"))
    mode = lambda name: (run_copy / name).stat().st_mode & 0o777  # noqa: E731
    assert mode("checkpoint.pt") == mode("config.json") == mode("metrics.jsonl")


# --- interruptions --------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_epoch_checkpoints_exits_128_plus_signal_and_resumes_exactly(mnist_root, tmp_path, sig):
    out = tmp_path / "run"
    args = ["--epochs", "2", "--train-limit", "4000", "--test-limit", "200", "--latent-dim", "8", "--hidden-dims", "64",
            "--batch-size", "16", "--data-dir", str(mnist_root), "--device", "cpu", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "inference.svi", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = ""
    while "it/s" not in seen:  # tqdm reports a rate once steps are running
        chunk = proc.stderr.read(64)
        assert chunk, f"training ended before it was interrupted: {seen[-500:]}"
        seen += chunk
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr[-2000:]
    assert "resume with: python -m inference.svi --resume --out" in stdout and "Traceback" not in stderr
    payload = checkpoint.read(out)
    assert payload["step"] > 0  # stopped mid-epoch, at the step it was in
    resumed = subprocess.run([sys.executable, "-m", "inference.svi", *args, "--resume", "--no-progress"], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    straight = svi.train(TrainConfig(model=ModelConfig(z_dim=8, hidden_dims=(64,)), preset=None, data_dir=str(mnist_root),
                                     train_limit=4000, test_limit=200, epochs=2, batch_size=16, device="cpu",
                                     out=str(tmp_path / "straight")), progress=False)
    got, _ = checkpoint.load(out, device="cpu")
    want = straight.model.state_dict()
    assert all(torch.equal(got.state_dict()[k], v) for k, v in want.items())


# --- found by probing: damaged resume state, crafted values, edge-of-epoch signals ------------------------

def _set(path: str, value):
    """A ``change(payload)`` that sets ``payload[a][b]... = value`` for ``path`` "a.b"."""
    def change(payload):
        *parents, last = path.split(".")
        target = payload
        for key in parents:
            target = target[key]
        target[last] = value
    return change


RESUME_STATE_CASES = {
    "history not a list": (_set("history", 5), "history"),
    "history of tensors": (_set("history", [{"train_elbo": torch.ones(2)}]), "history"),
    "partial sums garbage": (_set("partial", {"x": 1}), "partial-epoch sums"),
    "step past the epoch": (_set("step", 10**6), "stopped at step 1000000"),
    "negative step": (_set("step", -2), "position"),
    "negative epoch": (_set("epoch", -3), "position"),
    "rng state garbage": (_set("rng_state", {"torch": 5}), "RNG state"),
    "optimiser state garbage": (_set("optim_state", 5), "optimiser state"),
}


@pytest.mark.parametrize("change, words", RESUME_STATE_CASES.values(), ids=RESUME_STATE_CASES.keys())
def test_a_damaged_resume_state_is_refused_before_anything_is_written(mnist_root, run_copy, capsys, change, words):
    rewrite_checkpoint(run_copy, change)
    before = hashes(run_copy)
    status, stderr = run(svi.main, ["--out", str(run_copy), "--resume", "--epochs", "2", "--no-progress",
                                    "--data-dir", str(mnist_root)], capsys)
    assert_refused(status, stderr, words)
    assert hashes(run_copy) == before


def test_unusable_optimiser_settings_are_refused_before_training(mnist_root, run_copy, capsys):
    def bad_lr(payload):
        payload["optim_state"]["param_groups"][0]["lr"] = "x"

    rewrite_checkpoint(run_copy, bad_lr)
    before = hashes(run_copy)
    status, stderr = run(svi.main, ["--out", str(run_copy), "--resume", "--epochs", "2", "--no-progress",
                                    "--data-dir", str(mnist_root)], capsys)
    assert_refused(status, stderr, "optimiser settings")
    assert hashes(run_copy) == before


CRAFTED_VALUE_CASES = {
    "huge int for a float argument": (_set("model_kwargs.obs_scale", 10**400), "is not float"),
    "huge int in the config": (_set("config.lr", 10**400), "config is damaged"),
    "preset of the wrong type": (_set("config.preset", [1]), "config is damaged"),
    "data folder of the wrong type": (_set("config.data_dir", 5), "config is damaged"),
    "a parameter under an int key": (lambda p: p["model_state"].__setitem__(3, torch.zeros(1)), "mapping of names"),
    "a sparse parameter": (lambda p: p["model_state"].__setitem__("decoder.0.bias",
                                                                 p["model_state"]["decoder.0.bias"].to_sparse()),
                           "not a dense real tensor"),
    "a complex NaN parameter": (lambda p: p["model_state"].__setitem__(
        "decoder.0.bias", torch.full_like(p["model_state"]["decoder.0.bias"], float("nan"), dtype=torch.complex64)),
        "not a dense real tensor"),
    "zero latent dimensions": (_set("model_kwargs.z_dim", 0), "--latent-dim must be a positive integer"),
    "no hidden layers": (_set("model_kwargs.hidden_dims", []), "--hidden-dims"),
    "a huge model from a small file": (_set("model_kwargs.x_dim", 10**7), "do not fit VAE"),
    "an image shape that is not x_dim's": (_set("model_kwargs.image_shape", [3, 28, 28]), "image_shape must be"),
    "parameters of another shape": (_set("model_kwargs.z_dim", 5), "other shape: decoder.0.weight"),
}


@pytest.mark.parametrize("change, words", CRAFTED_VALUE_CASES.values(), ids=CRAFTED_VALUE_CASES.keys())
def test_crafted_values_are_one_line_errors(run_copy, capsys, change, words):
    rewrite_checkpoint(run_copy, change)
    before = hashes(run_copy)
    status, stderr = run(evaluate_module.main, [str(run_copy), "--num-samples", "5", "--no-progress"], capsys)
    assert_refused(status, stderr, words)
    with pytest.raises(CheckpointError):
        checkpoint.load(run_copy, device="cpu")
    assert hashes(run_copy) == before


def test_evaluate_creates_nothing_at_a_data_folder_named_by_the_checkpoint(run_copy, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    rewrite_checkpoint(run_copy, _set("config.data_dir", str(elsewhere)))
    status, stderr = run(evaluate_module.main, [str(run_copy), "--num-samples", "5", "--no-progress"], capsys)
    assert_refused(status, stderr, "files not found")
    assert not elsewhere.exists()


def test_huge_seeds_and_models_are_one_line_errors(mnist_root, tmp_path, capsys):
    out = ["--out", str(tmp_path / "run"), "--data-dir", str(mnist_root)]
    assert_refused(*run(svi.main, [*TINY, *out, "--seed", str(2**32)], capsys), "from 0 to 2**32 - 1")
    assert_refused(*run(svi.main, [*TINY, *out, "--test-seed", str(10**30)], capsys), "--test-seed")
    assert_refused(*run(svi.main, [*TINY, *out, "--hidden-dims", "10000000000"], capsys), "out of memory")


def _long_name(tmp: Path) -> Path:
    return tmp / ("x" * 300)


def _dangling_link(tmp: Path) -> Path:
    (tmp / "link").symlink_to(tmp / "nowhere")
    return tmp / "link"


def _folder_for_config_json(tmp: Path) -> Path:
    (tmp / "o" / "config.json").mkdir(parents=True)
    return tmp / "o"


def _file_for_figures(tmp: Path) -> Path:
    (tmp / "o").mkdir()
    (tmp / "o" / "figures").write_text("")
    return tmp / "o"


OUT_CASES = {
    "a name longer than 255 bytes": (_long_name, "longer than 255 bytes"),
    "a link to nothing": (_dangling_link, "a link to nothing"),
    "config.json is a folder": (_folder_for_config_json, "holds a folder config.json"),
    "figures is a file": (_file_for_figures, "holds a file figures"),
    "an empty name": (lambda tmp: "", "--out must be a non-empty"),
}


@pytest.mark.parametrize("make, words", OUT_CASES.values(), ids=OUT_CASES.keys())
def test_outputs_that_cannot_be_written_are_refused_first(mnist_root, tmp_path, capsys, make, words):
    out = make(tmp_path)
    before = hashes(tmp_path)
    status, stderr = run(svi.main, [*TINY, "--data-dir", str(mnist_root), "--out", str(out)], capsys)
    assert_refused(status, stderr, words)
    assert hashes(tmp_path) == before


def test_evaluate_refuses_a_report_folder_with_a_folder_where_a_file_goes(run_copy, capsys):
    (run_copy / "report" / "report.json").mkdir(parents=True)
    status, stderr = run(evaluate_module.main, [str(run_copy), "--num-samples", "5", "--no-progress"], capsys)
    assert_refused(status, stderr, "holds a folder report.json")


def test_a_signal_as_the_last_epoch_ends_still_stops_with_its_status(mnist_root, tmp_path, capsys, monkeypatch):
    """SIGTERM while the last epoch's test ELBO is computed: training is complete, but no report, and exit 143."""
    real = loop.epoch_metrics

    def evaluate_then_sigterm(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "epoch_metrics", evaluate_then_sigterm)
    status, _ = run(svi.main, [*TINY, "--data-dir", str(mnist_root), "--out", str(tmp_path / "run"),
                               "--eval-samples", "5"], capsys)
    assert status == 128 + signal.SIGTERM
    assert checkpoint.read(tmp_path / "run")["epoch"] == 1 and not (tmp_path / "run" / "report").exists()


def test_a_second_signal_stops_at_once_with_its_own_status():
    from pyro_vae.stopping import Interrupted, StopRequest

    with pytest.raises(Interrupted) as info, StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.exit_status == 143
        os.kill(os.getpid(), signal.SIGTERM)
    assert info.value.exit_status == 143


def test_a_model_larger_than_free_memory_is_refused_before_it_is_built(monkeypatch, mnist_root, tmp_path, capsys):
    """The check runs on the meta device: a lazily granted allocation could otherwise be OOM-killed later."""
    from pyro_vae import device as device_module

    monkeypatch.setattr(device_module, "free_memory", lambda device: 10_000)  # bytes; SMALL needs far more
    status, stderr = run(svi.main, [*TINY, "--out", str(tmp_path / "run"), "--data-dir", str(mnist_root)], capsys)
    assert_refused(status, stderr, "out of memory")
    assert "GiB free" in stderr and not (tmp_path / "run").exists()
