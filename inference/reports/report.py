r"""The marginal-likelihood report of a trained model (``python -m inference.evaluate RUN_DIR_OR_CHECKPOINT``).

Loads a checkpoint, estimates log p(x) for each test image by importance
sampling with K draws from the amortised guide (`inference.estimators.importance`),
optionally decomposes the ELBO gap on a subset (`inference.estimators.gaps`), and writes

- ``report.json``: the numbers (nats per image unless named otherwise);
- ``report.md``: the same as a table, with one line on whether PSIS k-hat
  says the estimate can be trusted;
- ``khat.png``, ``gaps.png``, ``ladder.png``, and with AIS ``ais.png``.

With ``--ais-steps T`` it also runs annealed importance sampling
(`inference.estimators.ais`) on the first ``--ais-limit`` images, shown beside the ELBO
and importance sampling on the same images; with ``--bdmc N`` it simulates N
images from the model and brackets their log p(x) between forward and reverse
AIS at steps T/100, T/10 and T (the BDMC sandwich), which says how far AIS can
be off at this schedule.

Standard errors are over images (sd / sqrt(n)): they say how much the mean
would move on another test set of the same size, not the Monte Carlo error of
each image's estimate (which k-hat and ESS speak to).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import platform
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from inference.estimators.ais import TUNINGS, AISEstimate, AISSettings, ais_log_marginal, bdmc, dequantized_ais
from inference.estimators.active_units import active_units, collapse_warning, collapsed_sites
from inference.estimators.gaps import inference_gaps
from inference.estimators.importance import DEFAULT_LADDER, MarginalEstimate, estimate_log_marginal
from inference.estimators.rate_distortion import rate_distortion
from inference.estimators.units import bits_per_dim, bits_per_dim_kind, kind_line
from pyro_vae import checkpoint, distributed, figures
from pyro_vae.config import PRESETS, ModelConfig, TrainConfig
from pyro_vae.data import check_images, evaluation_images
from pyro_vae.images import dequantized
from pyro_vae.distributed import sharded_map
from pyro_vae.errors import ConfigError, DataError, EstimationError
from pyro_vae.paths import check_writable_dir
from pyro_vae.run_lock import RunLock, check_free
from pyro_vae.writes import write_failed, write_text_atomic

KHAT_GOOD, KHAT_BAD = 0.5, 0.7
#: The files a report writes into its folder.
REPORT_FILES = ("report.json", "report.md", "per_image.csv", "khat.png", "gaps.png", "ladder.png", "ais.png")


def _mean_se(values: torch.Tensor) -> dict[str, float]:
    n = len(values)
    se = values.std().item() / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": values.mean().item(), "se": se}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("torch", "pyro-ppl", "arviz", "arviz-stats", "numpy", "pyro-vae"):  # arviz-stats: whose k-hat
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def khat_summary(khat: torch.Tensor) -> dict[str, float | None]:
    """Median, 95th percentile and share above 0.7 of per-image k-hat (None when K is too small)."""
    finite = khat[~torch.isnan(khat)]
    if len(finite) == 0:
        return {"median": None, "p95": None, "frac_above_0_7": None}
    return {"median": torch.quantile(finite, 0.5).item(), "p95": torch.quantile(finite, 0.95).item(),
            "frac_above_0_7": (finite > KHAT_BAD).double().mean().item()}


def trust_line(summary: dict[str, float | None]) -> str:
    """One sentence on whether the estimate can be trusted (Yao et al. 2018 thresholds)."""
    if summary["median"] is None:
        return "k-hat could not be computed (too few samples): no statement on reliability."
    p95, frac = summary["p95"], summary["frac_above_0_7"]
    if p95 < KHAT_GOOD:
        return f"Reliable: k-hat is below {KHAT_GOOD} for at least 95% of images (95th percentile {p95:.2f})."
    if frac <= 0.01:
        return (f"Usable: {100 * frac:.1f}% of images have k-hat above {KHAT_BAD} (95th percentile {p95:.2f}); "
                "the mean is trustworthy, single images with high k-hat less so.")
    return (f"Unreliable: {100 * frac:.1f}% of images have k-hat above {KHAT_BAD}; their estimates have "
            "heavy-tailed weights and likely sit below log p(x). Raise K or improve the guide.")


@dataclass(frozen=True)
class EvaluateConfig:
    """What a report computes, and where: the options of ``python -m inference.evaluate`` (field ``x_y`` is flag
    ``--x-y``; ``bdmc_images`` is ``--bdmc``), with the same defaults.

    ``batch_size`` images are estimated at once; memory is about ``chunk_size x batch_size`` particles
    (``chunk_size=None``: all K at once). ``out`` defaults to ``RUN_DIR/report``. ``ais_steps`` T > 0 adds AIS with
    ``ais_chains`` chains on the first ``ais_limit`` images (default all), step sizes tuned by ``ais_tuning``
    (`inference.estimators.ais.TUNINGS`); ``bdmc_images`` N > 0 adds the BDMC sandwich on N simulated images. ``data_dir``: the dataset root, if not the one the run recorded (the only
    folder a missing dataset is downloaded into).
    """

    num_samples: int = 5000  # K importance samples per image
    chunk_size: int | None = 500
    batch_size: int = 100
    test_limit: int | None = None  # the first N test images (None: all)
    gaps: bool = False  # decompose the ELBO gap on the first gap_limit images (fits q* per image)
    gap_limit: int = 1000
    ais_steps: int = 0
    ais_chains: int = 16
    ais_limit: int | None = None
    ais_tuning: str = "pilot"
    bdmc_images: int = 0
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    out: str | Path | None = None

    def ais_settings(self, num_steps: int | None = None) -> AISSettings:
        """The `AISSettings` of ``--ais-chains``, ``--ais-tuning`` and ``--ais-steps`` (or ``num_steps``)."""
        return AISSettings(num_chains=self.ais_chains, num_steps=num_steps or self.ais_steps, tuning=self.ais_tuning)

    def validated(self) -> "EvaluateConfig":
        """``self``, or `ConfigError` naming the first option (as its flag) that cannot make a report."""
        _check_counts(num_samples=self.num_samples, chunk_size=self.chunk_size, batch_size=self.batch_size,
                      test_limit=self.test_limit, gap_limit=self.gap_limit, ais_chains=self.ais_chains,
                      ais_limit=self.ais_limit)
        _check_counts(minimum=0, ais_steps=self.ais_steps, bdmc=self.bdmc_images)
        if self.ais_tuning not in TUNINGS:
            raise ConfigError(f"--ais-tuning must be one of {', '.join(TUNINGS)}, got {self.ais_tuning!r}")
        if self.bdmc_images and not self.ais_steps:
            raise ConfigError("--bdmc needs --ais-steps T > 0: the sandwich is measured at that schedule")
        return self


@dataclass
class LoadedRun:
    """A checkpoint loaded for a report, on this process's device of the (torchrun) group."""

    path: Path  # the checkpoint file
    sha256: str  # of the very bytes that were loaded
    payload: dict[str, Any]
    model: torch.nn.Module
    config: TrainConfig
    device: torch.device
    group: distributed.Group
    out_dir: Path  # where the report goes, checked writable


