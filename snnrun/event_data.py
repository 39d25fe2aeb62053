"""Event data sets (N-MNIST, DVS128 Gesture, SHD) as frames: each recording's events binned into `time_steps`
equal windows.

The files are read in each set's own on-disk format, in the folders tonic uses (so `data.download: true` lets
tonic fetch them into the same place), with tonic's readers and transforms:

    N-MNIST  <root>/NMNIST/Train/<digit>/*.bin, <root>/NMNIST/Test/<digit>/*.bin: 5-byte event records
             (x, y, polarity and a 23-bit microsecond time stamp; Orchard et al. 2015), sensor 34 x 34 x 2
    DVS128 Gesture  <root>/DVSGesture/ibmGestureTrain/<user>_<lighting>/<label>.npy (and ibmGestureTest):
             tonic's published form of IBM's recordings (Amir et al. 2017), cut into one gesture per file, rows of
             (x, y, polarity, time in ms); sensor 128 x 128 x 2, 11 classes
    SHD      <root>/SHD/shd_train.h5, <root>/SHD/shd_test.h5: HDF5 with spikes/times (s), spikes/units (0-699)
             and labels (0-19; Cramer et al. 2020), 700 channels

Binning: a recording's first `duration_ms` (from time 0) is cut into `time_steps` windows of duration/T each
(tonic's ToFrame with a fixed time window), events after it are dropped, and each frame counts the events per
pixel and polarity (per channel for SHD), capped at 255. A fixed window keeps one step one span of real time in
every sample, as a sensor delivers it; dividing each recording's own length into T bins would stretch short
recordings. `denoise_us` applies tonic's Denoise and `downsample` tonic's Downsample (camera sets) before
binning.

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
    camera: bool  # events with x and y (tonic's Denoise and Downsample apply)
    splits: tuple[str, str]  # (train, test) folder or file under `folder`

    def shape_at(self, downsample: int) -> tuple[int, ...]:
        """One frame's shape with the camera's pixels pooled by `downsample` in each direction."""
        if not self.camera:
            return self.shape
        return (self.shape[0], -(-self.shape[1] // downsample), -(-self.shape[2] // downsample))


EVENT_SETS = {
    "nmnist": EventSet("N-MNIST", "NMNIST", (2, 34, 34), 10, 300.0, True, ("Train", "Test")),
    "dvs_gesture": EventSet("DVS128 Gesture", "DVSGesture", (2, 128, 128), 11, 6000.0, True,
                            ("ibmGestureTrain", "ibmGestureTest")),
    "shd": EventSet("SHD", "SHD", (700,), 20, 1000.0, False, ("shd_train.h5", "shd_test.h5")),
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
    spec = EVENT_SETS[dataset]
    return Path(root) / spec.folder / spec.splits[0 if train else 1]


def _present(root, dataset: str, train: bool) -> bool:
    where = paths(root, dataset, train)
    pattern = {"nmnist": "*/*.bin", "dvs_gesture": "*/*.npy"}.get(dataset)
    return any(where.glob(pattern)) if pattern else where.is_file()


def _download(root, dataset: str, train: bool) -> None:
    tonic = _tonic()
    cls = {"nmnist": tonic.datasets.NMNIST, "dvs_gesture": tonic.datasets.DVSGesture,
           "shd": tonic.datasets.SHD}[dataset]
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
    if dataset == "dvs_gesture":
        from numpy.lib import recfunctions

        dtype = tonic.datasets.DVSGesture.dtype
        for folder in sorted(p for p in where.iterdir() if p.is_dir()):
            for file in sorted(folder.glob("*.npy"), key=lambda f: int(f.stem) if f.stem.isdigit() else -1):
                if not file.stem.isdigit():
                    raise DataError(f"{file}: expected files named by their label (0-10), as tonic's DVSGesture")
                rows = np.load(file).astype(np.int64)
                if rows.ndim != 2 or rows.shape[1] != 4:
                    raise DataError(f"{file} does not hold (x, y, polarity, time) rows")
                rows[:, 3] *= 1000  # ms -> us
                yield recfunctions.unstructured_to_structured(rows, dtype), int(file.stem)
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
              denoise_us: float | None, downsample: int = 1) -> np.ndarray:
    """One recording's (time_steps, *shape) uint8 frames: event counts per window, capped at 255."""
    tonic = _tonic()
    spec = EVENT_SETS[dataset]
    shape = spec.shape_at(downsample)
    sensor = (shape[2], shape[1], shape[0]) if spec.camera else (shape[0], 1, 1)
    if denoise_us:
        events = tonic.functional.denoise_numpy(events, filter_time=denoise_us)
    if downsample > 1:
        events = tonic.transforms.Downsample(spatial_factor=1 / downsample)(events)
    duration_us = duration_ms * 1000.0
    events = events[(events["t"] >= 0) & (events["t"] < duration_us)]
    out = np.zeros((time_steps, *shape), dtype=np.uint8)
    if len(events) == 0:
        return out
    window = duration_us / time_steps
    frames = tonic.functional.to_frame_numpy(events, sensor, time_window=window, start_time=0,
                                              end_time=duration_us, include_incomplete=True)
    frames = frames[:time_steps].reshape(-1, *shape)
    out[:len(frames)] = np.minimum(frames, 255)
    return out


