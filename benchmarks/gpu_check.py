"""Every CUDA figure in one prepared command, for an offline GPU node lent for minutes.

    python3 benchmarks/gpu_check.py --bundle gpu_bundle --out $OUT [--budget-s 480]
    python benchmarks/gpu_check.py --bundle B --out O --device cpu --tiny     # the same stages at toy sizes

``--bundle`` is what ``benchmarks/gpu_bundle.sh`` builds on a machine with the
package index: ``wheels/`` (what the node lacks: pyro-ppl, arviz, ...),
``data/MNIST/raw/*-ubyte.gz``, ``run/`` (a trained default checkpoint) and,
optionally, ``burda2015_run.tar.gz`` (the protocol run an earlier node brought
back, which this one continues). The wheels go into a private folder (no
network), then the stages run, each in its own process with its own time cap
(a share of ``--budget-s``), each recording its figures or its error and
letting the others run:

  environment  GPU name and memory, driver, CUDA, torch, pyro and the other versions
  tests        ``pytest -m cuda`` (every CUDA test: training, CUDA graphs, data, the report, AIS), junit summary
  agreement    CPU against CUDA on the same checkpoint, images and seed: per-image IS log p(x) (K=1000,
               200 images); the JIT compile check and the CUDA-graph check with the guards open, so the
               measured relative errors calibrate COMPILE_RTOL, GRAPH_RTOL and UPDATE_RTOL
  throughput   benchmarks/train_throughput.py, eval_throughput.py, ais_throughput.py on the device
  report       the report at full size (10,000 test images, K=5000), timed; AIS at T=1000, C=16 on as many
               images as fit its share (seconds per image)
  training     the default for 60 s (steps/s, test ELBO), then the burda2015 preset under
               ``--schedule burda2015`` for the time left, stopped by SIGTERM (a checkpoint at that step; a run
               with no epoch of its own by then gets up to 30 s more, --tiny 90, to log one) and brought back
               as OUT/burda2015_run.tar.gz for the next node to continue

It writes at most five files: ``OUT/gpu_check.json`` (every figure, the GPU
named), ``OUT/gpu_check.md`` (the tables as BENCHMARKS.md shows them),
``OUT/gpu_check.log`` (each stage's output), ``OUT/junit.xml`` and
``OUT/burda2015_run.tar.gz``. Only the standard library is imported here: the
stages, run as ``--stage NAME`` children, import the project once the wheels
are in place.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("environment", "tests", "agreement", "throughput", "report", "training")
#: Each stage's share of the budget. A stage may take its share of what is left, among the stages still to run, so
#: time one stage does not use goes to the later ones; the last stage (training) takes all that is left.
SHARES = {"environment": 0.03, "tests": 0.17, "agreement": 0.08, "throughput": 0.3, "report": 0.2, "training": 0.22}
WHEEL_PACKAGES = ("pyro-ppl", "pyro-api", "arviz", "arviz-stats", "h5netcdf", "xarray-einstats", "platformdirs")
BURDA_EPOCHS = 3280
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt")  # what a run folder needs to be resumed
MNIST_TRAIN, MNIST_TEST = 60_000, 10_000


# --- sizes -----------------------------------------------------------------------------------

def sizes(tiny: bool) -> dict:
    """Every size the stages use: the node's, or toy ones for ``--tiny`` (the CPU test)."""
    if tiny:
        return dict(agree_images=12, agree_k=40, probes=(16, 32), is_k=40, is_limit=100, is_batch=50, is_chunk=20,
                    ais_steps=5, ais_chains=2, ais_ladder=(4, 8), default_s=12, train_grace_s=90,
                    train_limit=["--train-limit", "1500", "--test-limit", "200"], burda_batch=100, bench={
                        "train": ["--batch-sizes", "100", "--images", "200", "--repeats", "1"],
                        "eval": ["--num-samples", "20", "--images", "8", "--pyro-images", "1", "--repeats", "1",
                                 "--memory-chunks", "10"],
                        "ais": ["--images", "4", "--chains", "2", "--steps", "3", "--leapfrog", "2", "--repeats", "1"]})
    return dict(agree_images=200, agree_k=1000, probes=(20, 100, 1024), is_k=5000, is_limit=None, is_batch=1000,
                is_chunk=1000, ais_steps=1000, ais_chains=16, ais_ladder=(100, 1000, 10_000), default_s=60,
                train_grace_s=30, train_limit=[], burda_batch=100, bench={
                    "train": ["--batch-sizes", "20,100,128,1024", "--images", "12000", "--repeats", "2"],
                    "eval": ["--num-samples", "5000", "--images", "1000", "--batch-sizes", "100,1000", "--repeats", "2"],
                    "ais": ["--images", "100", "--chains", "16", "--steps", "100", "--repeats", "2"]})


