"""Draw pictures of a trained model into RUN_DIR/figures (or --out): samples, reconstructions, the latent map,
interpolations, the manifold of a 2-d code, and the training curves.

The command line of `inference.reports.figures`, which says what each figure shows; its functions stay importable
from here.
"""

from __future__ import annotations

import argparse
import sys

from inference.reports.figures import (FIGURE_FILES, draw_run_figures, figures_for_run, interpolate,  # noqa: F401
                                       interpolation_pairs, latent_codes, manifold)
from pyro_vae.cli import ArgumentParser, add_import_flag, import_modules, positive_int, run_command
from pyro_vae.device import DEVICE_CHOICES

__all__ = ["FIGURE_FILES", "build_parser", "draw_run_figures", "figures_for_run", "interpolate", "interpolation_pairs",
           "latent_codes", "main", "manifold"]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m inference.figures", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("source", metavar="RUN_DIR_OR_CHECKPOINT", help="a run folder holding checkpoint.pt, or the file")
    p.add_argument("--out", help="figure folder (default RUN_DIR/figures)")
    p.add_argument("--test-limit", type=positive_int, metavar="N",
                   help="use the first N test images (default all) for latent.png")
    p.add_argument("--seed", type=int, default=0, help="seed of the prior samples")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument("--data-dir", help="dataset root, if not the one the run recorded")
    add_import_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m inference.figures``; returns the exit status."""
    args = build_parser().parse_args(argv)

    def command() -> int:
        import_modules(args.imports)
        written = figures_for_run(args.source, args.out, args.test_limit, args.device, args.data_dir, args.seed)
        print("wrote " + ", ".join(str(p) for p in written))
        return 0

    return run_command(command, memory_fix="use --test-limit or --device cpu",
                       unfinished=lambda: "the figures written before it are kept")


if __name__ == "__main__":
    sys.exit(main())