def evaluate(source: str | Path, options: EvaluateConfig | None = None, *, images: torch.Tensor | None = None,
             progress: bool = True, **fields: Any) -> dict[str, Any]:
    """Write the report for the checkpoint at ``source`` (a file or a run folder); return ``report.json``'s dict.

    ``options``: what to compute (`EvaluateConfig`); ``fields``: `EvaluateConfig` fields by name, replacing
    those of ``options`` (``evaluate(run, num_samples=100, gaps=True)``). ``images`` (``[N, D]`` floats)
    replaces the run's test split: required for a run trained on images handed to `inference.svi.train` from
    Python. The report's ``checkpoint.sha256`` is the hash of the very bytes that were loaded.
    """
    started = time.perf_counter()
    if options is not None and not isinstance(options, EvaluateConfig):
        raise TypeError(f"evaluate's options must be an EvaluateConfig, got {type(options).__name__}; pass "
                        "num_samples and the others by name")
    options = dataclasses.replace(options or EvaluateConfig(), **fields).validated()
    run = load_run(source, options)
    x = report_images(run, options, images)
    with distributed.together("before the report"):  # checked; from here on the report folder is this run's
        lock = RunLock(run.out_dir, "the report").acquire() if run.group.is_main else None
    try:
        return _evaluate(run, x, options, progress, started)
    finally:
        if lock is not None:
            lock.release()


