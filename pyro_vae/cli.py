"""What every command line here shares: bad input is one ``error: ...`` line on stderr and exit status 2
(a file that could not be written: the same one line, exit status 1)."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line, ``error: ...`` (no usage block), exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def error(problem: object) -> int:
    """Print ``error: PROBLEM`` as one line on stderr (any line breaks in it folded) and return its exit status:
    2 (bad input), or the error's own ``exit_status`` (1 for a file that could not be written,
    `pyro_vae.errors.WriteFailed`)."""
    print("error: " + " ".join(str(problem).split()), file=sys.stderr)
    return exit_status(problem)


def exit_status(problem: object) -> int:
    """The exit status of an error: its ``exit_status`` attribute, else 2."""
    return getattr(problem, "exit_status", 2)


def _int_at_least(text: str, low: int, kind: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a {kind} integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected a {kind} integer, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    return _int_at_least(text, 1, "positive")


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0."""
    return _int_at_least(text, 0, "non-negative")


def _sizes(text: str, flag: str, example: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag} takes comma-separated positive integers like {example}, "
                                         f"got {text!r}") from None
    if min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{flag} takes comma-separated positive integers like {example}, got {text!r}")
    return sizes


def latent_sizes(text: str) -> tuple[int, ...]:
    """argparse type of ``--latent-dims``: ``100,50`` -> (100, 50)."""
    return _sizes(text, "--latent-dims", "100,50")


def layer_widths(text: str) -> tuple[tuple[int, ...], ...]:
    """argparse type of ``--layer-hidden-dims``: layers split by ``/``, ``200,200/100,100`` -> ((200, 200), (100, 100))."""
    return tuple(_sizes(layer, "--layer-hidden-dims", "200,200/100,100 (layers split by '/')")
                 for layer in text.split("/"))
