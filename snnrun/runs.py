"""Run folders: one per run, named by time, never reused, written so nothing is half-done.

`StagedRun(parent, name)` builds a run in a hidden folder and moves it into place
under its final name only when everything is written, so a failed or interrupted
run leaves no half-written folder behind.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import errno
import functools
import importlib.metadata
import io
import json
import os
import platform
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from snnrun import __version__


def folder_name(name: str, now: _dt.datetime | None = None) -> str:
    """`<YYYY-MM-DD_HH-MM-SS>_<name>` with the name made safe for a path."""
    now = now or _dt.datetime.now()
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"
    return f"{now:%Y-%m-%d_%H-%M-%S}_{safe}"


def claim_run_dir(parent: Path, name: str, now: _dt.datetime | None = None, into: Path | None = None) -> Path:
    """Create and return a new, empty run folder; a clash in the same second gets a suffix. With `into`, that
    exact folder (a sweep member), which must not hold anything yet."""
    if into is not None:
        into.mkdir(parents=True, exist_ok=True)
        if any(into.iterdir()):
            raise FileExistsError(errno.EEXIST, "the folder is not empty; a run is never written over another",
                                  str(into))
        return into
    parent.mkdir(parents=True, exist_ok=True)
    base = folder_name(name, now)
    for attempt in range(1, 10_000):
        path = parent / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            path.mkdir()  # atomic: two processes can never both create the same folder
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free run folder name under {parent} for {base}")


class StagedRun:
    """Build a run in a hidden staging folder; move it to a new run folder only on success.

    with StagedRun(parent, name) as run:
        ...write into run.path...
    run.final  # the run folder; on any error the staging folder is removed instead

    With `into`, the run goes into that exact folder (which must be empty or missing) instead of a new one.
    """

    def __init__(self, parent: Path, name: str, into: Path | None = None):
        self.parent, self.name, self.into = Path(parent), name, into
        if into is not None:
            self.parent = Path(into).parent
        self.final: Path | None = None

    def __enter__(self) -> StagedRun:
        self.parent.mkdir(parents=True, exist_ok=True)
        self.path = make_staging_dir(self.parent)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        final = claim_run_dir(self.parent, self.name, into=self.into)
        try:
            os.replace(self.path, final)  # replaces the empty claimed folder
        except OSError:
            shutil.rmtree(self.path, ignore_errors=True)
            final.rmdir()
            raise
        self.final = final


def make_staging_dir(parent: Path) -> Path:
    """A new hidden, uniquely named folder in parent, created by mkdir and so with the permissions the umask
    gives (as the run folder it becomes should have; tempfile.mkdtemp would make it private, drwx------)."""
    for _ in range(10_000):
        path = parent / f".staging-{secrets.token_hex(6)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free staging folder name", str(parent))


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a file atomically: write(handle) fills a hidden temporary file in the same folder, which is flushed
    to disk and renamed over path, so a reader (or a crash) sees the old content or the new, never a torn one;
    then the folder is flushed too, so the rename itself survives a power cut. A failed write (e.g. a full disk)
    removes the temporary file and leaves the old content."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Flush a folder's entries to disk (after a rename in it). Skipped quietly where the system cannot open a
    folder (Windows) or its file system cannot flush one."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(handle)


def write_text(path: Path, text: str) -> None:
    """Write a UTF-8 text file atomically (`write_atomically`)."""
    write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


def ensure_writable(folder: Path) -> None:
    """Fail now, before any work, where files cannot be written into folder: no permission, a read-only file
    system, a file in the way, a full disk. Probes (and creates nothing in) folder's nearest existing ancestor."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file")
        with tempfile.TemporaryFile(dir=existing) as probe:
            probe.write(b"snnrun")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        raise OSError(error.errno, f"cannot write here ({error.strerror or error})", str(folder)) from None


def flatten(record: dict) -> dict:
    """A record with each list value spread into numbered columns: {"spikes": [a, b]} -> spikes_1, spikes_2."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, list):
            flat.update({f"{key}_{i + 1}": v for i, v in enumerate(value)})
        else:
            flat[key] = value
    return flat


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows as a CSV file (atomically); the columns are every key in order of first appearance."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, allow_nan=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


# env.json's name for a library -> its distribution (package metadata: nothing is imported to read a version;
# importing torchvision alone took 2 s, most of the default simulation's wall time)
RECORDED_DISTRIBUTIONS = {"torchvision": "torchvision", "matplotlib": "matplotlib", "typer": "typer",
                          "yaml": "PyYAML", "rich": "rich", "numba": "numba"}


def environment(device: str | None = None) -> dict:
    """Library versions, machine, command line and git commit: what a reader needs to reproduce a run."""
    import numpy
    import torch  # what the run used (torch.__version__ names the build, e.g. 2.14.1+cu130)

    versions = {"snnrun": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "numpy": numpy.__version__, **_installed_versions()}
    return {
        "command_line": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "cwd": os.getcwd(),
        "versions": versions,
        "device": device,
        "cuda_available": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "git_commit": _git_commit(),
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
    }


@functools.cache
def _installed_versions() -> dict[str, str]:
    """The versions of RECORDED_DISTRIBUTIONS that are installed (looked up once a process: a sweep's worker
    writes many runs)."""
    versions = {}
    for name, distribution in RECORDED_DISTRIBUTIONS.items():
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(distribution)
    return versions


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
