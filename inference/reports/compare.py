r"""Paired comparison of reports on the same test images (``python -m inference.compare BASELINE OTHER [OTHER ...]``).

Each argument is a report folder written by ``python -m inference.evaluate`` (holding ``report.json`` and
``per_image.csv``), or a run folder whose ``report/`` holds one. The first is the baseline. For every
other report, image by image, it takes the difference d_i = other_i - baseline_i of

- ``log_px``: the importance-sampling estimate of log p(x_i);
- ``elbo``: the ELBO of x_i;
- ``ais_log_px``: AIS's estimate, on the images where both reports ran AIS;

and gives the mean of d over the n images with its standard error sd(d) / sqrt(n), nats per image. Paired,
so the spread of log p(x) over images (tens of nats) cancels and what is left is the spread of the
difference: a variant is "better by 0.3 +- 0.05 nats" on these images, or the difference is within noise.
The standard error is over images (what another test set of the same size would give), as the report's;
it does not count each image's own Monte Carlo error.

The reports must be on the same test images: the same ``dataset``, ``split``, ``binarize``, ``test_seed``
(the seed of the test split's one binarisation) and ``n_images``, as ``report.json`` records them. A folder
or array dataset is split by settings ``report.json`` does not record (``test_fraction``, ``split_seed``,
``image_size``, ``channels``, ``channels_first``, ``held_out_from``): such reports are compared only where
``report.json`` holds those fields too, and refused otherwise. Images handed over from Python
(``dataset`` ``custom``) cannot be shown to be the same, and are refused.

Output: a Markdown table on stdout; ``--json`` prints the comparison as JSON instead, and ``--out FILE``
writes that JSON to FILE (as well as printing the table). The JSON::

    {"images": {"dataset", "split", "binarize", "test_seed", "n_images"},
     "baseline": {"report", "num_samples", "log_px": {"mean", "se"}, "elbo": {...}, "ais_log_px": {...} or null},
     "comparisons": [{"report", "num_samples", "log_px", "elbo", "ais_log_px",
                      "difference": {"log_px": {"mean", "sd", "se", "n"}, "elbo": {...}, "ais_log_px": {...} or null}}],
     "notes": [...]}

Bad input (a folder that is missing, holds no report or a damaged one, reports on other images) is one
line, ``error: ...``, on stderr, and exit status 2.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyro_vae.errors import ReportError
from pyro_vae.sources import DATASETS
from pyro_vae.writes import write_failed, write_text_atomic

#: What says which test images a report scored, as ``report.json`` records it.
IDENTITY = ("dataset", "split", "binarize", "test_seed", "n_images")
#: What chooses the test split of a folder or array source (`pyro_vae.sources.SourceOptions`).
SPLIT_SETTINGS = ("test_fraction", "split_seed", "image_size", "channels", "channels_first", "held_out_from")
#: The per-image columns compared (``per_image.csv``); the first two are on every image.
QUANTITIES = ("log_px", "elbo", "ais_log_px")


@dataclass
class Report:
    """One report folder, read: its ``report.json`` and the per-image columns of its ``per_image.csv``."""

    folder: Path
    summary: dict[str, Any]
    columns: dict[str, list[float | None]]  # quantity -> one value per image, None where absent (AIS)

    @property
    def name(self) -> str:
        return str(self.folder)


def read_report(folder: str | os.PathLike) -> Report:
    """The report in ``folder`` (or in ``folder/report``); `ReportError` naming what is missing or damaged."""
    given = Path(folder)
    if not given.is_dir():
        raise ReportError(f"{given}: no such folder" if not given.exists() else
                          f"{given} is not a folder; give the report's folder (it holds report.json)")
    path = given if (given / "report.json").exists() or not (given / "report" / "report.json").exists() \
        else given / "report"
    if not (path / "report.json").is_file():
        raise ReportError(f"{given} holds no report.json; write a report with python -m inference.evaluate RUN_DIR")
    try:
        summary = json.loads((path / "report.json").read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"{path / 'report.json'} cannot be read: {e}") from None
    except json.JSONDecodeError as e:
        raise ReportError(f"{path / 'report.json'} is damaged: not JSON ({e})") from None
    if not isinstance(summary, dict):
        raise ReportError(f"{path / 'report.json'} is damaged: not a JSON object")
    missing = [field for field in (*IDENTITY, "num_samples") if field not in summary]
    if missing:
        raise ReportError(f"{path / 'report.json'} lacks {', '.join(missing)}: it is not a report of "
                          "python -m inference.evaluate, or one too old to say which images it scored")
    n_images = summary["n_images"]
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
        raise ReportError(f"{path / 'report.json'} is damaged: n_images is {n_images!r}")
    return Report(path, summary, _read_per_image(path / "per_image.csv", n_images))


def _read_per_image(path: Path, n_images: int) -> dict[str, list[float | None]]:
    """The `QUANTITIES` of ``per_image.csv``, checked: one row per image, in order, finite where present."""
    if not path.is_file():
        raise ReportError(f"{path.parent} holds report.json but no per_image.csv; write the report again with "
                          "python -m inference.evaluate")
    columns: dict[str, list[float | None]] = {q: [] for q in QUANTITIES}
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            lacking = [c for c in ("image", "log_px", "elbo") if c not in header]
            if lacking:
                raise ReportError(f"{path} is damaged: no column {', '.join(lacking)} (header: {','.join(header)})")
            for row_number, row in enumerate(reader):
                line = row_number + 2
                if row.get("image") != str(row_number):
                    raise ReportError(f"{path} is damaged: line {line} is image {row.get('image')!r}, not {row_number}")
                for quantity in QUANTITIES:
                    text = row.get(quantity) or ""
                    if text == "" and quantity == "ais_log_px":
                        columns[quantity].append(None)
                        continue
                    try:
                        value = float(text)
                    except ValueError:
                        raise ReportError(f"{path} is damaged: {quantity} at line {line} is {text!r}, not a number") \
                            from None
                    if not math.isfinite(value):
                        raise ReportError(f"{path}: {quantity} of image {row_number} is {value}; a report with a "
                                          "non-finite estimate cannot be compared")
                    columns[quantity].append(value)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ReportError(f"{path} cannot be read: {' '.join(str(e).split())}") from None
    rows = len(columns["log_px"])
    if rows != n_images:
        raise ReportError(f"{path} has {rows} images but its report.json says {n_images}: the folder is damaged "
                          "(or mixes two reports); write the report again")
    return columns


def check_same_images(baseline: Report, other: Report) -> None:
    """`ReportError` unless ``other`` provably scored the test images ``baseline`` did (module doc)."""
    a, b = baseline.summary, other.summary
    differing = [f"{field} {b[field]!r} (baseline {a[field]!r})" for field in IDENTITY if a[field] != b[field]]
    if differing:
        hint = ("; evaluate both with the same --test-limit" if len(differing) == 1 and a["n_images"] != b["n_images"]
                else "; a paired comparison needs the same images")
        raise ReportError(f"{other.name} is not on the test images of {baseline.name}: {'; '.join(differing)}{hint}")
    dataset = a["dataset"]
    if dataset == "custom":
        raise ReportError(f"{baseline.name} and {other.name} scored images handed over from Python (dataset custom): "
                          "nothing in report.json says they are the same images")
    if dataset not in DATASETS:
        for report in (baseline, other):
            unrecorded = [s for s in SPLIT_SETTINGS if s not in report.summary]
            if unrecorded:
                raise ReportError(f"{report.name} cannot be shown to be on the same images as the others: its dataset "
                                  f"{dataset} is split by {', '.join(unrecorded)}, which its report.json does not "
                                  "record")
        differing = [f"{s} {b[s]!r} (baseline {a[s]!r})" for s in SPLIT_SETTINGS if a[s] != b[s]]
        if differing:
            raise ReportError(f"{other.name} is not on the test images of {baseline.name}: {'; '.join(differing)}")


def paired_difference(baseline: list[float | None], other: list[float | None]) -> dict[str, float | int] | None:
    """Mean, sd, standard error (sd / sqrt(n)) and n of other - baseline over the images where both have a
    value; None where there is none (sd and se are None for one image)."""
    summary = _summary([o - b for b, o in zip(baseline, other) if b is not None and o is not None])
    return None if summary is None else {"mean": summary["mean"], "sd": summary["sd"], "se": summary["se"],
                                         "n": summary["n"]}


def _summary(values: list[float]) -> dict[str, float | int | None] | None:
    """Mean, sd (n - 1 in the denominator), se = sd / sqrt(n) and n of ``values``; None for none."""
    n = len(values)
    if n == 0:
        return None
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "sd": sd, "se": None if sd is None else sd / math.sqrt(n), "n": n}


def _mean_se(values: list[float | None]) -> dict[str, float | int | None] | None:
    summary = _summary([v for v in values if v is not None])
    return None if summary is None else {"mean": summary["mean"], "se": summary["se"], "n": summary["n"]}


def _entry(report: Report) -> dict[str, Any]:
    return {"report": report.name, "num_samples": report.summary["num_samples"],
            **{q: _mean_se(report.columns[q]) for q in QUANTITIES}}


def compare(folders: list[str | os.PathLike]) -> dict[str, Any]:
    """The comparison of the reports in ``folders`` (the first the baseline) as the JSON of the module doc."""
    if len(folders) < 2:
        raise ReportError("give at least two report folders: the baseline, then one or more others")
    reports = [read_report(folder) for folder in folders]
    baseline, others = reports[0], reports[1:]
    for other in others:
        check_same_images(baseline, other)
    notes = []
    likelihood = lambda r: (r.summary.get("model") or {}).get("likelihood", "bernoulli")  # noqa: E731
    kinds = sorted({likelihood(r) for r in reports})
    if len(kinds) > 1:
        notes.append(f"the models' likelihoods differ ({', '.join(kinds)}): where one is a probability of the "
                     "discrete image and another a density, their log p(x) are not on one scale")
    if len({r.summary["num_samples"] for r in reports}) > 1:
        notes.append("the reports used different K: each importance-sampling estimate sits below log p(x) by "
                     "its own margin, smaller at larger K; compare at one K, or by AIS")
    comparisons = []
    for other in others:
        difference = {q: paired_difference(baseline.columns[q], other.columns[q]) for q in QUANTITIES}
        comparisons.append({**_entry(other), "difference": difference})
    return {"images": {field: baseline.summary[field] for field in IDENTITY}, "baseline": _entry(baseline),
            "comparisons": comparisons, "notes": notes}


def render_markdown(result: dict[str, Any]) -> str:
    """The comparison as a Markdown table with its header and notes."""
    images, base = result["images"], result["baseline"]

    def pm(entry: dict[str, Any] | None, signed: bool = False) -> str:
        if entry is None:
            return "n/a"
        text = f"{entry['mean']:+.3f}" if signed else f"{entry['mean']:.2f}"
        se = "n/a" if entry["se"] is None else f"{entry['se']:.3f}" if signed else f"{entry['se']:.2f}"
        return f"{text} ± {se}"

    def with_n(entry: dict[str, Any] | None) -> str:
        return pm(entry, True) + (f" (n = {entry['n']})" if entry is not None and entry["n"] != images["n_images"]
                                  else "")

    lines = [f"# Paired comparison on {images['n_images']} {images['dataset']} {images['split']} images "
             f"(binarize {images['binarize']}, test seed {images['test_seed']})", "",
             f"Baseline `{base['report']}`: log p(x) {pm(base['log_px'])}, ELBO {pm(base['elbo'])}"
             + (f", AIS {pm(base['ais_log_px'])} on {base['ais_log_px']['n']} images" if base["ais_log_px"] else "")
             + f" (K = {base['num_samples']}).", "",
             "Differences are other - baseline, nats per image: the mean of the per-image differences ± its standard "
             "error (sd / sqrt(n), over images); positive is better for the other report.", "",
             "| report | K | log p(x) | Δ log p(x) | Δ ELBO | Δ AIS log p(x) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for c in result["comparisons"]:
        d = c["difference"]
        lines.append(f"| `{c['report']}` | {c['num_samples']} | {pm(c['log_px'])} | {with_n(d['log_px'])} | "
                     f"{with_n(d['elbo'])} | {with_n(d['ais_log_px'])} |")
    if result["notes"]:
        lines += [""] + [f"Note: {note}." for note in result["notes"]]
    return "\n".join(lines) + "\n"


def write_comparison(path: str | os.PathLike, result: dict[str, Any]) -> None:
    """Write `compare`'s ``result`` as JSON to ``path``, whole or not at all (`pyro_vae.writes.write_text_atomic`):
    `ReportError` when its folder is missing or ``path`` is a folder, `WriteFailed` (exit status 1) when the
    write itself fails (a file already at ``path`` is then kept as it was)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ReportError(f"--out {path}: the folder {folder} does not exist")
    if path.is_dir():
        raise ReportError(f"--out {path} is a folder; name a file")
    try:
        write_text_atomic(path, json.dumps(result, indent=2) + "\n")
    except OSError as e:
        raise write_failed(path, e, "the reports compared are unchanged", "free space or choose another --out") from None
