"""Seeds mixed from integers: every random choice of the data layer (the held-out split, the order of an epoch,
a dynamic binarisation), of a distributed run and of the estimators is seeded by a pure function of the integers
that name it (`seed_for`), the one mixer of the project.

The estimators key each draw by ``seed_for(seed, STREAM, index)``: the stream names what the draws are for (below),
the index the datapoint or block they belong to, so that estimates do not depend on how data are batched and no
two purposes share a random stream.
"""

#: Streams of `inference.estimators.ais`: images simulated for BDMC, start draws of the tuning and of the returned
#: pass, the momenta and uniforms of the tuning, returned and reverse passes, and a dequantized run's u.
AIS_SIMULATED, AIS_TUNING_START, AIS_START, AIS_TUNING, AIS_FORWARD, AIS_REVERSE, AIS_DEQUANTIZATION = range(7)
#: Streams of `inference.estimators.importance`: the guide's draws per block of particles, and a dequantized
#: report's u per block.
IMPORTANCE_DRAWS, IMPORTANCE_DEQUANTIZATION = 7, 8


def seed_for(*parts: int) -> int:
    """Mix integers into one 63-bit seed (deterministic across processes and runs)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0x7FFFFFFFFFFFFFFF
    return h
