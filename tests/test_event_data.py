"""Event data sets (N-MNIST, DVS128 Gesture, SHD) through the code a user runs, on small files the tests write in
each set's real on-disk format: N-MNIST's 5-byte binary event records in NMNIST/Train/<digit>/*.bin, DVS128
Gesture as tonic publishes it (one (x, y, p, t ms) array per gesture in .npy files), SHD's HDF5 file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from snnrun.cli import app
from snnrun.config import DataError

pytest.importorskip("tonic", reason="event data needs the events extra (pip install 'snnrun[events]')")
h5py = pytest.importorskip("h5py")

from snnrun import event_data  # noqa: E402

runner = CliRunner()


# --------------------------------------------------------------------------- writers of the real formats


def write_nmnist_bin(path: Path, x, y, p, t_us) -> None:
    """N-MNIST's format (Orchard's eventvision): per event 5 bytes: x, y, then polarity in bit 7 of byte 2 and a
    23-bit time stamp in microseconds over bytes 2-4 (big-endian). y = 240 marks a time-stamp overflow record."""
    records = []
    for xi, yi, pi, ti in zip(x, y, p, t_us, strict=True):
        records.append([xi, yi, (pi << 7) | ((ti >> 16) & 127), (ti >> 8) & 255, ti & 255])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.asarray(records, dtype=np.uint8).tobytes())


def pattern_events(label: int, rng: np.random.Generator, events: int = 120, duration_us: int = 290_000):
    """Events of one class: a bright 6 x 6 patch whose place depends on the label, plus noise, ON and OFF."""
    row, col = divmod(label, 4)
    xs = rng.integers(col * 8, col * 8 + 6, events)
    ys = rng.integers(row * 10, row * 10 + 6, events)
    noise = rng.integers(0, 34, (2, events // 6))
    x = np.concatenate([xs, noise[0]])
    y = np.concatenate([ys, noise[1]])
    p = rng.integers(0, 2, len(x))
    t = np.sort(rng.integers(0, duration_us, len(x)))
    return x, y, p, t


def write_nmnist(root: Path, per_class: int = 4, test_per_class: int = 2, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for folder, count in (("Train", per_class), ("Test", test_per_class)):
        for digit in range(10):
            for k in range(count):
                write_nmnist_bin(root / "NMNIST" / folder / str(digit) / f"{k:05d}.bin",
                                 *pattern_events(digit, rng))


def write_shd(root: Path, train: int = 40, test: int = 20, seed: int = 0) -> None:
    """SHD's HDF5 layout: spikes/times (seconds, float) and spikes/units (channel 0-699) as variable-length rows,
    labels (0-19), and the extra/ group the real files carry."""
    rng = np.random.default_rng(seed)
    (root / "SHD").mkdir(parents=True, exist_ok=True)
    for name, count in (("train", train), ("test", test)):
        with h5py.File(root / "SHD" / f"shd_{name}.h5", "w") as f:
            times = f.create_dataset("spikes/times", (count,), dtype=h5py.vlen_dtype(np.float32))
            units = f.create_dataset("spikes/units", (count,), dtype=h5py.vlen_dtype(np.uint16))
            labels = np.arange(count) % 20
            for i, label in enumerate(labels):
                unit = rng.integers(label * 35, label * 35 + 30, 150).astype(np.uint16)
                times[i] = np.sort(rng.uniform(0, 0.9, 150)).astype(np.float32)
                units[i] = unit
            f.create_dataset("labels", data=labels.astype(np.uint16))
            f.create_dataset("extra/speaker", data=np.zeros(count, dtype=np.uint16))
            f.create_dataset("extra/keys", data=np.array([f"word{k}".encode() for k in range(20)]))


def write_gesture(root: Path, users: int = 2, test_users: int = 1, seed: int = 0) -> None:
    """tonic's DVSGesture layout: <split>/user<NN>_<lighting>/<label>.npy, one gesture per file, rows of
    (x, y, polarity, time in ms); here each class moves a blob through its own quarter of the sensor."""
    rng = np.random.default_rng(seed)
    for split, count, first in (("ibmGestureTrain", users, 1), ("ibmGestureTest", test_users, 24)):
        for user in range(first, first + count):
            for lighting in ("fluorescent", "led"):
                folder = root / "DVSGesture" / split / f"user{user:02d}_{lighting}"
                folder.mkdir(parents=True, exist_ok=True)
                for label in range(11):
                    n = 400
                    cx, cy = 16 + 32 * (label % 4), 16 + 40 * (label // 4)
                    x = np.clip(cx + rng.integers(-6, 7, n), 0, 127)
                    y = np.clip(cy + rng.integers(-6, 7, n), 0, 127)
                    rows = np.stack([x, y, rng.integers(0, 2, n), np.sort(rng.integers(0, 5900, n))], axis=1)
                    np.save(folder / f"{label}.npy", rows.astype(np.int32))


# --------------------------------------------------------------------------- binning


def test_nmnist_records_are_read_and_binned_by_hand(tmp_path):
    """Three events (x, y, p, t): (1, 2, ON, 0 us), (1, 2, ON, 150 us), (33, 0, OFF, 299,999 us) and one at
    400 ms past the 300 ms span: 3 windows of 100 ms put the first two in frame 0 at [1, 2, 1] and the third
    in frame 2 at [0, 0, 33]; the late one is dropped."""
    file = tmp_path / "NMNIST" / "Train" / "3" / "00000.bin"
    write_nmnist_bin(file, [1, 1, 33, 5], [2, 2, 0, 5], [1, 1, 0, 1], [0, 150, 299_999, 400_000])
    ((events, label),) = list(event_data.recordings(tmp_path, "nmnist", True))
    assert label == 3 and len(events) == 4 and list(events["t"]) == [0, 150, 299_999, 400_000]
    frames = event_data.frames_of(events, "nmnist", 3, 300.0, None)
    assert frames.shape == (3, 2, 34, 34) and frames.dtype == np.uint8
    assert frames[0, 1, 2, 1] == 2 and frames[2, 0, 0, 33] == 1
    assert frames.sum() == 3


def test_nmnist_time_stamp_overflow_records_are_followed(tmp_path):
    """A y = 240 record adds 2^13 us to every later time stamp (N-MNIST's overflow marker) and is no event."""
    file = tmp_path / "NMNIST" / "Test" / "0" / "00000.bin"
    write_nmnist_bin(file, [4, 0, 4], [4, 240, 4], [1, 0, 1], [100, 0, 100])
    ((events, _),) = list(event_data.recordings(tmp_path, "nmnist", False))
    assert list(events["t"]) == [100, 100 + 2**13]


def test_shd_file_is_read_and_binned(tmp_path):
    write_shd(tmp_path, train=3, test=1)
    recs = list(event_data.recordings(tmp_path, "shd", True))
    assert [label for _, label in recs] == [0, 1, 2]
    frames = event_data.frames_of(recs[1][0], "shd", 10, 1000.0, None)
    assert frames.shape == (10, 700) and frames.sum() == 150  # every spike lies within 0.9 s
    assert frames[:, 35:65].sum() == 150  # label 1's channels


def test_gesture_files_are_read_downsampled_and_binned_by_hand(tmp_path):
    """Two events of label 7 in tonic's .npy form: (5, 9, ON, 10 ms) and (127, 0, OFF, 5,999 ms); with downsample 4
    the frame is 2 x 32 x 32, the first lands at [1, 9 // 4, 5 // 4] in frame 0 of 6 (1 s windows) and the
    second at [0, 0, 31] in frame 5."""
    folder = tmp_path / "DVSGesture" / "ibmGestureTrain" / "user01_fluorescent"
    folder.mkdir(parents=True)
    np.save(folder / "7.npy", np.array([[5, 9, 1, 10], [127, 0, 0, 5999]], dtype=np.int32))
    ((events, label),) = list(event_data.recordings(tmp_path, "dvs_gesture", True))
    assert label == 7 and list(events["t"]) == [10_000, 5_999_000]
    frames = event_data.frames_of(events, "dvs_gesture", 6, 6000.0, None, downsample=4)
    assert frames.shape == (6, 2, 32, 32)
    assert frames[0, 1, 2, 1] == 1 and frames[5, 0, 0, 31] == 1 and frames.sum() == 2


def test_frames_are_cached_and_read_back(tmp_path, monkeypatch):
    write_nmnist(tmp_path, per_class=1, test_per_class=1)
    train, test = event_data.load_frames(tmp_path, "nmnist", 8)
    assert tuple(train.images.shape) == (10, 8, 2, 34, 34) and train.labels.tolist() == list(range(10))
    cached = sorted((tmp_path / "NMNIST" / "snnrun-frames").glob("*.npz"))
    assert len(cached) == 2
    monkeypatch.setattr(event_data, "recordings", lambda *a: (_ for _ in ()).throw(AssertionError("re-read")))
    again, _ = event_data.load_frames(tmp_path, "nmnist", 8)
    assert (again.images == train.images).all()


def test_missing_event_data_names_the_folder_and_the_download_option(tmp_path):
    with pytest.raises(DataError, match=r"N-MNIST not found at .*NMNIST/Train.*data.download: true"):
        event_data.load_frames(tmp_path, "nmnist", 5)
    with pytest.raises(DataError, match=r"SHD not found at .*shd_train.h5"):
        event_data.load_frames(tmp_path, "shd", 5)


# --------------------------------------------------------------------------- through the CLI


def _config(tmp_path: Path, data: dict, model: dict, epochs: int = 1, steps: int = 10) -> Path:
    cfg = {"name": "events", "device": "cpu", "data": {"root": str(tmp_path / "data"), "val_size": 10, **data},
           "model": model, "encoding": {"kind": "events", "time_steps": steps},
           "train": {"epochs": epochs, "batch_size": 16, "lr": 0.005, "eval_batch_size": 64}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(config: Path, out: Path, *extra):
    result = runner.invoke(app, ["train", str(config), "--out", str(out), *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return Path(result.output.strip().splitlines()[-1])


def test_nmnist_conv_network_trains_evaluates_and_plots(tmp_path):
    """A convolutional network on N-MNIST-format recordings whose classes differ in where their events fall: it
    learns them (test accuracy well above chance), eval scores the run, and the plots show the recording."""
    write_nmnist(tmp_path / "data", per_class=12, test_per_class=4)
    config = _config(tmp_path, {"dataset": "nmnist"},
                     {"layers": [{"conv": 4, "kernel": 5, "pool": 2}, {"linear": 32}]}, epochs=4)
    folder = _train(config, tmp_path / "out")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["test_accuracy"] >= 0.6, summary
    resolved = yaml.safe_load((folder / "config.yaml").read_text())
    assert resolved["model"]["input_shape"] == [2, 34, 34] and resolved["data"]["dataset"] == "nmnist"
    for name in ("curves.png", "raster.png", "feature_maps.png", "kernels.png", "spike_counts.gif"):
        assert (folder / name).is_file(), name
    result = runner.invoke(app, ["eval", str(folder)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    predicted = runner.invoke(app, ["predict", str(folder), str(tmp_path / "x.png")], catch_exceptions=False)
    assert predicted.exit_code == 2 and "snnrun eval" in predicted.output


def test_gesture_conv_network_trains_on_downsampled_frames(tmp_path):
    write_gesture(tmp_path / "data", users=3, test_users=1)
    config = _config(tmp_path, {"dataset": "dvs_gesture", "downsample": 4},
                     {"layers": [{"conv": 4, "kernel": 3, "pool": 2}, {"linear": 32}], "outputs": 11}, epochs=5,
                     steps=6)
    folder = _train(config, tmp_path / "out")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["test_accuracy"] >= 0.5, summary  # 11 classes: chance is 0.09
    assert yaml.safe_load((folder / "config.yaml").read_text())["model"]["input_shape"] == [2, 32, 32]


def test_shd_mlp_trains_with_twenty_outputs(tmp_path):
    write_shd(tmp_path / "data", train=80, test=40)
    config = _config(tmp_path, {"dataset": "shd"}, {"hidden": [32], "outputs": 20}, epochs=3)
    folder = _train(config, tmp_path / "out")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["test_accuracy"] >= 0.3, summary  # 20 classes: chance is 0.05
    resolved = yaml.safe_load((folder / "config.yaml").read_text())
    assert resolved["model"]["input_size"] == 700 and resolved["model"]["outputs"] == 20


@pytest.mark.parametrize("data,model,encoding,key", [
    ({"dataset": "nmnist"}, {"hidden": [8]}, {"kind": "rate"}, "encoding.kind"),
    ({"dataset": "mnist"}, {"hidden": [8]}, {"kind": "events"}, "encoding.kind"),
    ({"dataset": "shd"}, {"hidden": [8]}, {"kind": "events"}, "model.outputs"),
    ({"dataset": "shd"}, {"layers": [{"conv": 2, "kernel": 3}], "outputs": 20}, {"kind": "events"}, "model.layers"),
    ({"dataset": "mnist", "duration_ms": 100}, {"hidden": [8]}, {"kind": "rate"}, "data.duration_ms"),
    ({"dataset": "shd", "denoise_us": 1000}, {"hidden": [8], "outputs": 20}, {"kind": "events"}, "data.denoise_us"),
    ({"dataset": "nmnist"}, {"hidden": [8], "input_shape": [1, 28, 28]}, {"kind": "events"}, "model.input_shape"),
    ({"dataset": "dvs_gesture"}, {"hidden": [8]}, {"kind": "events"}, "model.outputs"),
    ({"dataset": "shd", "downsample": 2}, {"hidden": [8], "outputs": 20}, {"kind": "events"}, "data.downsample"),
    ({"dataset": "mnist", "downsample": 2}, {"hidden": [8]}, {"kind": "rate"}, "data.downsample"),
])
def test_event_config_mistakes_are_config_errors(tmp_path, data, model, encoding, key):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"data": data, "model": model, "encoding": encoding}))
    result = runner.invoke(app, ["train", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert key in result.output and "Traceback" not in result.output