def _evaluate(run: LoadedRun, x: torch.Tensor, options: EvaluateConfig, progress: bool, started: float
              ) -> dict[str, Any]:
    """The estimates and the report of `evaluate`, with the report folder locked (rank 0)."""
    est = importance_estimate(run.model, x, options, progress, dequantize_bits=dequantize_bits(run))
    estimate_seconds = time.perf_counter() - started
    ais = (ais_estimate(run.model, x[:options.ais_limit], options, progress, dequantize_bits=dequantize_bits(run))
           if options.ais_steps else None)

    report = importance_entries(run, x, est, options)
    report["latent_sites"] = latent_sites_entry(run.model, model_images(run, x, options.seed), options)
    report["collapsed_sites"] = collapsed_sites(report["latent_sites"])  # named at the top of report.md
    gap_values = {"total (log p(x) - ELBO)": (est.log_px - est.elbo).tolist()}
    if ais is not None:
        report["ais"] = ais_entry(est, *ais, options)
        report["ais"]["bits_per_dim"] = bits_per_dim(-report["ais"]["log_px"]["mean"], x.shape[1],
                                                     report["bits_per_dim_kind"])
    if options.gaps:
        report["gaps"], gap_values = gaps_entry(run.model, x, est, ais, options, progress)
    sandwich = None
    if options.bdmc_images:
        report["bdmc"], sandwich = bdmc_entry(run.model, model_images(run, x[:1], options.seed), options, progress)
    report.update(run_entries(run, options, started, estimate_seconds, trust_line(report["khat"])))
    published = published_entry(run.config.to_dict())
    if published is not None:
        report["published"] = published

    # One report, written by rank 0 while the others wait: all ranks leave the process group together (a rank that
    # tore its gloo group down while another still worked was aborted in C++, now and then).
    with distributed.together("writing the report"):
        if run.group.is_main:
            try:
                write_report(run.out_dir, report, est, ais, sandwich, gap_values)
            except OSError as e:  # no space, quota, I/O: one line (`WriteFailed`, exit status 1), not a traceback
                raise write_failed(e.filename or run.out_dir, e, f"{run.path} is untouched",
                                   "free space and run the report again") from None
    return report


def load_run(source: str | Path, options: EvaluateConfig) -> LoadedRun:
    """The checkpoint at ``source`` read, hashed and built on this process's device (joining the torchrun group
    when launched by it), and the report folder checked writable before any estimate is run."""
    path = checkpoint.resolve_path(source)
    out_dir = Path(options.out) if options.out else path.parent / "report"
    group, device = distributed.setup(options.device)  # under torchrun: join the group, take this rank's device
    data = checkpoint.read_bytes(path)
    sha256 = hashlib.sha256(data).hexdigest()
    payload = checkpoint.parse(data, path, map_location=device)
    model = checkpoint.build_model(payload).to(device).eval()
    config = checkpoint.config_of(payload)
    if config.dequantize != "none" and options.gaps:
        raise ConfigError(f"{path} was trained on dequantized data: its report bounds log P(x) with u drawn with the "
                          "particles (and the AIS chains); the fit of q* per image in --gaps does not draw u yet: "
                          "drop --gaps")
    check_writable_dir(out_dir, files=REPORT_FILES)
    check_free(out_dir)  # another report being written there: say so before any estimate is run
    return LoadedRun(path, sha256, payload, model, config, device, group, out_dir)


def report_images(run: LoadedRun, options: EvaluateConfig, images: torch.Tensor | None = None) -> torch.Tensor:
    """The first ``test_limit`` images the report estimates, ``[N, D]`` floats on the run's device: ``images``,
    else the run's test split read again as it was trained on (binarised with its recorded seed); the integer
    levels 0..2^b - 1 for a discrete likelihood or a dequantized run (`pyro_vae.images.ENCODINGS`)."""
    config = run.config.to_dict()
    encoding = "unit" if run.config.encoding == "unit" else "levels"
    if images is not None:
        x = images.to(run.device)[:options.test_limit]
        if encoding == "levels":
            check_images(x, top=2 ** (run.config.bit_depth or 8) - 1, likelihood=run.config.model.likelihood)
    elif config["dataset"] == "custom":
        raise DataError(f"{run.path} was trained on images handed over from Python, not on a dataset that can be "
                        "loaded by name; evaluate it from Python: inference.evaluate.evaluate(RUN_DIR, images=x)")
    else:
        # download only into a folder the user named: the checkpoint's own data_dir is untrusted input
        x = evaluation_images(run.config.evaluation_data(options.data_dir, options.test_limit, encoding), run.device)
    x_dim = run.model.init_kwargs().get("x_dim")
    if x.dim() != 2 or (x_dim is not None and x.shape[1] != x_dim):
        raise DataError(f"the checkpoint's model takes {x_dim} pixels per image, but the {config['dataset']} test "
                        f"images have shape {list(x.shape[1:])}; evaluate it on the data it was trained on")
    return x


