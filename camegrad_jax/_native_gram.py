"""The CPU Gram kernel (``_native/task_gram.cc``): compiled on first use, registered with XLA as
an FFI custom call, used by :mod:`camegrad_jax._tree` for float32 leaves on a CPU.

Why: forming G costs K² multiply-adds per column of the stack, so from a few tasks on it is bound
by arithmetic, and XLA:CPU's reductions use a small part of the CPU's rate on that skinny
product; the kernel tiles it in registers and uses XLA's intra-op threads
(``benchmarks/update_breakdown.py``; docs/performance.md, "The Gram kernel").

The kernel is C++ with portable vector extensions, built with the system's C++ compiler
(``$CXX``, else ``c++``/``g++``/``clang++``) for the host CPU (``-march=native``) against the XLA
FFI headers that jaxlib ships. The shared library is cached in ``$CAMEGRAD_JAX_CACHE`` (default
``~/.cache/camegrad_jax``) under a name that hashes the source, jaxlib's version, the compiler and
the CPU's feature flags, so a cache shared between machines never hands one CPU another's code.
Where no compiler works, the kernel is simply absent and the XLA reductions serve (exact too, only
slower): :func:`native_gram_status` says which, and why. ``CAMEGRAD_JAX_NATIVE_GRAM=0`` turns the
kernel off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

_SOURCE = Path(__file__).resolve().parent / "_native" / "task_gram.cc"
_TARGET = "camegrad_jax_task_gram_f32"
_SYMBOL = "CamegradTaskGramF32"
_DISABLE_VARIABLE = "CAMEGRAD_JAX_NATIVE_GRAM"


def _cache_dir() -> Path:
    configured = os.environ.get("CAMEGRAD_JAX_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "camegrad_jax"


def _compiler() -> str | None:
    candidates = [os.environ.get("CXX"), "c++", "g++", "clang++"]
    return next((path for c in candidates if c and (path := shutil.which(c))), None)


def _cpu_features() -> str:
    """The CPU's feature flags (Linux), else the machine name: part of the cache key, since the
    library is compiled with -march=native."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _build(compiler: str) -> Path:
    import jaxlib

    source = _SOURCE.read_bytes()
    key = hashlib.sha256(
        b"\0".join(
            [source, jaxlib.__version__.encode(), compiler.encode(), _cpu_features().encode()]
        )
    ).hexdigest()[:16]
    library = _cache_dir() / f"task_gram-{key}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    # Compile to a temporary name and rename: processes that build at the same time (test
    # workers) each get a whole library, and the last rename wins.
    with tempfile.TemporaryDirectory(dir=library.parent) as scratch:
        built = Path(scratch) / library.name
        command = [
            compiler,
            "-O3",
            "-march=native",
            "-std=c++17",
            "-ffp-contract=fast",
            "-shared",
            "-fPIC",
            "-w",
            f"-I{jax.ffi.include_dir()}",
            str(_SOURCE),
            "-o",
            str(built),
        ]
        subprocess.run(command, check=True, capture_output=True, timeout=300)
        os.replace(built, library)
    return library


@functools.cache
def _register(library: Path) -> None:
    """Loads the library and registers its handler with XLA, once per library file."""
    handler = getattr(ctypes.CDLL(str(library)), _SYMBOL)
    jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(handler), platform="cpu")


@functools.cache
def _load() -> tuple[bool, str]:
    """(available, why): compiles, loads and registers the kernel once per process."""
    if os.environ.get(_DISABLE_VARIABLE, "1") == "0":
        return False, f"turned off by {_DISABLE_VARIABLE}=0"
    compiler = _compiler()
    if compiler is None:
        return False, "no C++ compiler found ($CXX, c++, g++ or clang++)"
    try:
        _register(_build(compiler))
    except subprocess.CalledProcessError as error:
        message = error.stderr.decode(errors="replace").strip().splitlines()
        return False, f"compiling {_SOURCE.name} failed: {message[-1] if message else error}"
    except (OSError, RuntimeError, AttributeError, subprocess.TimeoutExpired) as error:
        # RuntimeError: no home directory to cache in (Path.home()), among others.
        return False, f"loading the kernel failed: {error}"
    return True, f"compiled with {compiler}, cached in {_cache_dir()}"


def native_gram_status() -> str:
    """Whether the CPU Gram kernel is in use, and why (or why not).

    Examples:
      >>> from camegrad_jax import native_gram_status
      >>> isinstance(native_gram_status(), str)
      True
    """
    available, why = _load()
    return ("in use: " if available else "not in use: ") + why


def available() -> bool:
    return _load()[0]


@jax.custom_jvp
def task_gram_f32(flat: jax.Array) -> jax.Array:
    """G = flat · flatᵀ for a (K, n) float32 array, by the kernel (check :func:`available`)."""
    if not available():
        raise RuntimeError(f"The CPU Gram kernel is {native_gram_status()}.")
    num_tasks = flat.shape[0]
    call = jax.ffi.ffi_call(
        _TARGET,
        jax.ShapeDtypeStruct((num_tasks, num_tasks), jnp.float32),
        vmap_method="sequential",
    )
    return call(flat)


@task_gram_f32.defjvp
def _task_gram_jvp(primals, tangents):
    # d(X Xᵀ) = dX Xᵀ + X dXᵀ, in XLA ops, so that jvp, grad and vmap of G still work.
    (flat,), (tangent,) = primals, tangents
    cross = jnp.einsum("kn,jn->kj", tangent, flat, preferred_element_type=jnp.float32)
    return task_gram_f32(flat), cross + cross.T
