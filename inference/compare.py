"""Compare reports on the same test images: for each report after the first, the paired per-image difference from
the first (log p(x), the ELBO, AIS) with its standard error, as a table (--json: JSON; --out FILE: also to FILE).

The command line of `inference.reports.compare`, which says when reports count as being on the same images.
"""

from __future__ import annotations

import argparse
import json
import sys

from inference.reports.compare import compare, read_report, render_markdown, write_comparison  # noqa: F401
from pyro_vae.cli import ArgumentParser, add_import_flag, import_modules, run_command

__all__ = ["build_parser", "compare", "main", "read_report", "render_markdown"]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m inference.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", metavar="REPORT_DIR",
                   help="report folders (or run folders holding report/); the first is the baseline")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON instead of the table")
    p.add_argument("--out", metavar="FILE", help="also write the comparison as JSON to FILE")
    add_import_flag(p, "for scripts that pass it to every command (a comparison reads reports, not models)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m inference.compare``; returns the exit status (2 and one ``error:`` line for bad input)."""
    args = build_parser().parse_args(argv)

    def command() -> int:
        import_modules(args.imports)
        result = compare(args.reports)
        if args.out:
            write_comparison(args.out, result)
        print(json.dumps(result, indent=2) if args.json else render_markdown(result).rstrip("\n"))
        return 0

    return run_command(command, memory_fix="compare fewer reports at once")


if __name__ == "__main__":
    sys.exit(main())
