"""Every random stream of a run, derived from the run's seed in one place (a leaf module:
it imports nothing from ``ddpm``, and only NumPy: the prepare stage, which derives its data
split from a stream, starts without importing torch; ``ddpm.seeding`` makes torch generators
from these seeds).

A stream is named (``STREAMS``) and may be keyed (a torchrun rank); it holds items
0, 1, 2, ... (sample ``i``, training step ``s``). Its base seed comes from NumPy's
``SeedSequence`` with the stream's id and key as spawn key, so different seeds, streams and
keys never share a base by construction (only by a 2**-63 hash accident); item ``i``'s seed
is the base plus ``i``.

Why "plus i" and not one hash per item: torch's CPU generator (mt19937) keeps only the low 32
bits of a seed, so per-item hashes would collide by the birthday bound (about 40% for 60,000
samples). Consecutive seeds never collide within a stream, and two streams overlap only when
their 32-bit bases fall within the number of items of each other (about n / 2**32).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

# Stream ids are part of every seed: append new streams, never reorder or reuse an id.
STREAMS: dict[str, int] = {
    "init": 0,          # the network's initial weights
    "data_order": 1,    # item: epoch -> the permutation of the training set
    "train_noise": 2,   # item: step -> timesteps, noise and flips of the global batch
    "dropout": 3,       # key: rank; item: step
    "sample": 4,        # item: sample index
    "bound": 5,         # item: test example index (the bound's x_t draws)
    "metrics": 6,       # subsets and projections of the sample-quality metrics
    "bound_curve": 7,   # item: test example index (the learning curve's bound estimates)
    "classifier": 8,    # key 0: the feature classifier's initial weights; key 1, item: epoch -> its data order
    "data_split": 9,    # the random train/test split of a dataset prepared from files (an image folder)
    "ode_likelihood": 10,  # item: test example index (the ODE likelihood's dequantization and Hutchinson probe)
}

_SEED_SPACE = 2**63  # torch.manual_seed accepts any non-negative int64


def stream_seed(seed: int, stream: str, item: int = 0, key: Sequence[int] = ()) -> int:
    """The seed of ``item`` of ``stream`` (optionally keyed, e.g. by rank) for run ``seed``."""
    if int(item) < 0:
        raise ValueError(f"item must be >= 0, got {item}")
    return (_stream_base(int(seed), stream, tuple(int(k) for k in key)) + int(item)) % _SEED_SPACE


@functools.lru_cache(maxsize=256)
def _stream_base(seed: int, stream: str, key: tuple[int, ...]) -> int:
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; known: {', '.join(STREAMS)}")
    if seed < 0 or any(k < 0 for k in key):
        raise ValueError(f"seed and key must be >= 0, got seed={seed}, key={key}")
    sequence = np.random.SeedSequence(entropy=seed, spawn_key=(STREAMS[stream], *key))
    return int(sequence.generate_state(1, np.uint64)[0]) % _SEED_SPACE
