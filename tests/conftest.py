"""Fixtures shared by every test."""

from __future__ import annotations

import gc
import os

# XLA:CPU's intra-op thread pool deadlocks on small machines (jaxlib 0.10): a batched
# eigendecomposition (LAPACK through `jax::ParallelBatchMap`) runs on a pool worker, fans its
# batch out into the same pool and blocks on a counter; with two workers and two such operations
# in flight (a vmapped update that calls `eigvalsh` twice), every worker waits for a free worker
# and the test hangs at 0 % CPU (seen on this project's 2-core CI; docs/performance.md). Each
# xdist worker already has a core of its own, so the pool buys nothing here.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
).strip()

import jax  # noqa: E402  (after XLA_FLAGS: the flags are read when the CPU backend starts)
import pytest  # noqa: E402

# Every executable XLA:CPU compiles keeps its machine code in memory mappings of its own (about
# twenty for a CAME-Grad update, one per compiled code section), and JAX keeps every executable
# alive in its caches. One xdist worker compiles tens of thousands of programs over the default
# run, and once the process holds `vm.max_map_count` mappings (65,530 by default) the next
# compilation's mmap fails and XLA crashes the worker with a segmentation fault. (pytest-xdist
# 3.8 can then hang at the end of a `--dist loadfile` run instead of finishing.) Dropping JAX's
# caches once the mappings pass half the limit releases them.
_PROC_MAPS = "/proc/self/maps"
_MAX_MAP_COUNT = "/proc/sys/vm/max_map_count"


def _mapping_limit() -> int | None:
    try:
        with open(_MAX_MAP_COUNT) as limit_file:
            return int(limit_file.read())
    except (OSError, ValueError):
        return None  # not Linux: no such limit to stay under


def _mapping_count() -> int:
    with open(_PROC_MAPS, "rb") as maps_file:
        return maps_file.read().count(b"\n")


_CLEAR_ABOVE = None if (limit := _mapping_limit()) is None else limit // 2


# Reading /proc/self/maps costs up to ~30 ms at 30,000 mappings, so it is read every few tests;
# a few tests add a few thousand mappings at most, far less than the half left as margin.
_CHECK_EVERY = 8
_tests_since_check = 0


@pytest.fixture(autouse=True)
def _bounded_compiled_code():
    """After every few tests, drop JAX's compiled programs if the process holds too many
    mappings."""
    global _tests_since_check
    yield
    _tests_since_check += 1
    if _CLEAR_ABOVE is None or _tests_since_check < _CHECK_EVERY:
        return
    _tests_since_check = 0
    if os.path.exists(_PROC_MAPS) and _mapping_count() > _CLEAR_ABOVE:
        jax.clear_caches()
        gc.collect()
