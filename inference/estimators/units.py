r"""What a report's log p(x) is, and so whether it has bits per dimension (issue 26).

Papers report -log2 P(x) / D of the *discrete* image, D = C x H x W. Which
number a report's log p(x) is depends on the likelihood and the data:

- ``binary``: a pmf over 0/1 pixels (Bernoulli on binarised images): log P(x) of the binary image;
- ``discrete``: a pmf over the integer levels 0..2^b - 1 (``discretized-logistic``, ``beta-binomial``, or a
  user's model whose observed site has a discrete support): log P(x) of the b-bit image;
- ``dequantized-bound``: a density on [0, 1) trained on (x + u) / 2^b (``--dequantize uniform``); the report's
  estimate, with u drawn with the particles, is E[log-mean-exp of p((x + u) / 2^b, z) / q] - D b log 2 <=
  log P(x) (Theis et al. 2016): a lower bound on the discrete image's log-probability, so its NLL and bits/dim
  are upper bounds;
- ``density``: a density on [0, 1] of grey levels scaled to [0, 1], not dequantized: a log-density, which has
  no bits/dim (it changes with the scale of x, and can be positive); the report says so in one line.

For the first three, ``nll = -mean log P(x)`` nats per image and ``bits_per_dim = nll / (D ln 2)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from inference.estimators.predictive import observation_is_discrete

BITS_PER_DIM_KINDS = ("binary", "discrete", "dequantized-bound", "density")


def bits_per_dim_kind(model: Callable, guide: Callable, x: torch.Tensor, binarize: str, dequantize: str) -> str:
    """The kind (`BITS_PER_DIM_KINDS`) of the log p(x) that ``model`` gives images ``x [N, D]`` (as the report
    scores them: integer levels for discrete and dequantized runs), read from the observed site's support."""
    if dequantize == "uniform":
        return "dequantized-bound"
    if not observation_is_discrete(model, guide, x[:1]):
        return "density"
    binary = binarize != "none" or bool(((x == 0) | (x == 1)).all())
    return "binary" if binary else "discrete"


def bits_per_dim(nll: float, dim: int, kind: str) -> float | None:
    """-log2 P(x) / D for an NLL of ``nll`` nats per image of ``dim`` values; None for a ``density``."""
    return None if kind == "density" else nll / (dim * math.log(2))


def kind_line(kind: str, bit_depth: int | None = None) -> str:
    """One sentence on what the report's log p(x) is, for report.md."""
    b = f"{bit_depth}-bit " if bit_depth else ""
    return {
        "binary": "log p(x) is the log-probability of the binary image: bits/dim = NLL / (D ln 2), as papers "
                  "count them for binarised data.",
        "discrete": f"log p(x) is the log-probability of the discrete {b}image (a pmf over its integer levels): "
                    "bits/dim = NLL / (D ln 2), comparable with papers' bits/dim on the same data.",
        "dequantized-bound": f"log p(x) is a lower bound on the log-probability of the discrete {b}image: "
                             "E_u[log p((x + u) / 2^b)] - D b log 2 with u ~ U[0, 1)^D drawn with the particles "
                             "(Theis et al. 2016), so NLL and bits/dim are upper bounds.",
        "density": "log p(x) is a log-density of grey levels scaled to [0, 1], not a probability: no bits/dim, "
                   "not comparable with binarised-MNIST numbers or papers' bits/dim (train a discrete likelihood "
                   "or use --dequantize uniform for one).",
    }[kind]
