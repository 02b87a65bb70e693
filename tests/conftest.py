"""Fixtures shared by every test."""

from __future__ import annotations

import gc
import os

import jax
import pytest

# XLA:CPU's intra-op thread pool deadlocks on small machines (jaxlib 0.10): a batched
# eigendecomposition large enough to be split (LAPACK through `jax::ParallelBatchMap`, e.g. a
# vmapped K = 8 update solving on all 255 supports) runs on a pool worker, schedules its chunks
# on the same pool and blocks until they are done. With two workers and two such operations in
# flight, every worker waits for a free one and the test hangs at 0 % CPU (seen on this
# project's 2-core CI; docs/performance.md). A pool of one worker runs every batch inline, and
# the pool's size is the process's CPU affinity when JAX starts its CPU backend: each xdist
# worker is pinned to a CPU of its own (at configuration, before any test module computes).
# This costs compile speed (XLA's code generation then runs on one thread too), measured at
# roughly a minute of the default run.


def pytest_configure(config):
    if not hasattr(os, "sched_getaffinity"):
        return  # not Linux
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None and getattr(config.option, "numprocesses", None):
        return  # the xdist controller: its workers, started after this, pin themselves
    cpus = sorted(os.sched_getaffinity(0))
    worker = workerinput["workerid"] if workerinput else "gw0"  # "gw<n>" under xdist
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    os.sched_setaffinity(0, {cpus[index % len(cpus)]})


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
    if _mapping_count() > _CLEAR_ABOVE:  # a limit was read, so this is Linux's /proc
        jax.clear_caches()
        gc.collect()
