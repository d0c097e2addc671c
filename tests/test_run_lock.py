"""One writer per folder (`pyro_vae.run_lock`), and a full disk as one line (`pyro_vae.errors.WriteFailed`).

Two trainings into one ``--out``: the second is refused and the first's folder is what a lone run makes. A
holder killed with SIGKILL leaves no lock. A report into a folder another report is writing is refused. A write
that fails with ENOSPC at the checkpoint, the metrics line or a figure is one line, the previous checkpoint
intact and ``metrics.jsonl`` never ahead of it. Under torchrun rank 0 alone locks.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO
from inference import evaluate as run_evaluate
from inference.reports import report as report_module
from inference.training import loop
from inference import figures as run_figures
from inference import svi
from pyro_vae import checkpoint, run_lock, writes
from pyro_vae.errors import FolderInUse
from pyro_vae.run_lock import RunLock, check_free

TINY = ["--epochs", "1", "--train-limit", "256", "--test-limit", "32", "--latent-dim", "2", "--hidden-dims", "16",
        "--batch-size", "64", "--device", "cpu", "--no-progress"]
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def hashes(folder: Path) -> dict[str, str]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run(main, argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    status = main(argv)
    return status, capsys.readouterr().err


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_consistent(out: Path, epochs: int) -> None:
    """The checkpoint holds ``epochs`` epochs and metrics.jsonl claims no more, as whole lines of its history."""
    saved = checkpoint.read(out / "checkpoint.pt")
    assert saved["epoch"] == epochs and saved["step"] == 0
    lines = metrics(out)
    assert len(lines) <= epochs and lines == saved["history"][:len(lines)]
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


# --- the lock itself ------------------------------------------------------------------------------------------

def test_a_second_holder_is_refused_with_the_first_ones_pid_and_the_lock_is_free_after(tmp_path):
    folder = tmp_path / "run"
    check_free(folder)
    assert not folder.exists()  # the quick check creates nothing
    with RunLock(folder, "training"):
        assert (folder / ".lock").read_text().startswith(f"pid {os.getpid()} since ")
        with pytest.raises(FolderInUse) as refused:
            RunLock(folder, "training").acquire()  # another open file description: flock refuses it
        assert str(refused.value).startswith(f"{folder} is in use by another run (pid {os.getpid()}, since ")
        assert str(refused.value).endswith("); wait for it or choose another --out")
        with pytest.raises(FolderInUse):
            check_free(folder)
    check_free(folder)
    with RunLock(folder, "training"):
        pass


def test_a_file_system_without_locks_is_a_warning_not_a_refusal(tmp_path, monkeypatch, capsys):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(run_lock.fcntl, "flock", no_locks)
    with RunLock(tmp_path / "run") as lock:
        assert not lock.locked
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "cannot be locked" in err and err.count("\n") == 1


# --- two trainings into one --out -------------------------------------------------------------------------------

def _env(mnist_root) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYRO_VAE_DATA": str(mnist_root),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


#: ``python -c`` that runs ``inference.svi.main`` but, once OUT is locked, touches FLAG and waits SECONDS first.
SLOW_START = """
import sys, time
from pathlib import Path
import inference.svi as svi
from inference.training import loop
flag, seconds, argv = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
real = loop._train
def slow(*args, **kwargs):
    flag.touch()
    time.sleep(seconds)
    return real(*args, **kwargs)
