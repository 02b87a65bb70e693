"""Guards of a run: a lock on its directory, the fingerprint of its data, writable folders.

* :class:`RunLock`: an exclusive ``flock`` on ``save_dir/.lock``, held while a trainer writes
  the directory. The file records the holder's pid and host, for the message a second trainer
  gets. The kernel releases the lock when its process dies, however it dies, so a lock file left
  by a killed trainer is stale by construction and the next trainer simply takes it.
* :func:`data_fingerprint`: what a run records of its data, so that ``--resume`` and
  ``evaluate`` can refuse other data. For an annotation file: its SHA-256, its split sizes, and
  the number, total size and a digest of the sizes of the image files it names (a ``stat``
  each, no image is read). For synthetic data: a SHA-256 of the generated studies (ids, reports,
  labels, pixels), which also catches a change of the generator. Paths are not part of it, so
  data moved elsewhere and passed by its new location still matches.
* :func:`check_writable`: creates a folder and a file in it, so that an unwritable location is
  one clear error before any work is done.

Example:
  >>> import tempfile
  >>> from camegrad_jax.rrg.rundir import RunLock
  >>> folder = tempfile.mkdtemp()
  >>> with RunLock(folder):
  ...     RunLock(folder).acquire()
  Traceback (most recent call last):
  ...
  FileExistsError: ... is being written by process ...
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental.compilation_cache import compilation_cache

__all__ = [
    "LOCK_FILE",
    "RunLock",
    "check_writable",
    "data_fingerprint",
    "fingerprint_changes",
    "persistent_compilation_cache",
    "resolve_data_paths",
]

LOCK_FILE = ".lock"


@contextlib.contextmanager
def persistent_compilation_cache(folder: str | Path | None) -> Iterator[None]:
    """JAX's persistent compilation cache in ``folder`` for the block (None: left as it is).

    Afterwards the setting is what it was: a command run in-process (from a notebook or a
    test) does not leave every later compilation of the process writing to its cache.

    Examples:
      >>> import jax
      >>> from camegrad_jax.rrg.rundir import persistent_compilation_cache
      >>> before = jax.config.jax_compilation_cache_dir
      >>> with persistent_compilation_cache("/tmp/camegrad-doctest-cache"):
      ...     jax.config.jax_compilation_cache_dir
      '/tmp/camegrad-doctest-cache'
      >>> jax.config.jax_compilation_cache_dir == before
      True
    """
    if folder is None:
        yield
        return
    previous = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(folder))
    compilation_cache.reset_cache()  # The cache may have been checked (and off) already.
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)
        compilation_cache.reset_cache()


def check_writable(folder: str | Path, what: str) -> Path:
    """Create ``folder`` (and its parents) and check that a file can be written in it.

    Args:
      folder: the folder.
      what: what the folder is, for the message (e.g. ``"save directory"``).

    Returns:
      ``folder`` as a ``Path``.

    Raises:
      PermissionError: naming ``what``, the folder and the operating system's reason.
    """
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise PermissionError(
            f"cannot write to the {what} {path}: {error.strerror or error}"
        ) from error
    return path


class RunLock:
    """An exclusive lock on a run directory, held by one trainer at a time.

    Args:
      folder: the run directory (created if needed).

    Raises (from :meth:`acquire` and ``with``):
      FileExistsError: another live process holds the lock; the message names its pid and host.
    """

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise FileExistsError(
                f"{self.path.parent} is being written by process {holder}; wait for it to "
                "finish or choose another directory."
            ) from None
        # The lock is the flock, not the file: a file left by a killed holder is reused.
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} on {socket.gethostname()}".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


def resolve_data_paths(config: Any) -> Any:
    """``config`` (a `TrainConfig`) with ``ann_path`` and ``image_dir`` absolute, so that the
    run finds its data from any working directory."""
    changes = {
        name: str(Path(value).expanduser().resolve())
        for name in ("ann_path", "image_dir")
        if (value := getattr(config, name)) is not None
    }
    return config.replace(**changes) if changes else config


def _annotation_fingerprint(ann_path: Path, image_dir: Path) -> dict[str, Any]:
    raw = ann_path.read_bytes()
    fingerprint: dict[str, Any] = {
        "source": "annotation",
        "annotation_sha256": hashlib.sha256(raw).hexdigest(),
    }
    try:
        annotation = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return fingerprint  # The loader names the fault; nothing more to record.
    if not isinstance(annotation, Mapping):
        return fingerprint
    sizes = hashlib.sha256()
    count = total = 0
    split_sizes = {}
    for split, entries in annotation.items():
        if not isinstance(entries, list):
            continue
        split_sizes[split] = len(entries)
        for entry in entries:
            paths = entry.get("image_path", []) if isinstance(entry, Mapping) else []
            for relative in paths if isinstance(paths, list) else []:
                try:
                    size = (image_dir / str(relative)).stat().st_size
                except OSError:
                    size = -1  # Missing: the loader names it.
                sizes.update(f"{relative}\0{size}\n".encode())
                count += 1
                total += max(size, 0)
    fingerprint.update(
        split_sizes=split_sizes, num_images=count, image_bytes=total, images=sizes.hexdigest()
    )
    return fingerprint


def _dataset_digest(dataset: Any) -> str:
    digest = hashlib.sha256()
    for name in sorted(dataset.splits):
        split = dataset.splits[name]
        digest.update(json.dumps([name, list(split.ids), list(split.reports)]).encode())
        for array in (split.labels, split.images):
            digest.update(str((array.dtype, array.shape)).encode())
            digest.update(np.ascontiguousarray(array))
    return digest.hexdigest()


def data_fingerprint(config: Any, dataset: Any = None) -> dict[str, Any]:
    """A cheap fingerprint of the data of ``config`` (a `TrainConfig`).

    Args:
      config: the run's configuration; for annotation data its ``ann_path`` (and
        ``image_dir``, default ``images/`` beside it) are read.
      dataset: for synthetic data, the generated `RRGDataset` (its studies are hashed).

    Returns:
      A JSON-ready dict; two fingerprints are equal when the data are (up to image files
      rewritten with the same sizes). :func:`fingerprint_changes` says how two differ.
    """
    if config.ann_path is None:
        if dataset is None:
            raise ValueError("`dataset` is needed for the fingerprint of synthetic data.")
        return {"source": "synthetic", "sha256": _dataset_digest(dataset)}
    ann_path = Path(config.ann_path)
    image_dir = (
        Path(config.image_dir) if config.image_dir is not None else ann_path.parent / "images"
    )
    try:
        return _annotation_fingerprint(ann_path, image_dir)
    except OSError as error:
        raise FileNotFoundError(
            f"cannot read the annotation file {ann_path}: {error.strerror or error}"
        ) from error


def fingerprint_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between a run's recorded data fingerprint and the current one, in words
    (empty when they match)."""
    if saved == current:
        return []
    if saved.get("source") != current.get("source"):
        return [f"the run used {saved.get('source')} data, these are {current.get('source')} data"]
    if saved["source"] == "synthetic":
        return [
            "the synthetic studies generated for this configuration differ from the run's "
            "(the generator changed since the run started)"
        ]
    changes = []
    if saved.get("annotation_sha256") != current.get("annotation_sha256"):
        old, new = saved.get("split_sizes", {}), current.get("split_sizes", {})
        sizes = [
            f"{split} {old.get(split)} -> {new.get(split)}"
            for split in sorted(set(old) | set(new))
            if old.get(split) != new.get(split)
        ]
        changes.append(
            "the annotation file's content changed"
            + (f" (studies: {', '.join(sizes)})" if sizes else "")
        )
    for key, what in (("num_images", "image files"), ("image_bytes", "bytes of images")):
        if saved.get(key) != current.get(key):
            changes.append(f"{what}: {saved.get(key)} -> {current.get(key)}")
    if not changes:
        changes.append("the sizes of some image files changed")
    return changes