def cache_file(root, dataset: str, train: bool, time_steps: int, duration_ms: float,
               denoise_us: float | None, downsample: int = 1) -> Path:
    key = {"version": CACHE_VERSION, "split": "train" if train else "test", "time_steps": time_steps,
           "duration_ms": duration_ms, "denoise_us": denoise_us, "downsample": downsample}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return Path(root) / EVENT_SETS[dataset].folder / "snnrun-frames" / (
        f"{key['split']}-T{time_steps}-{duration_ms:g}ms-{digest}.npz")


def load_frames(root, dataset: str, time_steps: int, duration_ms: float | None = None,
                denoise_us: float | None = None, download: bool = False, progress=None, downsample: int = 1):
    """(train, test) Splits of uint8 frames (N, time_steps, *shape) and int64 labels, from the cache when it
    holds them, else binned from the recordings and cached. `progress(done, total)` hears of the binning."""
    from snnrun.data import Split

    spec = EVENT_SETS[dataset]
    duration_ms = spec.duration_ms if duration_ms is None else duration_ms
    splits = []
    for train in (True, False):
        cached = cache_file(root, dataset, train, time_steps, duration_ms, denoise_us, downsample)
        if cached.is_file():
            with np.load(cached) as stored:
                frames, labels = stored["frames"], stored["labels"]
        else:
            if not _present(root, dataset, train):
                if not download:
                    raise DataError(f"{spec.name} not found at {paths(root, dataset, train)} (tonic's layout: "
                                    f"{_layout(dataset)}); set data.download: true to let tonic download it")
                _download(root, dataset, train)
            frames, labels = _bin_split(root, dataset, train, time_steps, duration_ms, denoise_us, downsample,
                                        progress)
            cached.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(cached, lambda handle, f=frames, y=labels: np.savez(handle, frames=f, labels=y))
        if len(labels) and (labels.min() < 0 or labels.max() >= spec.classes):
            raise DataError(f"{paths(root, dataset, train)} holds labels outside 0-{spec.classes - 1}")
        splits.append(Split(torch.from_numpy(frames), torch.from_numpy(labels.astype(np.int64))))
    return splits[0], splits[1]


def _bin_split(root, dataset, train, time_steps, duration_ms, denoise_us, downsample, progress):
    frames, labels = [], []
    for events, label in recordings(root, dataset, train):
        frames.append(frames_of(events, dataset, time_steps, duration_ms, denoise_us, downsample))
        labels.append(label)
        if progress is not None:
            progress(len(labels))
    if not frames:
        raise DataError(f"no recordings found at {paths(root, dataset, train)} ({_layout(dataset)})")
    return np.stack(frames), np.asarray(labels, dtype=np.uint8)


def _layout(dataset: str) -> str:
    return {"nmnist": "NMNIST/Train/<digit>/*.bin and NMNIST/Test/<digit>/*.bin",
            "dvs_gesture": "DVSGesture/ibmGestureTrain/<user>_<lighting>/<label>.npy and ibmGestureTest",
            "shd": "SHD/shd_train.h5 and SHD/shd_test.h5"}[dataset]


def preview(sample: np.ndarray) -> np.ndarray:
    """A picture of one sample for the plots: the frames summed over time and polarity (H, W) for camera events,
    channels x time for audio events (SHD)."""
    sample = np.asarray(sample, dtype=np.float32)
    if sample.ndim == 4:
        return sample.sum(axis=(0, 1))
    return sample.T