loop._train = slow
sys.exit(svi.main(argv))
"""


def _slow_run(mnist_root, tmp_path, seconds: float, *argv: str) -> tuple[subprocess.Popen, Path]:
    flag = tmp_path / f"locked-{time.monotonic_ns()}"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_START, str(flag), str(seconds), *argv], cwd=REPO,
                            env=_env(mnist_root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not flag.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc, flag


def _cli(mnist_root, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inference.svi", *argv], cwd=REPO, env=_env(mnist_root),
                          capture_output=True, text=True, timeout=300)


def test_a_second_training_into_the_same_out_is_refused_and_the_first_is_a_lone_runs(mnist_root, tmp_path):
    both, lone = tmp_path / "both", tmp_path / "lone"
    args = [*TINY, "--epochs", "2"]
    first, _ = _slow_run(mnist_root, tmp_path, 2, *args, "--seed", "1", "--out", str(both))
    second = _cli(mnist_root, *args, "--seed", "2", "--out", str(both))
    assert second.returncode == 2, second.stderr
    line = one_error_line(second.stderr)
    assert line.startswith(f"error: {both} is in use by another run (pid {first.pid}, since "), line
    assert line.endswith("wait for it or choose another --out")
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert _cli(mnist_root, *args, "--seed", "1", "--out", str(lone)).returncode == 0

    def config(folder):
        return {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if k != "out"}

    def timeless(records):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in records]

    assert config(both) == config(lone) and config(both)["seed"] == 1
    assert timeless(metrics(both)) == timeless(metrics(lone)) and len(metrics(both)) == 2
    a, b = (checkpoint.read(f / "checkpoint.pt") for f in (both, lone))
    assert timeless(a["history"]) == timeless(b["history"]) and a["epoch"] == b["epoch"] == 2
    assert a["model_state"].keys() == b["model_state"].keys()
    assert all(torch.equal(a["model_state"][k], b["model_state"][k]) for k in a["model_state"])
    assert sorted(p.name for p in both.iterdir()) == sorted(p.name for p in lone.iterdir())
    pictures = [p.name for p in (lone / "figures").iterdir()]
    assert pictures and all((both / "figures" / n).read_bytes() == (lone / "figures" / n).read_bytes()
                            for n in pictures)


def test_a_refusal_after_the_checks_changes_nothing(mnist_root, tmp_path, monkeypatch, capsys):
    """Both runs past their checks at once: the one that locks second is refused when it locks, writing nothing."""
    out = tmp_path / "run"
    assert svi.main([*TINY, "--data-dir", str(mnist_root), "--out", str(out)]) == 0
    monkeypatch.setattr(loop, "check_free", lambda folder: None)  # as if the other run locked after this one looked
    with RunLock(out, "training"):
        before = hashes(out)
        status, err = run(svi.main, [*TINY, "--epochs", "2", "--resume", "--data-dir", str(mnist_root),
                                     "--out", str(out)], capsys)
        assert status == 2 and "is in use by another run" in one_error_line(err)
        assert hashes(out) == before


def test_a_killed_holder_leaves_no_lock_and_a_resume_starts_at_once(mnist_root, tmp_path):
    out = tmp_path / "run"
    assert _cli(mnist_root, *TINY, "--out", str(out)).returncode == 0
    holder, _ = _slow_run(mnist_root, tmp_path, 600, *TINY, "--epochs", "2", "--resume", "--out", str(out))
    assert "is in use" in _cli(mnist_root, *TINY, "--epochs", "2", "--resume", "--out", str(out)).stderr
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=60)
    resumed = _cli(mnist_root, *TINY, "--epochs", "2", "--resume", "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert_consistent(out, 2)
    assert len(metrics(out)) == 2


# --- reports and figures ----------------------------------------------------------------------------------------

@pytest.fixture
def tiny_run(mnist_root, tmp_path) -> Path:
    out = tmp_path / "run"
    assert svi.main([*TINY, "--data-dir", str(mnist_root), "--out", str(out)]) == 0
    return out


def test_a_second_report_into_the_same_folder_is_refused(tiny_run, monkeypatch, capsys):
    argv = [str(tiny_run), "--num-samples", "4", "--chunk-size", "4", "--test-limit", "16", "--device", "cpu",
            "--no-progress"]
    real, second = report_module._evaluate, []

    def with_a_second_report(*args, **kwargs):  # the second starts while the first holds the report folder
        second.append(run_evaluate.main(argv))
        return real(*args, **kwargs)

    monkeypatch.setattr(report_module, "_evaluate", with_a_second_report)
    capsys.readouterr()
    assert run_evaluate.main(argv) == 0
    err = capsys.readouterr().err
    assert second == [2]
    assert one_error_line(err).startswith(f"error: {tiny_run / 'report'} is in use by another run (pid {os.getpid()}")
    assert json.loads((tiny_run / "report" / "report.json").read_text())["num_samples"] == 4


def test_figures_into_a_run_being_trained_are_refused(tiny_run, capsys):
    with RunLock(tiny_run, "training"):
        before = hashes(tiny_run)
        status, err = run(run_figures.main, [str(tiny_run), "--device", "cpu"], capsys)
        assert status == 2 and "is in use by another run" in one_error_line(err)
        assert hashes(tiny_run) == before


# --- a full disk ------------------------------------------------------------------------------------------------

def _full_after(calls: int, real):
    """``torch.save`` that works ``calls`` times, then writes part of the file and fails as a full disk does
    (torch raises a RuntimeError while handling the OSError)."""
    count = [0]

    def save(obj, f, *args, **kwargs):
        count[0] += 1
        if count[0] <= calls:
            return real(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04 partial")
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    return save


def test_no_space_for_a_checkpoint_keeps_the_last_one_and_the_metrics_agree(mnist_root, tmp_path, monkeypatch,
                                                                              capsys):
    out = tmp_path / "run"
    monkeypatch.setattr(checkpoint.torch, "save", _full_after(1, torch.save))
    status, err = run(svi.main, [*TINY, "--epochs", "3", "--data-dir", str(mnist_root), "--out", str(out)], capsys)
    assert status == 1
    assert one_error_line(err) == (f"error: could not write {out / 'checkpoint.pt'} (No space left on device); the "
                                   f"checkpoint of epoch 1 is kept; free space and resume with: python -m "
                                   f"inference.svi --resume --out {out}")
    assert_consistent(out, 1)
    assert len(metrics(out)) == 1
    monkeypatch.undo()
    assert svi.main([*TINY, "--epochs", "2", "--resume", "--data-dir", str(mnist_root), "--out", str(out)]) == 0
    assert_consistent(out, 2)


def test_no_space_for_the_first_checkpoint_leaves_no_epoch_claimed(mnist_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    monkeypatch.setattr(checkpoint.torch, "save", _full_after(0, torch.save))
    status, err = run(svi.main, [*TINY, "--data-dir", str(mnist_root), "--out", str(out)], capsys)
    assert status == 1 and "checkpoint.pt (No space left on device); no checkpoint was written" in one_error_line(err)
    assert not (out / "checkpoint.pt").exists() and metrics(out) == [] and not list(out.glob("*.tmp"))


def test_no_space_for_a_metrics_line_cuts_it_off_and_a_resume_rewrites_it(mnist_root, tmp_path, monkeypatch,
                                                                            capsys):
    out = tmp_path / "run"
    calls = [0]

    def full_on_the_second_line(fd, data):
        calls[0] += 1
        if calls[0] < 2:
            return os.write(fd, data)
        os.write(fd, bytes(data[:10]))  # part of the line went out before the disk filled
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writes, "_write", full_on_the_second_line)
    status, err = run(svi.main, [*TINY, "--epochs", "3", "--data-dir", str(mnist_root), "--out", str(out)], capsys)
    assert status == 1
    assert one_error_line(err).startswith(f"error: could not write {out / 'metrics.jsonl'} (No space left on device); "
                                          "the checkpoint of epoch 2 is kept (a resume rewrites metrics.jsonl from it)")
    assert_consistent(out, 2)
    assert (out / "metrics.jsonl").read_text().count("\n") == 1 and len(metrics(out)) == 1  # no partial line
    monkeypatch.undo()
    assert svi.main([*TINY, "--epochs", "2", "--resume", "--data-dir", str(mnist_root), "--out", str(out)]) == 0
    assert len(metrics(out)) == 2 and metrics(out) == checkpoint.read(out / "checkpoint.pt")["history"]


def _full_savefig(monkeypatch, name: str):
    from matplotlib.figure import Figure

    real = Figure.savefig

    def savefig(self, path, *args, **kwargs):
        if Path(path).name != name:
            return real(self, path, *args, **kwargs)
        Path(path).write_bytes(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", savefig)


def test_no_space_for_a_figure_after_training_is_a_warning(mnist_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _full_savefig(monkeypatch, "elbo.png")
    status, err = run(svi.main, [*TINY, "--data-dir", str(mnist_root), "--out", str(out)], capsys)
    assert status == 0
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: could not write {out / 'figures' / 'elbo.png'} (No space left on device); training "
                        f"is complete and {out / 'checkpoint.pt'} holds it; draw the figures later with: python -m "
                        f"inference.figures {out}"], err
    assert not (out / "figures" / "elbo.png").exists()  # not half a picture
    assert_consistent(out, 1)
    status, err = run(run_figures.main, [str(out), "--device", "cpu"], capsys)  # the figures command: an error
    assert status == 1 and one_error_line(err).startswith(
        f"error: could not write {out / 'figures' / 'elbo.png'} (No space left on device)")


def test_no_space_for_a_report_is_one_line(tiny_run, monkeypatch, capsys):
    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(report_module, "write_per_image", full)
    before = hashes(tiny_run)
    status, err = run(run_evaluate.main, [str(tiny_run), "--num-samples", "4", "--chunk-size", "4",
                                          "--test-limit", "16", "--device", "cpu", "--no-progress"], capsys)
    assert status == 1
    assert one_error_line(err) == (f"error: could not write {tiny_run / 'report' / 'per_image.csv'} (No space left "
                                   f"on device); {tiny_run / 'checkpoint.pt'} is untouched; free space and run the "
                                   "report again")
    assert {k: v for k, v in hashes(tiny_run).items() if not k.startswith("report")} == before


def test_append_line_cuts_off_a_partial_line(tmp_path, monkeypatch):
    path = tmp_path / "m.jsonl"
    writes.append_line(path, "one")

    def half(fd, data):
        os.write(fd, bytes(data[:2]))
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(writes, "_write", half)
    with pytest.raises(OSError) as failed:
        writes.append_line(path, "two")
    assert failed.value.filename == str(path) and path.read_text() == "one\n"


# --- torchrun -----------------------------------------------------------------------------------------------

def _torchrun_svi(mnist_root, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "inference.svi", *TINY, "--out", str(out)], cwd=REPO, env=_env(mnist_root),
                          capture_output=True, text=True, timeout=600)


def test_torchrun_locks_once_on_rank_0(mnist_root, tmp_path):
    """Two ranks train into one folder (a second lock would refuse the other rank), and a held folder is one line."""
    out = tmp_path / "run"
    done = _torchrun_svi(mnist_root, out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / ".lock").read_text().endswith("(training)\n") and len(metrics(out)) == 1
    held = tmp_path / "held"
    with RunLock(held, "training"):
        refused = _torchrun_svi(mnist_root, held)
    lines = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert refused.returncode != 0 and len(lines) == 1 and "is in use by another run" in lines[0], refused.stderr[-3000:]
    assert sorted(p.name for p in held.iterdir()) == [".lock"]
