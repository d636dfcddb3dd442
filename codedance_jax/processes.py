"""Splitting host-side work over the processes of a multi-host job and gathering the results.

Both are no-ops on one process, so single-host code paths pay nothing for them.
"""
from __future__ import annotations

import pickle
from typing import Any

import jax
import numpy as np


def share(count: int) -> range:
    """This process's contiguous block of `count` items (blocks differ by at most one item)."""
    base, extra = divmod(count, jax.process_count())
    index = jax.process_index()
    start = index * base + min(index, extra)
    return range(start, start + base + (index < extra))


def gather_objects(obj: Any) -> list[Any]:
    """`obj` from every process, in process order (picklable host objects: trajectories, records).
    Two all-gathers: the pickled sizes, then the bytes padded to the largest."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    payload = np.frombuffer(pickle.dumps(obj), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int64(payload.size)))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: payload.size] = payload
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    return [pickle.loads(gathered[i, :size].tobytes()) for i, size in enumerate(sizes)]
