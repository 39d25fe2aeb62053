"""Choosing the torch device from `auto | cpu | cuda | cuda:N | mps`, with clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from snnrun.config import ConfigError, DeviceError

ALLOWED = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(spec: str, *, source: str | None = None, key: str = "device") -> torch.device:
    """The device to run on; `auto` takes CUDA, then MPS, then the CPU.

    Asking for a device this machine does not have is an error before any work starts.
    """
    spec = str(spec).strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if match:
        if not torch.cuda.is_available():
            raise DeviceError(f"{spec} is not available: this machine has no CUDA device (use cpu or auto)",
                              source=source, key=key)
        index = int(match.group(1) or 0)
        if index >= torch.cuda.device_count():
            raise DeviceError(f"{spec} is not available: this machine has {torch.cuda.device_count()} CUDA "
                              f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}", source=source, key=key)
        return torch.device("cuda", index)
    if spec == "mps":
        if not _mps_available():
            raise DeviceError("mps is not available on this machine (use cpu or auto)", source=source, key=key)
        return torch.device("mps")
    raise ConfigError(f"{spec!r} is not allowed; expected {ALLOWED}", source=source, key=key)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def available_memory() -> int | None:
    """Bytes of memory this process can still take: the kernel's MemAvailable, or less where a cgroup limits
    the process (a container, a batch job); None where neither can be read."""
    found = []
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text(encoding="ascii").strip()
        used = (cgroup / "memory.current").read_text(encoding="ascii").strip()
        if limit.isdigit() and used.isdigit():
            found.append(int(limit) - int(used))
    except OSError:
        pass
    return min(found) if found else None
