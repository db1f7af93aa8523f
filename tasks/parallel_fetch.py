"""One pool of threads per process for fetching many small objects (gallery photos, probes, a
folder dataset's photos) and decoding them: I/O and OpenCV release the GIL."""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()
# Fetch threads run below the model's priority: decoding then fills the cores' idle moments instead
# of stalling TensorFlow's parallel ops halfway through a batch (BENCHMARKS.md, matching: +6-17% on
# the shards' pipeline in 5 of 6 paired runs on 2 cores). Linux niceness is per thread (an absolute
# 10; threads they start inherit it); elsewhere the threads keep the default.
FETCH_NICENESS = 10


def _lower_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), FETCH_NICENESS)
    except (AttributeError, OSError):
        pass  # not Linux: the same results, a little slower


def fetch_pool(workers: int = 16) -> ThreadPoolExecutor:
    """One pool of fetch threads per process, shared by every shard it runs at once: concurrent
    shards split the connections instead of each opening 16 more."""
    with _pools_lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch",
                                                 initializer=_lower_priority)
        return _pools[workers]
