r"""p(x|z) scored a tile of particles at a time: log-densities of many particles without their decoder outputs.

Importance sampling scores K particles of B images. Run as one batch, the decoder writes ``[K, B, D x P]``
floats to memory (157 MB for K = 500, B = 100, D = 784, P = 1), and every elementwise op of the likelihood's
log-density (and of the decoder's last activation) reads them back and writes its own copy: on a CPU those
memory passes cost more than the decoder's matrix products. `TiledObservation` keeps the latents instead;
its ``log_prob(x)`` runs the decoder and the log-density with its sum over pixels on a few particles at a
time, about ``TILE_ROWS`` (particle, image) rows, whose outputs stay in the cache, and keeps only the
``[K, B]`` log-densities. Nothing is re-derived: each tile is scored by the model's own ``observation``
(``likelihood(decoder(z_tile))``), so the values equal the untiled ones up to float32 rounding inside the
matrix products (at most a few 1e-6 relative, `tests/test_tiled.py`).

`tiled_observation` is what a model's program calls in place of ``observation(z)``: it tiles only when no
gradient is being recorded (estimators under ``torch.no_grad``; training, AIS and the gaps need gradients and
get the plain distribution, unchanged) and there are more than ``2 * TILE_ROWS`` rows. ``mean``, ``sample``
and the rest build the whole distribution on first use. `untiled` turns tiling off (benchmarks compare both).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from pyro.distributions import TorchDistribution

#: About how many (particle, image) rows one tile scores: 1024 rows x 784 pixels of float32 is 3.2 MB, in the
#: cache. On this project's CPU 1024 and 2048 ran fastest, 512 and 4096 about 10% slower
#: (`benchmarks/eval_throughput.py --tile-rows`).
TILE_ROWS = 1024
_enabled = True


@contextlib.contextmanager
def untiled() -> Iterator[None]:
    """Within it, `tiled_observation` returns the plain distribution (the estimator as it was before tiling)."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before


def tiled_observation(observation: Callable[[torch.Tensor], TorchDistribution], z: torch.Tensor,
                      event_dim: int = 1) -> TorchDistribution:
    """``observation(z)``, or a `TiledObservation` of it when no gradient is recorded and ``z`` holds more than
    ``2 * TILE_ROWS`` rows. ``z [..., *latent_event]``: the latents, ``event_dim`` dims of event on the right."""
    rows = math.prod(z.shape[: z.dim() - event_dim])
    if not _enabled or torch.is_grad_enabled() or rows <= 2 * TILE_ROWS:
        return observation(z)
    return TiledObservation(observation, z, event_dim)


class TiledObservation(TorchDistribution):
    """``observation(z)`` for latents ``z [N, ..., *latent_event]``, scored `TILE_ROWS` rows at a time along the
    leading batch dim (the particle plate's, where estimators put it).

    ``observation`` maps latents ``[n, ..., *latent_event]`` to a distribution with batch shape ``[n, ...]``,
    each row's distribution a function of that row's latents alone (as a decoder and a likelihood are).
    ``log_prob(value)`` broadcasts ``value`` against the batch shape, as any distribution's does, and returns
    ``[N, ...]``; every other use builds the whole distribution once (`full`).
    """

    arg_constraints: dict = {}

    def __init__(self, observation: Callable[[torch.Tensor], TorchDistribution], z: torch.Tensor,
                 event_dim: int = 1):
        self.observation, self.z, self.latent_event_dim = observation, z, event_dim
        self._probe = observation(z[:1])  # one slice of rows: the shapes and the support
        self._full: TorchDistribution | None = None
        batch_shape = (z.shape[0], *self._probe.batch_shape[1:])
        super().__init__(torch.Size(batch_shape), self._probe.event_shape, validate_args=False)

    @property
    def tile(self) -> int:
        """Leading-dim slices per tile: ``TILE_ROWS`` rows over the rows of one slice, at least 1."""
        per_slice = max(1, math.prod(self.batch_shape[1:]))
        return max(1, TILE_ROWS // per_slice)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        shape = torch.broadcast_shapes(value.shape, self.batch_shape + self.event_shape)
        if shape[: len(shape) - len(self.event_shape)] != self.batch_shape:
            return self.full.log_prob(value)  # value has batch dims of its own: no tiling
        value = value.expand(shape)  # a view: slicing it below copies nothing
        step = self.tile
        return torch.cat([self.observation(self.z[i : i + step]).log_prob(value[i : i + step])
                          for i in range(0, self.batch_shape[0], step)])

    @property
    def full(self) -> TorchDistribution:
        """The untiled ``observation(z)``, built on first use."""
        if self._full is None:
            self._full = self.observation(self.z)
        return self._full

    @property
    def support(self):
        return self._probe.support

    @property
    def has_rsample(self) -> bool:
        return self._probe.has_rsample

    @property
    def mean(self) -> torch.Tensor:
        return self.full.mean

    @property
    def variance(self) -> torch.Tensor:
        return self.full.variance

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self.full.sample(sample_shape)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self.full.rsample(sample_shape)

    def expand(self, batch_shape, _instance=None) -> TorchDistribution:
        if torch.Size(batch_shape) == self.batch_shape:  # Pyro's plates expand every site's distribution
            return self
        return self.full.expand(batch_shape)
