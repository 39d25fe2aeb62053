"""Event data sets (N-MNIST, SHD) as frames: each recording's events binned into `time_steps` equal windows.

The files are read in each set's own on-disk format, in the folders tonic uses (so `data.download: true` lets
tonic fetch them into the same place), with tonic's readers and transforms:

    N-MNIST  <root>/NMNIST/Train/<digit>/*.bin, <root>/NMNIST/Test/<digit>/*.bin: 5-byte event records
             (x, y, polarity and a 23-bit microsecond time stamp; Orchard et al. 2015), sensor 34 x 34 x 2
    SHD      <root>/SHD/shd_train.h5, <root>/SHD/shd_test.h5: HDF5 with spikes/times (s), spikes/units (0-699)
             and labels (0-19; Cramer et al. 2020), 700 channels

Binning: a recording's first `duration_ms` (from time 0) is cut into `time_steps` windows of duration/T each
(tonic's ToFrame with a fixed time window), events after it are dropped, and each frame counts the events per
pixel and polarity (per channel for SHD), capped at 255. A fixed window keeps one step one span of real time in
every sample, as a sensor delivers it; dividing each recording's own length into T bins would stretch short
recordings. `denoise_us` applies tonic's Denoise (N-MNIST) before binning.

The frames of a split are cached on first use as one .npy file under `<root>/<SET>/snnrun-frames/`, named by
everything that shapes them, so every later run and epoch reads one file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from snnrun.config import DataError
from snnrun.runs import write_atomically


@dataclass(frozen=True)
class EventSet:
    name: str  # as people know it
    folder: str  # under data.root (tonic's class name)
    shape: tuple[int, ...]  # one frame: (polarities, height, width) or (channels,)
    classes: int
    duration_ms: float  # default binned span: the recordings' usual length
    denoise: bool  # whether tonic's Denoise applies (events with x and y)


EVENT_SETS = {
    "nmnist": EventSet("N-MNIST", "NMNIST", (2, 34, 34), 10, 300.0, True),
    "shd": EventSet("SHD", "SHD", (700,), 20, 1000.0, False),
}
CACHE_VERSION = 1


def _tonic():
    try:
        import tonic
    except ImportError:
        raise DataError("event data sets need tonic: pip install 'snnrun[events]'") from None
    return tonic


def paths(root: str | Path, dataset: str, train: bool) -> Path:
    """The file or folder holding a split in its set's on-disk layout."""
    folder = Path(root) / EVENT_SETS[dataset].folder
    if dataset == "nmnist":
        return folder / ("Train" if train else "Test")
    return folder / f"shd_{'train' if train else 'test'}.h5"


def _present(root, dataset: str, train: bool) -> bool:
    where = paths(root, dataset, train)
    return any(where.glob("*/*.bin")) if dataset == "nmnist" else where.is_file()


def _download(root, dataset: str, train: bool) -> None:
    tonic = _tonic()
    cls = {"nmnist": tonic.datasets.NMNIST, "shd": tonic.datasets.SHD}[dataset]
    try:
        cls(str(root), train=train)
    except Exception as error:  # network errors come in many types
        raise DataError(f"could not download {EVENT_SETS[dataset].name} into {Path(root) / EVENT_SETS[dataset].folder} "
                        f"({error})") from None


def recordings(root, dataset: str, train: bool):
    """(events, label) of each recording of a split, as tonic's structured arrays (time in microseconds)."""
    tonic = _tonic()
    where = paths(root, dataset, train)
    if dataset == "nmnist":
        from tonic.io import read_mnist_file

        dtype = tonic.datasets.NMNIST.dtype
        for digit in range(10):
            for file in sorted((where / str(digit)).glob("*.bin")):
                yield read_mnist_file(str(file), dtype=dtype), digit
        return
    import h5py
    from tonic.io import make_structured_array

    dtype = tonic.datasets.SHD.dtype
    try:
        with h5py.File(where, "r") as handle:
            times, units, labels = handle["spikes/times"], handle["spikes/units"], handle["labels"][()]
            for i, label in enumerate(labels):
                yield make_structured_array(times[i].astype(np.float64) * 1e6, units[i], 1, dtype=dtype), int(label)
    except (OSError, KeyError) as error:
        raise DataError(f"{where} is not an SHD file (HDF5 with spikes/times, spikes/units and labels): "
                        f"{error}") from None


