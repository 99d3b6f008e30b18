"""Seeds derived from several numbers or names: each random stream of training, data and
evaluation (an epoch's order, one item's crop, a micro-batch's degradation, ...) gets its own.

:func:`mix_seed` mixes integers with :class:`numpy.random.SeedSequence`, after a stream tag
(one of the constants below) so that two streams never share a seed; :func:`seed_of` hashes
any printable parts (photo names, kinds) for the evaluation cases.
"""
from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["mix_seed", "seed_of", "EPOCH", "ITEM", "DEGRADATION", "GRADIENT_PENALTY", "SAMPLING", "CRITIC_SHIFT"]

# stream tags (the first entropy word; SeedSequence ignores trailing zeros, so the tag, never 0,
# comes first and each stream mixes a fixed number of integers)
EPOCH = 1                   # an epoch's dataset seed and sample order
ITEM = 2                    # one dataset item's crop and augmentation
DEGRADATION = 3             # the real-world degradation of a micro-batch
GRADIENT_PENALTY = 4        # the interpolation weights of the WGAN-GP penalty
SAMPLING = 5                # the encoder loss's sampled positions
CRITIC_SHIFT = 6            # the shifts of what the stage-2 critic sees (loss.disc_shift)


def mix_seed(stream: int, *ints: int) -> int:
    """A 63-bit seed from a stream tag and integers (any sign)."""
    words = [int(stream), *(int(i) % 2 ** 64 for i in ints)]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0]) >> 1


def seed_of(*parts) -> int:
    """A 63-bit seed from printable parts (names, sizes, kinds): SHA-256 of their text."""
    return int.from_bytes(hashlib.sha256(",".join(map(str, parts)).encode()).digest()[:8], "little") >> 1
