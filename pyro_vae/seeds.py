"""Seeds mixed from integers: every random choice of the data layer (the held-out split, the order of an epoch,
a dynamic binarisation) and of a distributed run is seeded by a pure function of the integers that name it."""


def seed_for(*parts: int) -> int:
    """Mix integers into one 63-bit seed (deterministic across processes and runs)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0x7FFFFFFFFFFFFFFF
    return h
