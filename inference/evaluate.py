"""Estimate log p(x) of a trained model's test images by importance sampling (and AIS, BDMC, the ELBO gaps when
asked), and write the report into RUN_DIR/report (or --out): report.json, report.md, per_image.csv and figures.

The command line of `inference.reports.report`, which says what each number is; its ``evaluate``,
``EvaluateConfig``, ``render_markdown`` and ``citable_sentence`` stay importable from here.
"""

from __future__ import annotations

import argparse
import sys

from inference.estimators.ais import TUNINGS
from inference.reports.report import EvaluateConfig, citable_sentence, evaluate, render_markdown  # noqa: F401
from pyro_vae import distributed
from pyro_vae.cli import ArgumentParser, add_import_flag, import_modules, non_negative_int, positive_int, run_command
from pyro_vae.device import DEVICE_CHOICES
from pyro_vae.stopping import interrupt_on_signals

__all__ = ["EvaluateConfig", "build_parser", "citable_sentence", "evaluate", "main", "options_from_args",
           "render_markdown"]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m inference.evaluate", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("source", metavar="RUN_DIR_OR_CHECKPOINT", help="a run folder holding checkpoint.pt, or the file")
    defaults = EvaluateConfig()
    p.add_argument("--num-samples", type=positive_int, default=defaults.num_samples,
                   help="K importance samples per image")
    p.add_argument("--chunk-size", type=positive_int, default=defaults.chunk_size, help="particles evaluated at once")
    p.add_argument("--batch-size", type=positive_int, default=defaults.batch_size, help="images estimated at once")
    p.add_argument("--test-limit", type=positive_int, metavar="N", help="use the first N test images")
    p.add_argument("--gaps", action="store_true", help="also decompose the ELBO gap (slow: fits q* per image)")
    p.add_argument("--gap-limit", type=positive_int, default=defaults.gap_limit,
                   help="images for the gap decomposition")
    p.add_argument("--ais-steps", type=non_negative_int, default=defaults.ais_steps, metavar="T",
                   help="annealed importance sampling with T intermediate distributions (0: off)")
    p.add_argument("--ais-chains", type=positive_int, default=defaults.ais_chains, metavar="C",
                   help="AIS chains per image")
    p.add_argument("--ais-limit", type=positive_int, metavar="N", help="run AIS on the first N images (default all)")
    p.add_argument("--ais-tuning", choices=TUNINGS, default=defaults.ais_tuning,
                   help="how AIS tunes its step sizes: pilot (a short run, then one pass) or two-pass (a full "
                        "tuning pass first, twice the cost)")
    p.add_argument("--bdmc", type=non_negative_int, default=defaults.bdmc_images, metavar="N",
                   help="BDMC sandwich on N images simulated from the model, at --ais-steps (0: off)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--device", choices=DEVICE_CHOICES, default=defaults.device)
    p.add_argument("--data-dir", help="dataset root, if not the one the run recorded")
    p.add_argument("--out", help="report folder (default RUN_DIR/report)")
    p.add_argument("--no-progress", action="store_true")
    add_import_flag(p)
    return p


def options_from_args(args: argparse.Namespace) -> EvaluateConfig:
    """The `EvaluateConfig` of the parsed flags (field ``x_y`` is flag ``--x-y``; ``bdmc_images`` is ``--bdmc``)."""
    return EvaluateConfig(num_samples=args.num_samples, chunk_size=args.chunk_size, batch_size=args.batch_size,
                          test_limit=args.test_limit, gaps=args.gaps, gap_limit=args.gap_limit,
                          ais_steps=args.ais_steps, ais_chains=args.ais_chains, ais_limit=args.ais_limit,
                          ais_tuning=args.ais_tuning, bdmc_images=args.bdmc, seed=args.seed, device=args.device,
                          data_dir=args.data_dir, out=args.out)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m inference.evaluate`` (also under ``torchrun``); returns the exit status
    (`pyro_vae.cli.run_command`). Under ``torchrun`` rank 0 alone prints the report."""
    args = build_parser().parse_args(argv)

    def command() -> int:
        import_modules(args.imports)
        with interrupt_on_signals():
            report = evaluate(args.source, options_from_args(args), progress=not args.no_progress)
        if distributed.current().is_main:  # before run_command leaves the process group
            print(render_markdown(report))
        return 0

    return run_command(command, memory_fix="lower --chunk-size or --batch-size",
                       unfinished=lambda: "the report was not finished")


if __name__ == "__main__":
    sys.exit(main())