def dequantize_bits(run: LoadedRun) -> int | None:
    """b of a run trained on dequantized data (its report draws u with the particles), else None."""
    return (run.config.bit_depth or 8) if run.config.dequantize == "uniform" else None


def model_images(run: LoadedRun, x: torch.Tensor, seed: int) -> torch.Tensor:
    """``x`` as the model takes it: a dequantized run's levels dequantized once by a draw of u seeded by
    ``seed`` (for the per-site rates and active units); otherwise ``x`` itself."""
    bits = dequantize_bits(run)
    if bits is None:
        return x
    return dequantized(x, torch.Generator(device=x.device).manual_seed(seed), bits)


def importance_estimate(model: torch.nn.Module, x: torch.Tensor, options: EvaluateConfig,
                        progress: bool, dequantize_bits: int | None = None) -> MarginalEstimate:
    """Importance sampling with K = ``num_samples`` draws from the guide for every image of ``x``, ``batch_size``
    images at a time, shared over the torchrun group; each batch seeded by its index (the same at any number of
    processes). ``dequantize_bits`` b: ``x`` are levels of a dequantized run, and u is drawn with the particles
    (`inference.estimators.importance.dequantized_log_weights_chunk`)."""
    num_samples, batch_size = options.num_samples, options.batch_size

    def estimate_batch(batch: tuple[int, torch.Tensor]) -> MarginalEstimate:
        i, xb = batch
        try:
            return estimate_log_marginal(model.model, model.guide, xb, num_samples, options.chunk_size,
                                         DEFAULT_LADDER, seed=options.seed + i, dequantize_bits=dequantize_bits)
        except EstimationError:
            raise
        except ValueError as e:  # a distribution refused its parameters: the network output NaN or inf
            raise EstimationError(f"the model gives invalid distribution parameters on test images {i * batch_size}.."
                                  f"{i * batch_size + len(xb) - 1} ({' '.join(str(e).split())[:120]}); its "
                                  "parameters are unusable (a diverged or damaged checkpoint)") from None

    batches = list(enumerate(x.split(batch_size)))
    return MarginalEstimate.concat(sharded_map(estimate_batch, batches, progress and f"log p(x), K={num_samples}"))


def importance_entries(run: LoadedRun, x: torch.Tensor, est: MarginalEstimate,
                       options: EvaluateConfig) -> dict[str, Any]:
    """The report's first entries: what was estimated on which images, and importance sampling's numbers
    (log p(x), NLL, bits/dim and what kind of number it is (`inference.estimators.units`), the ELBO and its gap, the IWAE
    ladder, k-hat, ESS)."""
    config = run.config.to_dict()
    n_images, x_dim = x.shape
    log_px = _mean_se(est.log_px)
    kind = bits_per_dim_kind(run.model.model, run.model.guide, model_images(run, x, options.seed), config["binarize"],
                             run.config.dequantize)
    return {
        "dataset": config["dataset"],
        "split": "test",
        "n_images": n_images,
        "dim": x_dim,
        "binarize": config["binarize"],
        "dequantize": run.config.dequantize,
        "bit_depth": run.config.bit_depth,
        "test_seed": config["test_seed"],
        "num_samples": options.num_samples,
        "log_px": log_px,
        "nll": -log_px["mean"],
        "bits_per_dim": bits_per_dim(-log_px["mean"], x_dim, kind),
        "bits_per_dim_kind": kind,
        "elbo": _mean_se(est.elbo),
        "elbo_gap": _mean_se(est.log_px - est.elbo),
        "iwae_ladder": {str(k): v.mean().item() for k, v in est.iwae.items()},
        "khat": khat_summary(est.khat),
        "ess": {"mean": est.ess.mean().item()},
    }


def latent_sites_entry(model: torch.nn.Module, x: torch.Tensor, options: EvaluateConfig) -> dict[str, Any]:
    """The report's ``latent_sites`` entry: for every latent site of the guide (each stochastic layer), its share of
    the rate (one draw per image, `inference.estimators.rate_distortion`; nats per image) and Burda et al.'s active units
    (`inference.estimators.active_units`), over the report's images."""
    rate = rate_distortion(model.model, model.guide, x, seed=options.seed, batch_size=options.batch_size)
    activity = active_units(model.model, model.guide, x, seed=options.seed)
    return {name: {"rate": _mean_se(rate.site_rates[name]), "units": activity[name].units,
                   "active_units": activity[name].active, "activity_threshold": activity[name].threshold}
            for name in activity}