def frames_of(events: np.ndarray, dataset: str, time_steps: int, duration_ms: float,
              denoise_us: float | None) -> np.ndarray:
    """One recording's (time_steps, *shape) uint8 frames: event counts per window, capped at 255."""
    tonic = _tonic()
    spec = EVENT_SETS[dataset]
    sensor = (34, 34, 2) if dataset == "nmnist" else (700, 1, 1)
    if denoise_us:
        events = tonic.functional.denoise_numpy(events, filter_time=denoise_us)
    duration_us = duration_ms * 1000.0
    events = events[(events["t"] >= 0) & (events["t"] < duration_us)]
    out = np.zeros((time_steps, *spec.shape), dtype=np.uint8)
    if len(events) == 0:
        return out
    window = duration_us / time_steps
    frames = tonic.functional.to_frame_numpy(events, sensor, time_window=window, start_time=0,
                                              end_time=duration_us, include_incomplete=True)
    frames = frames[:time_steps].reshape(-1, *spec.shape)
    out[:len(frames)] = np.minimum(frames, 255)
    return out


def cache_file(root, dataset: str, train: bool, time_steps: int, duration_ms: float,
               denoise_us: float | None) -> Path:
    key = {"version": CACHE_VERSION, "split": "train" if train else "test", "time_steps": time_steps,
           "duration_ms": duration_ms, "denoise_us": denoise_us}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return Path(root) / EVENT_SETS[dataset].folder / "snnrun-frames" / (
        f"{key['split']}-T{time_steps}-{duration_ms:g}ms-{digest}.npz")


def load_frames(root, dataset: str, time_steps: int, duration_ms: float | None = None,
                denoise_us: float | None = None, download: bool = False, progress=None):
    """(train, test) Splits of uint8 frames (N, time_steps, *shape) and int64 labels, from the cache when it
    holds them, else binned from the recordings and cached. `progress(done, total)` hears of the binning."""
    from snnrun.data import Split

    spec = EVENT_SETS[dataset]
    duration_ms = spec.duration_ms if duration_ms is None else duration_ms
    splits = []
    for train in (True, False):
        cached = cache_file(root, dataset, train, time_steps, duration_ms, denoise_us)
        if cached.is_file():
            with np.load(cached) as stored:
                frames, labels = stored["frames"], stored["labels"]
        else:
            if not _present(root, dataset, train):
                if not download:
                    raise DataError(f"{spec.name} not found at {paths(root, dataset, train)} (tonic's layout: "
                                    f"{_layout(dataset)}); set data.download: true to let tonic download it")
                _download(root, dataset, train)
            frames, labels = _bin_split(root, dataset, train, time_steps, duration_ms, denoise_us, progress)
            cached.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(cached, lambda handle, f=frames, y=labels: np.savez(handle, frames=f, labels=y))
        if len(labels) and (labels.min() < 0 or labels.max() >= spec.classes):
            raise DataError(f"{paths(root, dataset, train)} holds labels outside 0-{spec.classes - 1}")
        splits.append(Split(torch.from_numpy(frames), torch.from_numpy(labels.astype(np.int64))))
    return splits[0], splits[1]


def _bin_split(root, dataset, train, time_steps, duration_ms, denoise_us, progress):
    frames, labels = [], []
    for events, label in recordings(root, dataset, train):
        frames.append(frames_of(events, dataset, time_steps, duration_ms, denoise_us))
        labels.append(label)
        if progress is not None:
            progress(len(labels))
    if not frames:
        raise DataError(f"no recordings found at {paths(root, dataset, train)} ({_layout(dataset)})")
    return np.stack(frames), np.asarray(labels, dtype=np.uint8)


def _layout(dataset: str) -> str:
    return "NMNIST/Train/<digit>/*.bin and NMNIST/Test/<digit>/*.bin" if dataset == "nmnist" else \
        "SHD/shd_train.h5 and SHD/shd_test.h5"


def preview(sample: np.ndarray) -> np.ndarray:
    """A picture of one sample for the plots: the frames summed over time and polarity (H, W) for camera events,
    channels x time for audio events (SHD)."""
    sample = np.asarray(sample, dtype=np.float32)
    if sample.ndim == 4:
        return sample.sum(axis=(0, 1))
    return sample.T