# --- the parent: install, run stages under caps, write the results ----------------------------

def install_wheels(bundle: Path, site: Path) -> dict:
    """``pip install --no-index --no-deps`` the bundle's wheels into ``site`` (nothing when there are none)."""
    wheels = sorted((bundle / "wheels").glob("*.whl"))
    if not wheels:
        return {"installed": [], "note": "no wheels in the bundle: the packages here are used"}
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"pip install of the wheels failed: {done.stderr.strip()[-400:]}")
    return {"installed": [w.name for w in wheels]}


def child_env(bundle: Path, site: Path, threads: int | None) -> dict:
    """The stages' environment: the private site and the repository first on the path, MNIST from the bundle."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), str(REPO),
                                                                     os.environ.get("PYTHONPATH", "")])),
               PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    if (bundle / "data" / "MNIST" / "raw").is_dir():
        env["PYRO_VAE_DATA"] = str((bundle / "data").resolve())
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_capped(command: list[str], cap: float, env: dict, cwd: Path = REPO) -> dict:
    """Run ``command`` in its own process group for at most ``cap`` seconds: ``{returncode, seconds, output,
    timed_out}``. At the cap the group gets SIGTERM, then SIGKILL 15 s later; the output so far is kept."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as sink:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=max(cap, 1))
        except subprocess.TimeoutExpired:
            timed_out = True
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        sink.seek(0)
        output = sink.read()
    return {"returncode": proc.returncode, "seconds": round(time.perf_counter() - start, 2), "output": output,
            "timed_out": timed_out}


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True, help="folder made by benchmarks/gpu_bundle.sh")
    p.add_argument("--out", type=Path, required=True, help="where the (at most five) result files go")
    p.add_argument("--budget-s", type=float, default=None, help="seconds for all stages (480; --tiny: 115)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--tiny", action="store_true", help="toy sizes (with --device cpu: the CPU test, under 2 min)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the stages")
    p.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.stage:
        return run_stage(args)
    budget = args.budget_s or (115.0 if args.tiny else 480.0)
    wanted = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(STAGES))
    if unknown:
        print(f"error: unknown stage {', '.join(unknown)}; choose from {', '.join(STAGES)}", file=sys.stderr)
        return 2
    if not (args.bundle / "run" / "checkpoint.pt").is_file():
        print(f"error: {args.bundle}/run/checkpoint.pt is missing; build the bundle with benchmarks/gpu_bundle.sh",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + budget
    results: dict = {"command": " ".join(["benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
                     "device": args.device, "tiny": args.tiny, "budget_s": budget, "stages": {}}
    log = open(args.out / "gpu_check.log", "w")
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work, site = Path(tmp), Path(tmp) / "site"
        try:
            results["wheels"] = install_wheels(args.bundle, site)
        except Exception as e:  # noqa: BLE001 - every stage still runs (and will say what is missing)
            results["wheels"] = {"error": str(e)}
        env = child_env(args.bundle, site, args.threads)
        order = [name for name in STAGES if name in wanted]
        for i, name in enumerate(order):
            left = deadline - time.monotonic() - 5
            cap = left * SHARES[name] / sum(SHARES[later] for later in order[i:])
            if cap < 3:
                results["stages"][name] = {"error": f"skipped: {left:.0f} s of the budget left"}
                continue
            command = [sys.executable, str(Path(__file__).resolve()), "--stage", name, "--bundle",
                       str(args.bundle.resolve()), "--out", str(args.out.resolve()), "--work", str(work),
                       "--device", args.device, "--budget-s", f"{cap:.1f}", *(["--tiny"] if args.tiny else [])]
            # training may outrun its share by a grace per run, waiting for each run's first epoch (train_for)
            grace = 2 * sizes(args.tiny)["train_grace_s"] if name == "training" else 0
            ran = run_capped(command, cap + 5 + grace, env)
            log.write(f"=== stage {name}: {ran['seconds']} s, exit {ran['returncode']}\n{ran['output']}\n")
            log.flush()
            result = _read_json(work / f"{name}.json")
            if ran["timed_out"]:
                result.setdefault("error", f"stopped at its cap of {cap:.0f} s")
            elif ran["returncode"] and "error" not in result:
                result["error"] = f"exit {ran['returncode']}: {_last_line(ran['output'])}"
            result["seconds"] = ran["seconds"]
            results["stages"][name] = result
            _write_results(args.out, results)
    log.close()
    _write_results(args.out, results)
    print((args.out / "gpu_check.md").read_text())
    return 0


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][-300:] if lines else "no output"


def _write_results(out: Path, results: dict) -> None:
    results["targets"] = targets(results)
    for name, text in (("gpu_check.json", json.dumps(results, indent=2, default=str)),
                       ("gpu_check.md", markdown(results))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)


# --- one stage (a child process) ------------------------------------------------------------

class Recorder:
    """A stage's results, rewritten to WORK/NAME.json after every figure, so a stage stopped at its cap keeps
    what it had measured."""

    def __init__(self, path: Path):
        self.path, self.data = path, {}

    def __setitem__(self, key: str, value) -> None:
        self.data[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, default=str))
        tmp.replace(self.path)


def run_stage(args: argparse.Namespace) -> int:
    record = Recorder(args.work / f"{args.stage}.json")
    deadline = time.monotonic() + float(args.budget_s)
    try:
        STAGE_FUNCTIONS[args.stage](record, args, sizes(args.tiny), deadline)
    except Exception as e:  # noqa: BLE001 - the stage's error is its result; the other stages still run
        import traceback

        traceback.print_exc()
        record["error"] = f"{type(e).__name__}: {str(e).strip()[:500]}"
        return 1
    return 0


def stage_environment(record: Recorder, args, size: dict, deadline: float) -> None:
    import importlib.metadata as metadata

    import torch

    record["python"] = platform.python_version()
    record["cpu"] = _cpu_name()
    record["cpu_cores"] = os.cpu_count()
    versions = {}
    for package in ("torch", "torchvision", "numpy", "scipy", "pandas", "xarray", "matplotlib", *WHEEL_PACKAGES):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    record["versions"] = versions
    record["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        record["gpu"] = torch.cuda.get_device_name(0)
        record["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        record["multiprocessors"] = props.multi_processor_count
        record["capability"] = f"{props.major}.{props.minor}"
        record["cuda"] = torch.version.cuda
        record["cudnn"] = torch.backends.cudnn.version()
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        record["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        record["nvidia_smi"] = f"not available ({type(e).__name__})"
    import pyro  # last: a missing pyro is this stage's error, after everything else is recorded

    record["pyro"] = pyro.__version__


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def stage_tests(record: Recorder, args, size: dict, deadline: float) -> None:
    """``pytest -m cuda`` over the test files that hold CUDA tests (the others import what a node may lack)."""
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py") if "@cuda_only" in p.read_text())
    record["files"] = files
    junit = args.out / "junit.xml"
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rfEs", "-p", "no:cacheprovider",
               f"--junitxml={junit}", *files]
    ran = run_capped(command, deadline - time.monotonic() - 5, dict(os.environ))
    record["pytest_exit"] = ran["returncode"]
    record["tail"] = ran["output"][-3000:]
    record["summary"] = junit_summary(junit)
    if ran["timed_out"]:
        record["error"] = "pytest stopped at the stage's cap"


def junit_summary(path: Path) -> dict:
    """Counts and the failed tests (name: first line of the message) of a junit XML file."""
    if not path.is_file():
        return {"error": "no junit file"}
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    outcomes = {}
    for case in suite.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        if bad is not None:
            outcomes[name] = "failed: " + (bad.get("message") or "").strip().splitlines()[0][:300] if (
                bad.get("message") or "").strip() else "failed"
        elif skipped is not None:
            outcomes[name] = "skipped: " + (skipped.get("message") or "")[:200]
        else:
            outcomes[name] = "passed"
    return {**counts, "seconds": float(suite.get("time", 0)), "outcomes": outcomes}


def stage_agreement(record: Recorder, args, size: dict, deadline: float) -> None:
    import pyro
    import torch

    from inference.training import compiled as compiled_module
    from inference.training import cuda_graph
    from inference.estimators.importance import estimate_log_marginal
    from inference.training.objectives import make_elbo
    from inference.training.step import make_step
    from pyro_vae.checkpoint import load
    from pyro_vae.data import evaluation_images

    device = torch.device(args.device)
    run = args.bundle / "run"
    model_cpu, config = load(run, device="cpu")
    x = evaluation_images(config.evaluation_data(test_limit=max(size["probes"])), "cpu")
    images = x[: size["agree_images"]]
    estimates = {}
    for where in ("cpu", device.type):
        pyro.clear_param_store()  # a PyroModule takes a parameter of its name from the store when there is one
        model, _ = load(run, device=where)
        estimates[where] = estimate_log_marginal(model.model, model.guide, images.to(where), num_samples=size["agree_k"],
                                                 chunk_size=500, seed=0)
    difference = (estimates[device.type].log_px - estimates["cpu"].log_px).double()
    n = len(difference)
    record["importance_cpu_vs_device"] = {
        "images": n, "num_samples": size["agree_k"],
        "max_abs_difference": float(difference.abs().max()),
        "mean_difference": float(difference.mean()),
        "se_of_mean_difference": float(difference.std() / math.sqrt(n)) if n > 1 else None,
        "log_px_cpu": float(estimates["cpu"].log_px.mean()), "log_px_device": float(estimates[device.type].log_px.mean()),
        "note": "the draws differ between the devices' generators: the difference is Monte Carlo noise plus arithmetic"}

    # The guards opened (tolerances infinite) so the relative errors are measured, not just passed or failed.
    tolerances = {"COMPILE_RTOL": compiled_module.COMPILE_RTOL, "GRAPH_RTOL": cuda_graph.GRAPH_RTOL,
                  "UPDATE_RTOL": cuda_graph.UPDATE_RTOL}
    record["tolerances"] = tolerances
    compiled_module.COMPILE_RTOL = cuda_graph.GRAPH_RTOL = cuda_graph.UPDATE_RTOL = math.inf
    compile_rows, graph_rows = [], []
    for batch in size["probes"]:
        probe = x[:batch].to(device)  # test images, binarised once
        pyro.clear_param_store()
        model, _ = load(run, device=device.type)
        model.train()
        params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        optim = torch.optim.Adam(model.parameters(), lr=1e-3)
        plain, jit = make_elbo(config.elbo, False, config.num_particles, config.gradient), make_elbo(
            config.elbo, True, config.num_particles, config.gradient)
        differences = compiled_module.check_compiled(model.model, model.guide, params, jit, plain, probe)
        compile_rows.append({"batch": batch, "loss": differences.pop("loss"), "max_gradient": max(differences.values())})
        record["compile_check"] = compile_rows
        if device.type != "cuda":
            continue
        step = make_step(model, jit, optim)
        graphed = cuda_graph.build_graph_step(step.loss_and_grads, model, optim, probe, batch)
        d = graphed.check_differences
        graph_rows.append({"batch": batch, "loss": d["loss"],
                           "max_gradient": max(v for k, v in d.items() if k.startswith("gradient ")),
                           "max_update": max(v for k, v in d.items() if k.startswith("update "))})
        record["graph_check"] = graph_rows
    if device.type != "cuda":
        record["graph_check"] = {"error": "needs CUDA (the CUDA-graph step never runs on the CPU)"}


def stage_throughput(record: Recorder, args, size: dict, deadline: float) -> None:
    scripts = {"train": ["benchmarks/train_throughput.py", "--device", args.device],
               "eval": ["benchmarks/eval_throughput.py", str(args.bundle / "run"), "--device", args.device],
               "ais": ["benchmarks/ais_throughput.py", str(args.bundle / "run"), "--device", args.device]}
    shares = {"train": 0.5, "eval": 0.32, "ais": 0.18}
    for i, (name, command) in enumerate(scripts.items()):
        left = deadline - time.monotonic() - 2
        cap = left * shares[name] / sum(list(shares.values())[i:])
        ran = run_capped([sys.executable, *command, *size["bench"][name]], cap, dict(os.environ))
        result = {"command": " ".join(["python", *command, *size["bench"][name]]), "seconds": ran["seconds"],
                  "output": ran["output"][-6000:], "tables": markdown_tables(ran["output"])}
        if ran["timed_out"]:
            result["error"] = f"stopped at its cap of {cap:.0f} s (rows printed so far kept)"
        elif ran["returncode"]:
            result["error"] = f"exit {ran['returncode']}: {_last_line(ran['output'])}"
        record[name] = result


def markdown_tables(text: str) -> list[list[dict]]:
    """The ``| a | b |`` tables printed in ``text``, each as a list of rows keyed by its header (a row line
    followed by a ``| --- |`` line). Other lines may come between a table's rows (a benchmark's own progress)."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.strip().startswith("|")]
    rule = lambda cells: all(c and set(c) <= set("-: ") for c in cells)  # noqa: E731
    tables: list[list[dict]] = []
    header = None
    for cells, following in zip(rows, rows[1:] + [None]):
        if rule(cells):
            continue
        if following is not None and rule(following):
            header = cells
            tables.append([])
        elif header is not None:
            tables[-1].append(dict(zip(header, cells)))
    return tables


def stage_report(record: Recorder, args, size: dict, deadline: float) -> None:
    """The full report (IS) as a user runs it, then AIS at T = 1000, C = 16 on as many images as its share allows."""
    import pyro
    import torch

    from inference.estimators.ais import ais_log_marginal
    from pyro_vae.checkpoint import load
    from pyro_vae.data import evaluation_images

    out = args.work / "report"
    limit = ["--test-limit", str(size["is_limit"])] if size["is_limit"] else []
    command = ["-m", "inference.evaluate", str(args.bundle / "run"), "--num-samples", str(size["is_k"]), "--batch-size",
               str(size["is_batch"]), "--chunk-size", str(size["is_chunk"]), *limit, "--device", args.device,
               "--no-progress", "--out", str(out)]
    ran = run_capped([sys.executable, *command], 0.6 * (deadline - time.monotonic()), dict(os.environ))
    report = _read_json(out / "report.json")
    record["importance"] = {
        "command": " ".join(["python", *command]), "wall_seconds": ran["seconds"], "exit": ran["returncode"],
        **({"error": _last_line(ran["output"])} if ran["returncode"] or not report else {}),
        **{k: report.get(k) for k in ("n_images", "num_samples", "log_px", "elbo", "nll", "bits_per_dim", "khat",
                                      "seconds", "seconds_log_px", "device")}}

    device = torch.device(args.device)
    pyro.clear_param_store()  # a PyroModule takes a parameter of its name from the store when there is one
    model, config = load(args.bundle / "run", device=device.type)
    steps, chains = size["ais_steps"], size["ais_chains"]
    probe_steps = max(2, steps // 100)
    chosen = None
    for n in size["ais_ladder"]:  # the largest batch whose projected full-T run fits the time left
        x = evaluation_images(config.evaluation_data(test_limit=n), device)
        start = time.perf_counter()
        ais_log_marginal(model.model, model.guide, x, num_chains=chains, num_steps=probe_steps, seed=0)
        _sync(device)
        projected = (time.perf_counter() - start) * steps / probe_steps
        record[f"ais_probe_{n}"] = {"images": n, "num_steps": probe_steps, "projected_seconds_at_T": projected}
        if projected < 0.9 * (deadline - time.monotonic()):
            chosen = (n, x)
    if chosen is None:
        record["ais"] = {"error": "even the smallest batch would not finish in the stage's share; see the probes"}
        return
    n, x = chosen
    start = time.perf_counter()
    est = ais_log_marginal(model.model, model.guide, x, num_chains=chains, num_steps=steps, seed=0)
    _sync(device)
    seconds = time.perf_counter() - start
    record["ais"] = {"images": n, "num_steps": steps, "num_chains": chains, "seconds": seconds,
                     "seconds_per_image": seconds / n, "projected_test_set_seconds": seconds / n * MNIST_TEST
                     if n < MNIST_TEST else seconds, "log_px": float(est.log_px.mean()),
                     "acceptance": float(est.acceptance.mean())}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stage_training(record: Recorder, args, size: dict, deadline: float) -> None:
    """The default for ``default_s`` seconds, then burda2015 for the rest; each stopped by SIGTERM (the run
    checkpoints the step it is on and exits 143), as a preempted job is."""
    runs = args.work / "runs"
    default = train_for(runs / "default", ["--epochs", "1000", "--no-progress", *size["train_limit"]],
                        size["default_s"], size["train_grace_s"])
    record["default"] = default
    burda_flags = ["--preset", "burda2015", "--schedule", "burda2015", "--batch-size", str(size["burda_batch"]),
                   "--no-progress", *size["train_limit"]]
    folder = runs / "burda2015"
    carried = args.bundle / "burda2015_run.tar.gz"
    resumed_from = None
    if carried.is_file():
        folder.mkdir(parents=True)
        with tarfile.open(carried) as tar:  # read as untrusted: only the run's three files, plain, by name
            for member in tar.getmembers():
                if member.isfile() and member.name in RUN_FILES:
                    tar.extract(member, folder, filter="data")
        resumed_from = _lines(folder / "metrics.jsonl")
        burda_flags.append("--resume")
    seconds = deadline - time.monotonic() - 15
    burda = train_for(folder, burda_flags, seconds, size["train_grace_s"])
    burda["resumed_from_epoch"] = resumed_from
    if burda.get("images_per_second"):  # a full MNIST epoch per epoch, whatever --train-limit the run had
        burda["projected_protocol_minutes"] = BURDA_EPOCHS * MNIST_TRAIN / burda["images_per_second"] / 60
    record["burda2015"] = burda
    if (folder / "checkpoint.pt").is_file():
        with tarfile.open(args.out / "burda2015_run.tar.gz", "w:gz") as tar:
            for name in RUN_FILES:
                if (folder / name).is_file():
                    tar.add(folder / name, arcname=name)
        record["burda2015_run"] = "burda2015_run.tar.gz"


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def train_for(folder: Path, flags: list[str], seconds: float, grace: float) -> dict:
    """``python -m inference.svi --out folder FLAGS`` stopped by SIGTERM after ``seconds``: its figures.

    A run that has logged no epoch of its own by then (a slow machine spends its share starting Python, torch
    and Pyro) gets up to ``grace`` seconds more to finish one: a stop before the first epoch measures nothing."""
    metrics = folder / "metrics.jsonl"
    before = _lines(metrics)
    command = [sys.executable, "-m", "inference.svi", "--out", str(folder), *flags]
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.extend(proc.stdout), daemon=True)  # no full pipe blocks it
    reader.start()
    stop_at = start + max(seconds, 1)
    while proc.poll() is None:
        now = time.perf_counter()
        if now >= stop_at and (_lines(metrics) > before or now >= stop_at + grace):
            break
        time.sleep(0.2)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    output = "".join(chunks)
    wall = time.perf_counter() - start
    history = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    this_run = history[before:]
    config = _read_json(folder / "config.json")
    result = {"command": " ".join(["python", *command[1:]]), "wall_seconds": round(wall, 1), "exit": proc.returncode,
              "epochs": len(history), "epochs_this_run": len(this_run),
              "train_seconds": sum(h["seconds"] for h in this_run), "tail": output[-1500:]}
    if this_run:
        batch = config.get("batch_size", 128)
        images = config.get("train_limit") or MNIST_TRAIN
        result["steps_per_second"] = len(this_run) * math.ceil(images / batch) / result["train_seconds"]
        result["images_per_second"] = len(this_run) * images / result["train_seconds"]
        result["test_elbo"] = this_run[-1]["test_elbo"]
    if proc.returncode not in (0, 143):
        result["error"] = f"exit {proc.returncode}: {_last_line(output)}"
    return result


STAGE_FUNCTIONS = {"environment": stage_environment, "tests": stage_tests, "agreement": stage_agreement,
                   "throughput": stage_throughput, "report": stage_report, "training": stage_training}


# --- targets and the markdown ---------------------------------------------------------------

def _number(text) -> float | None:
    try:
        return float(str(text).replace(",", ""))
    except ValueError:
        return None


def targets(results: dict) -> list[dict]:
    """The issue's targets, each with the figure measured for it (None where its stage has none)."""
    stages = results["stages"]
    train_rows = [r for t in stages.get("throughput", {}).get("train", {}).get("tables", []) for r in t]
    by_batch = {r.get("batch"): r for r in train_rows}
    row100 = by_batch.get("100", {})
    graph_ratio = _number(row100.get("cg/a (time)"))
    speedup = 1 / graph_ratio if graph_ratio else None
    full = stages.get("report", {}).get("importance", {})
    ais = stages.get("report", {}).get("ais", {})
    burda = stages.get("training", {}).get("burda2015", {})

    def protocol_minutes(batch: str) -> float | None:
        row = by_batch.get(batch, {})
        rate = _number(row.get("(cg) CUDA graph img/s")) or _number(row.get("(c) inference.svi img/s"))
        return BURDA_EPOCHS * MNIST_TRAIN / rate / 60 if rate else None

    out = [
        {"target": "CUDA-graph step at batch 100 >= 3x the hand-written eager step (a/cg time)", "limit": 3.0,
         "measured": speedup, "met": speedup >= 3 if speedup else None},
        {"target": "full report, 10,000 images x K=5000 <= 10 s (the estimator's seconds, seconds_log_px)",
         "limit": 10.0, "measured": full.get("seconds_log_px"), "report_seconds": full.get("seconds"),
         "wall_seconds": full.get("wall_seconds"), "n_images": full.get("n_images"),
         "met": full["seconds_log_px"] <= 10 and full.get("n_images") == MNIST_TEST if full.get("seconds_log_px")
         else None},
        {"target": "AIS on 10,000 images at T=1000, C=16, projected <= 5 min", "limit": 300.0,
         "measured": ais.get("projected_test_set_seconds"),
         "met": ais["projected_test_set_seconds"] <= 300 if ais.get("projected_test_set_seconds") else None},
        {"target": "burda2015 protocol (3,280 epochs) at batch 100, projected <= 15 min", "limit": 15.0,
         "measured": burda.get("projected_protocol_minutes") or protocol_minutes("100"),
         "from_throughput_batch_100": protocol_minutes("100"), "from_throughput_batch_20": protocol_minutes("20"),
         "met": None},
    ]
    protocol = out[-1]
    if protocol["measured"] is not None:
        protocol["met"] = protocol["measured"] <= 15
    return out


def markdown(results: dict) -> str:
    stages = results["stages"]
    env = stages.get("environment", {})
    gpu = env.get("gpu") or f"no GPU ({env.get('cpu', 'CPU')})"
    lines = [f"# GPU check: {gpu}", "", f"`{results['command']}`; device {results['device']}"
             f"{' (tiny sizes)' if results['tiny'] else ''}, budget {results['budget_s']:.0f} s", ""]
    lines += ["## Environment", "", "| item | value |", "| --- | --- |"]
    for key in ("gpu", "gpu_memory_gib", "capability", "nvidia_smi", "cuda", "cpu", "cpu_cores", "python", "pyro"):
        if key in env:
            lines.append(f"| {key} | {env[key]} |")
    for package, version in (env.get("versions") or {}).items():
        lines.append(f"| {package} | {version} |")
    lines += ["", f"wheels: {json.dumps(results.get('wheels'))}", ""]
    for name in STAGES:
        stage = stages.get(name)
        if stage is None:
            continue
        lines += [f"## {name} ({stage.get('seconds', '?')} s)", ""]
        if "error" in stage:
            lines += [f"**error**: {stage['error']}", ""]
        lines += STAGE_MARKDOWN.get(name, lambda s: [])(stage)
    lines += ["## Targets", "", "| target | measured | met |", "| --- | --- | --- |"]
    for t in results.get("targets", []):
        measured = t["measured"]
        lines.append(f"| {t['target']} | {measured:.3g} |" if isinstance(measured, float) else
                     f"| {t['target']} | {measured} |")
        lines[-1] += f" {t['met']} |"
    return "\n".join(lines) + "\n"


def _tests_md(stage: dict) -> list[str]:
    summary = stage.get("summary", {})
    if "tests" not in summary:
        return [f"no junit summary: {summary.get('error', '')}", ""]
    lines = [f"{summary['passed']} passed, {summary['failures']} failed, {summary['errors']} errors, "
             f"{summary['skipped']} skipped in {summary['seconds']:.1f} s", "", "| test | outcome |", "| --- | --- |"]
    lines += [f"| {name} | {outcome} |" for name, outcome in summary["outcomes"].items()]
    return lines + [""]


def _agreement_md(stage: dict) -> list[str]:
    lines = []
    agree = stage.get("importance_cpu_vs_device")
    if agree:
        lines += [f"IS log p(x), K={agree['num_samples']}, {agree['images']} images: CPU {agree['log_px_cpu']:.3f}, "
                  f"device {agree['log_px_device']:.3f}; per image max |diff| {agree['max_abs_difference']:.4f}, "
                  f"mean diff {agree['mean_difference']:.4f} (se {agree['se_of_mean_difference']})", ""]
    tol = stage.get("tolerances", {})
    for key, label in (("compile_check", f"compiled vs plain loss (COMPILE_RTOL {tol.get('COMPILE_RTOL')})"),
                       ("graph_check", f"CUDA graph vs plain step (GRAPH_RTOL {tol.get('GRAPH_RTOL')}, "
                                       f"UPDATE_RTOL {tol.get('UPDATE_RTOL')})")):
        rows = stage.get(key)
        if isinstance(rows, list) and rows:
            cols = list(rows[0])
            lines += [f"{label}: relative differences", "", "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
            lines += ["| " + " | ".join(f"{r[c]:.2g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |"
                      for r in rows]
            lines.append("")
        elif isinstance(rows, dict):
            lines += [f"{label}: {rows.get('error')}", ""]
    return lines


def _throughput_md(stage: dict) -> list[str]:
    lines = []
    for name in ("train", "eval", "ais"):
        part = stage.get(name)
        if not part:
            continue
        lines += [f"### {name}: `{part['command']}` ({part['seconds']} s)", ""]
        if "error" in part:
            lines += [f"**error**: {part['error']}", ""]
        lines += [line for line in part["output"].splitlines() if line.startswith(("|", "machine:"))] + [""]
    return lines


def _report_md(stage: dict) -> list[str]:
    lines = []
    full = stage.get("importance")
    if full:
        lines += [f"`{full['command']}`: wall {full['wall_seconds']} s, exit {full['exit']}", ""]
        if full.get("log_px"):
            lines += [f"{full['n_images']} images, K={full['num_samples']}: log p(x) {full['log_px']['mean']:.3f} ± "
                      f"{full['log_px']['se']:.3f} nats, ELBO {full['elbo']['mean']:.3f}; report seconds "
                      f"{json.dumps(full.get('seconds'))}", ""]
    ais = stage.get("ais")
    if ais and "seconds" in ais:
        lines += [f"AIS T={ais['num_steps']}, C={ais['num_chains']} on {ais['images']} images: {ais['seconds']:.1f} s, "
                  f"{ais['seconds_per_image']:.4f} s per image (10,000 images: {ais['projected_test_set_seconds']:.0f} s"
                  f" projected), log p(x) {ais['log_px']:.3f}, acceptance {ais['acceptance']:.2f}", ""]
    elif ais:
        lines += [f"AIS: {ais.get('error')}", ""]
    return lines


def _training_md(stage: dict) -> list[str]:
    lines = ["| run | command | exit | epochs (this run) | steps/s | images/s | test ELBO |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in ("default", "burda2015"):
        r = stage.get(name)
        if r:
            lines.append(f"| {name} | `{r['command']}` | {r['exit']} | {r['epochs']} ({r['epochs_this_run']}) | "
                         f"{r.get('steps_per_second', float('nan')):.1f} | {r.get('images_per_second', float('nan')):.0f}"
                         f" | {r.get('test_elbo', float('nan')):.2f} |")
    burda = stage.get("burda2015", {})
    if burda.get("projected_protocol_minutes"):
        lines += ["", f"burda2015: resumed from epoch {burda.get('resumed_from_epoch')}; the 3,280-epoch protocol at "
                      f"this rate: {burda['projected_protocol_minutes']:.1f} min"]
    return lines + [""]


STAGE_MARKDOWN = {"tests": _tests_md, "agreement": _agreement_md, "throughput": _throughput_md, "report": _report_md,
                  "training": _training_md}


if __name__ == "__main__":
    sys.exit(main())