def ais_entry(est: MarginalEstimate, estimate: AISEstimate, seconds: float, options: EvaluateConfig) -> dict[str, Any]:
    """The report's ``ais`` entry: AIS beside the ELBO and importance sampling on the images AIS ran on."""
    m = len(estimate.log_px)
    return {
        "log_px": _mean_se(estimate.log_px),
        "elbo_gap": _mean_se(estimate.log_px - est.elbo[:m]),
        "elbo": _mean_se(est.elbo[:m]),
        "importance": _mean_se(est.log_px[:m]),
        "mc_se": {"mean": estimate.se.mean().item()},
        "n_images": m,
        "num_steps": options.ais_steps,
        "num_chains": options.ais_chains,
        "leapfrog_steps": estimate.leapfrog_steps,
        "acceptance": None if options.ais_steps == 1 else estimate.acceptance.mean().item(),
        "tuning": estimate.tuning,
        "compiled": estimate.compiled,
        "compiled_form": estimate.compiled_form,
        "gradient_evaluations": estimate.gradient_evaluations,
        "seconds": seconds,
    }


def _compiled_as(ais: dict) -> str:
    """How the report's AIS potential ran, in words (a report written before ``compiled_form`` says less)."""
    if not ais["compiled"]:
        return "uncompiled"
    return {"graphs": "compiled with its gradients (graphs)", "traced": "traced"}.get(ais.get("compiled_form"),
                                                                                      "compiled")


def gaps_entry(model: torch.nn.Module, x: torch.Tensor, est: MarginalEstimate,
               ais: tuple[AISEstimate, float] | None, options: EvaluateConfig,
               progress: bool) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """The report's ``gaps`` entry (Cremer et al. 2018) on the first ``gap_limit`` images, and the per-image gaps
    that ``gaps.png`` draws. One log p(x) for all three gaps: the best estimate computed on these images
    (importance sampling from q or from q*, or AIS where it ran on all of them)."""
    m = min(options.gap_limit, len(x))
    found = sharded_map(
        lambda batch: inference_gaps(model, batch[1], est.slice(batch[0], batch[0] + len(batch[1])),
                                     num_samples=options.num_samples, seed=options.seed),
        list(zip(range(0, m, options.batch_size), x[:m].split(options.batch_size))), progress and "inference gaps")
    candidates = {"importance sampling from q": est.log_px[:m],
                  "importance sampling from q*": torch.cat([g.log_px for g in found])}
    if ais is not None and len(ais[0].log_px) >= m:
        candidates[f"AIS, {options.ais_steps} steps"] = ais[0].log_px[:m]
    source, best = max(candidates.items(), key=lambda item: item[1].mean().item())
    elbo_q = torch.cat([g.elbo_amortized for g in found])
    elbo_q_star = torch.cat([g.elbo_optimal for g in found])
    approximation, amortization = best - elbo_q_star, elbo_q_star - elbo_q
    entry = {"approximation": approximation.mean().item(), "amortization": amortization.mean().item(),
             "total": (best - elbo_q).mean().item(), "n_images": m, "log_px_source": source,
             "max_steps_taken": max(g.steps for g in found), "q_star": found[0].family}
    values = {"total (log p(x) - ELBO)": (best - elbo_q).tolist(), "approximation": approximation.tolist(),
              "amortization": amortization.tolist()}
    return entry, values


def run_entries(run: LoadedRun, options: EvaluateConfig, started: float, estimate_seconds: float,
                trust: str) -> dict[str, Any]:
    """The report's closing entries: how long it took, where and how it ran, the model, the versions, the
    checkpoint's path and hash, and the ``trust`` line."""
    return {
        "seconds": time.perf_counter() - started,
        "seconds_log_px": estimate_seconds,
        "device": str(run.device),
        "processes": run.group.world_size,
        "chunk_size": options.chunk_size,
        "batch_size": options.batch_size,
        "seed": options.seed,
        "model": {"name": checkpoint.model_name(run.payload),
                  "class": f"{type(run.model).__module__}:{type(run.model).__qualname__}",
                  **run.payload["model_kwargs"]},
        "epochs_trained": run.payload["epoch"],
        "versions": _versions(),
        "checkpoint": {"path": str(run.path.resolve()), "sha256": run.sha256},
        "trust": trust,
    }


def published_entry(config: dict[str, Any]) -> dict[str, Any] | None:
    """The report's ``published`` entry: the published NLL of the run's preset, when the run is that preset's
    model on dynamically binarised images (else None)."""
    preset = PRESETS.get(config.get("preset") or "")
    if (preset is not None and preset.published_nll is not None and config["binarize"] == "dynamic"
            and ModelConfig.from_dict(config["model"]) == preset.model.resolved()):
        return {"preset": config["preset"], "nll": preset.published_nll, "source": preset.source}
    return None


def write_report(out_dir: Path, report: dict[str, Any], est: MarginalEstimate, ais: tuple[AISEstimate, float] | None,
                 sandwich: Any, gap_values: dict[str, list[float]]) -> None:
    """Write `REPORT_FILES` into ``out_dir``: the report as JSON and Markdown, the per-image table, the figures."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2) + "\n")  # whole, or the old one kept
    write_text_atomic(out_dir / "report.md", render_markdown(report))
    write_per_image(out_dir / "per_image.csv", est, None if ais is None else ais[0],
                    dim=None if report["bits_per_dim"] is None else report["dim"])
    figures.plot_khat(est.khat.tolist(), out_dir / "khat.png")
    figures.plot_gap_histogram(gap_values, out_dir / "gaps.png")
    figures.plot_ladder({int(k): v for k, v in report["iwae_ladder"].items()}, report["log_px"]["mean"],
                        out_dir / "ladder.png")
    if ais is None and sandwich is None:
        (out_dir / "ais.png").unlink(missing_ok=True)  # a stale figure of an earlier report would mislead
    else:
        difference = None if ais is None else (ais[0].log_px - est.log_px[: len(ais[0].log_px)]).tolist()
        ladder = None if sandwich is None else {int(k): v for k, v in report["bdmc"]["ladder"].items()}
        figures.plot_ais(difference, ladder, out_dir / "ais.png")


def write_per_image(path: Path, est: MarginalEstimate, ais: AISEstimate | None, dim: float | None = None) -> None:
    """One CSV row per test image, in test-split order: ``image`` (index), ``log_px``, ``elbo``, ``khat``, ``ess``,
    ``ais_log_px`` and ``ais_mc_se`` (empty beyond the images AIS ran on), ``bits_per_dim`` (-log_px / (D ln 2)
    for ``dim`` D; empty for a density, ``dim`` None). Nats; ESS in samples."""
    columns = [est.log_px, est.elbo, est.khat, est.ess]
    ais_columns, n_ais = ([], 0) if ais is None else ([ais.log_px, ais.se], len(ais.log_px))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "log_px", "elbo", "khat", "ess", "ais_log_px", "ais_mc_se", "bits_per_dim"])
        for i in range(len(est.log_px)):
            ais_row = [f"{c[i].item():.10g}" for c in ais_columns] if i < n_ais else ["", ""]
            bits = "" if dim is None else f"{-est.log_px[i].item() / (dim * math.log(2)):.10g}"
            writer.writerow([i, *(f"{c[i].item():.10g}" for c in columns), *ais_row, bits])


def ais_estimate(model: torch.nn.Module, x: torch.Tensor, options: EvaluateConfig,
                 progress: bool, dequantize_bits: int | None = None) -> tuple[AISEstimate, float]:
    """AIS from the guide on ``x`` in batches (randomness keyed by image index), with ``ais_steps`` steps and
    ``ais_chains`` chains; the estimate and its seconds. ``dequantize_bits`` b: ``x`` are levels of a dequantized
    run, each chain drawing its own u (`inference.estimators.ais.dequantized_ais`)."""
    started = time.perf_counter()
    settings, batch_size, steps = options.ais_settings(), options.batch_size, options.ais_steps

    def one(model_fn, guide_fn, xb, first):
        if dequantize_bits is None:
            return ais_log_marginal(model_fn, guide_fn, xb, settings, seed=options.seed, first_index=first)
        return dequantized_ais(model_fn, guide_fn, xb, dequantize_bits, settings, seed=options.seed, first_index=first)

    parts = sharded_map(lambda batch: one(model.model, model.guide, batch[1], batch[0]),
                        list(zip(range(0, len(x), batch_size), x.split(batch_size))), progress and f"AIS, T={steps}")
    return AISEstimate.concat(parts), time.perf_counter() - started


def bdmc_step_ladder(steps: int) -> list[int]:
    """The schedules BDMC runs at: T/100, T/10 and T (at least 1 step, each once)."""
    return sorted({max(1, steps // 100), max(1, steps // 10), steps})


def bdmc_entry(model: torch.nn.Module, like: torch.Tensor, options: EvaluateConfig,
               progress: bool) -> tuple[dict[str, Any], Any]:
    """The report's ``bdmc`` entry: the sandwich on ``bdmc_images`` images simulated from the model at
    ``ais_steps``, and its gap at the shorter schedules (`bdmc_step_ladder`); and the sandwich itself."""
    started = time.perf_counter()
    num_images, steps, chains = options.bdmc_images, options.ais_steps, options.ais_chains
    seed, batch_size = options.seed, options.batch_size
    ladder, sandwich = {}, None
    for t in tqdm(bdmc_step_ladder(steps), desc="BDMC", disable=not progress, leave=False):
        sandwich = bdmc(model.model, model.guide, num_images, like, options.ais_settings(t), seed=seed,
                        batch_size=batch_size)
        ladder[str(t)] = sandwich.gap.mean().item()
    gap = sandwich.gap
    entry = {"lower": _mean_se(sandwich.lower), "upper": _mean_se(sandwich.upper),
             "gap": {"mean": gap.mean().item(), "p95": torch.quantile(gap, 0.95).item()},
             "n_images": num_images, "num_steps": steps, "num_chains": chains, "tuning": options.ais_tuning,
             "ladder": ladder,
             "seconds": time.perf_counter() - started}
    return entry, sandwich


def _check_counts(minimum: int = 1, **counts: int | None) -> None:
    """`ConfigError` for a count below ``minimum`` (``None`` is allowed: no limit, or all K at once for ``chunk_size``)."""
    kind = "positive" if minimum == 1 else "non-negative"
    for name, value in counts.items():
        if value is None and name in ("chunk_size", "test_limit", "ais_limit"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"--{name.replace('_', '-')} must be a {kind} integer, got {value!r}")


def render_markdown(report: dict[str, Any]) -> str:
    """``report.md``: the report as tables a person reads."""
    def pm(entry: dict[str, float]) -> str:
        return f"{entry['mean']:.2f} ± {entry['se']:.2f}"

    k = report["khat"]
    on_images = f"on these {report['n_images']} images"
    fmt = lambda v, spec=".2f": "n/a" if v is None else format(v, spec)  # noqa: E731
    lines = [
        f"# Marginal-likelihood report: {report['dataset']} {report['split']} ({report['n_images']} images)",
        "",
        *[f"**{collapse_warning(site, report['latent_sites'][site]['units'], on_images)}**\n"
          for site in report.get("collapsed_sites", [])],
        f"Checkpoint `{report['checkpoint']['path']}` (sha256 `{report['checkpoint']['sha256'][:12]}…`), "
        f"{report['epochs_trained']} epochs; binarize `{report['binarize']}`, test seed {report['test_seed']}; "
        f"K = {report['num_samples']} importance samples from the amortised guide; device {report['device']}; "
        f"{report['seconds']:.1f} s.",
        "",
        "| quantity | value (nats per image, ± standard error over images) |",
        "| --- | --- |",
        f"| log p(x) (importance sampling, K = {report['num_samples']}) | {pm(report['log_px'])} |",
        (f"| NLL = -log p(x) | {report['nll']:.2f} |" if report.get("bits_per_dim_kind") != "density"
         else f"| -log p(x) (a log-density, not an NLL of the discrete image) | {report['nll']:.2f} |"),
        *([f"| bits per dim ({report.get('bits_per_dim_kind', 'binary')}) | {report['bits_per_dim']:.4f} |"]
          if report.get("bits_per_dim") is not None else []),
        f"| ELBO | {pm(report['elbo'])} |",
        f"| ELBO gap = log p(x) - ELBO | {pm(report['elbo_gap'])} |",
        f"| mean effective sample size | {report['ess']['mean']:.1f} of {report['num_samples']} |",
        "",
        "IWAE-k ladder (mean bound, nats per image):",
        "",
        "| k | " + " | ".join(report["iwae_ladder"]) + " |",
        "| --- | " + " | ".join("---" for _ in report["iwae_ladder"]) + " |",
        "| bound | " + " | ".join(f"{v:.2f}" for v in report["iwae_ladder"].values()) + " |",
        "",
        f"PSIS k-hat per image: median {fmt(k['median'])}, 95th percentile {fmt(k['p95'])}, "
        f"share above 0.7: {fmt(k['frac_above_0_7'], '.1%')}.",
        "",
        f"**{report['trust']}**",
    ]
    if report.get("latent_sites"):
        lines += ["", "Latent sites (rate: log q - log p of the site at one draw per image, nats per image; active "
                      "units: Cov_x(E_q[z_u]) above the threshold, Burda et al. 2015):", "",
                  "| site | rate | active units |", "| --- | --- | --- |"]
        lines += [f"| {name} | {pm(site['rate'])} | {site['active_units']} of {site['units']} |"
                  for name, site in report["latent_sites"].items()]
    if "ais" in report:
        a = report["ais"]
        lines += ["", f"On the first {a['n_images']} images, the three estimates side by side (nats per image, ± standard "
                      "error over images; each is a lower bound on log p(x) in expectation, the highest the best):", "",
                  "| estimator | log p(x) |", "| --- | --- |",
                  f"| ELBO | {pm(a['elbo'])} |",
                  f"| importance sampling, K = {report['num_samples']} | {pm(a['importance'])} |",
                  f"| AIS, T = {a['num_steps']}, {a['num_chains']} chains, {a['leapfrog_steps']} leapfrog steps | "
                  f"{pm(a['log_px'])} |", "",
                  f"AIS: mean HMC acceptance {fmt(a['acceptance'])}, mean Monte Carlo standard error per image "
                  f"{a['mc_se']['mean']:.3f} nats, ELBO gap {pm(a['elbo_gap'])}, {a['seconds']:.0f} s; "
                  f"{a['gradient_evaluations']:,} gradient evaluations per image (its chains, the "
                  f"{a['tuning']} tuning run included), potential {_compiled_as(a)}."]
        lines += ["", f"**{citable_sentence(report)}**"]
    if "bdmc" in report:
        b = report["bdmc"]
        lines += ["", f"BDMC on {b['n_images']} images simulated from the model ({b['num_chains']} chains): "
                      f"forward AIS {pm(b['lower'])} <= log p(x) <= reverse AIS {pm(b['upper'])}; gap mean "
                      f"{b['gap']['mean']:.2f}, 95th percentile {b['gap']['p95']:.2f} nats; by steps: "
                      + ", ".join(f"T = {t}: {g:.2f}" for t, g in b["ladder"].items()) + f"; {b['seconds']:.0f} s."]
    if report.get("bits_per_dim_kind", "binary") != "binary":
        lines += ["", f"Likelihood `{report['model'].get('likelihood', 'its own')}` on `binarize {report['binarize']}` "
                      f"images: {kind_line(report['bits_per_dim_kind'], report.get('bit_depth'))}"]
    if "published" in report:
        pub = report["published"]
        lines += ["", f"Published for preset `{pub['preset']}`: NLL {pub['nll']:.2f} ({pub['source']}); "
                      f"ours: NLL {report['nll']:.2f} after {report['epochs_trained']} epochs."]
    if "gaps" in report:
        g = report["gaps"]
        lines += [
            "",
            f"Inference gaps (Cremer et al. 2018) on the first {g['n_images']} images, nats per image:",
            "",
            "| gap | mean |",
            "| --- | --- |",
            f"| approximation: log p(x) - ELBO[q*] | {g['approximation']:.2f} |",
            f"| amortization: ELBO[q*] - ELBO[q] | {g['amortization']:.2f} |",
            f"| total: log p(x) - ELBO[q] | {g['total']:.2f} |",
            "",
            f"log p(x) for all three: {g['log_px_source']} (the best estimate computed on these images). "
            f"q*: {g['q_star']}.",
        ]
    return "\n".join(lines) + "\n"


def citable_sentence(report: dict[str, Any]) -> str:
    """The report's claim in one sentence: the AIS bound, and the BDMC bracket when it was run."""
    a = report["ais"]
    sentence = (f"log p(x) >= {a['log_px']['mean']:.2f} nats per image on average over the first {a['n_images']} "
                f"test images (AIS, {a['num_steps']} steps, {a['num_chains']} chains: a stochastic lower bound)")
    if "bdmc" in report:
        b = report["bdmc"]
        sentence += (f"; on {b['n_images']} images simulated from the model, BDMC brackets the truth within "
                     f"{b['gap']['mean']:.2f} nats on average (95th percentile {b['gap']['p95']:.2f}) at "
                     "this schedule; real images are usually harder than the model's own")
    return sentence + "."
