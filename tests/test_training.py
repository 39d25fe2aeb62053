"""`snnrun train` and `snnrun eval` on real MNIST (prepared by `make data`), and the pieces they stand on."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from snnrun.cli import app
from snnrun.config import ConfigError, apply_overrides, load_yaml
from snnrun.data import DataError, _ArraysOnly, available, read_idx, write_idx
from snnrun.encoding import encode
from snnrun.network import Network
from snnrun.schema import parse_model, parse_train
from snnrun.surrogate import Surrogate
from snnrun.training import (
    Callbacks,
    TrainingInterrupted,
    cpu_threads,
    shift_images,
    small_network_threads,
    train,
)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
runner = CliRunner()
needs_mnist = pytest.mark.skipif(not available(DATA), reason="MNIST not prepared: run `make data`")


def small_config(**overrides):
    data = load_yaml(REPO / "configs" / "smoke.yaml")
    data = apply_overrides(data, [f"data.root={DATA}", "device=cpu", "train.subset.train=640",
                                  "train.subset.test=200", "model.hidden=[32]"]
                           + [f"{k}={v}" for k, v in overrides.items()])
    return parse_train(data, "test")


# --------------------------------------------------------------------------- end to end


@needs_mnist
def test_smoke_config_trains_and_eval_reproduces_its_test_accuracy(in_tmp):
    result = runner.invoke(app, ["train", "configs/smoke.yaml", "--set", f"data.root={DATA}", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    folder = Path(result.output.strip().splitlines()[-1])
    for name in ("config.yaml", "env.json", "metrics.jsonl", "metrics.csv", "summary.json", "curves.png",
                 "raster.png", "membrane.png", "spike_counts.png", "spike_counts.gif", "checkpoints/last.pt",
                 "checkpoints/best.pt"):
        assert (folder / name).is_file(), name
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.8  # 1 epoch on 3,000 images: far above chance (0.1)
    record = json.loads((folder / "metrics.jsonl").read_text().splitlines()[0])
    assert {"train_loss", "val_accuracy", "lr", "samples_per_s", "train_spikes_per_neuron_step"} <= set(record)

    result = runner.invoke(app, ["eval", str(folder)])
    assert result.exit_code == 0, result.output
    evaluation = Path(result.output.strip().splitlines()[-1])
    report = json.loads((evaluation / "eval.json").read_text())
    assert (evaluation / "confusion.png").is_file() and (evaluation / "spike_counts.gif").is_file()
    assert report["accuracy"] == summary["test_accuracy"]  # exactly the run's own score
    assert np.asarray(report["confusion"]).sum() == 1000 and len(report["per_class_accuracy"]) == 10
    assert report["synaptic_operations_per_inference"]["hidden_synops"] > 0


@needs_mnist
def test_resumed_config_folder_reproduces_metrics(in_tmp):
    cfg = small_config()
    a, b = in_tmp / "a", in_tmp / "b"
    a.mkdir(), b.mkdir()
    first = train(cfg, a, torch.device("cpu"))
    second = train(cfg, b, torch.device("cpu"))
    assert first["test_accuracy"] == second["test_accuracy"]
    assert [r["train_loss"] for r in first["history"]] == [r["train_loss"] for r in second["history"]]


@needs_mnist
@pytest.mark.parametrize("overrides", [
    {"encoding.kind": "rate", "model.dropout": 0.2, "train.augment_shift": 2, "train.schedule": "cosine"},
    {"encoding.kind": "latency", "model.readout": "rate", "train.loss": "mse_count"},
    {"model.readout": "mean_current", "model.neuron.model": "synaptic", "train.schedule": "step"},
])
def test_interrupted_then_resumed_run_ends_like_an_uninterrupted_one(tmp_path, overrides):
    cfg = small_config(**{"train.epochs": 2, **overrides})
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    whole.mkdir(), parts.mkdir()
    expected = train(cfg, whole, torch.device("cpu"))

    batches = {"n": 0}

    def stop_in_the_second_epoch():
        batches["n"] += 1
        return batches["n"] == 14  # 10 batches per epoch: stop in the middle of epoch 2

    with pytest.raises(TrainingInterrupted):
        train(cfg, parts, torch.device("cpu"), Callbacks(should_stop=stop_in_the_second_epoch))
    resumed = train(cfg, parts, torch.device("cpu"), resume=True)

    for key in ("test_accuracy", "best_val_accuracy", "best_epoch"):
        assert resumed[key] == expected[key]
    for mine, theirs in zip(resumed["history"], expected["history"], strict=True):
        assert mine["train_loss"] == theirs["train_loss"] and mine["val_accuracy"] == theirs["val_accuracy"]
    w1 = torch.load(whole / "checkpoints" / "last.pt", weights_only=True)["model"]
    w2 = torch.load(parts / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_missing_mnist_is_a_clear_error_with_exit_2(in_tmp):
    result = runner.invoke(app, ["train", "configs/smoke.yaml", "--set", "data.root=nowhere", "--device", "cpu"])
    assert result.exit_code == 2
    assert "snnrun data --root nowhere" in result.output and not Path("outputs").exists()


def test_bad_train_config_names_the_key(in_tmp):
    result = runner.invoke(app, ["train", "configs/smoke.yaml", "--set", "train.optimizer=rmsprop"])
    assert result.exit_code == 2 and "train.optimizer" in result.output and "adam" in result.output


def test_eval_of_a_corrupt_checkpoint_is_a_clear_error(in_tmp):
    folder = in_tmp / "run"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(load_yaml(REPO / "configs" / "smoke.yaml")))
    (folder / "checkpoints" / "best.pt").write_bytes(b"\x80\x04not a checkpoint")
    result = runner.invoke(app, ["eval", str(folder)])
    assert result.exit_code == 2 and "not a snnrun checkpoint" in result.output


def test_shipped_training_configs_are_valid():
    for name in ("mnist", "smoke", "norse_tutorial", "snntorch_tutorial"):
        cfg = parse_train(load_yaml(REPO / "configs" / f"{name}.yaml"), name)
        assert cfg.model.outputs == 10


# --------------------------------------------------------------------------- pieces


def test_idx_files_round_trip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "x", images)
    assert torch.equal(read_idx(tmp_path / "x"), torch.from_numpy(images))
    (tmp_path / "y").write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x05\x00\x00\x00\x1c\x00\x00\x00\x1c\x01\x02")
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "y")


def test_mnist_pickle_loader_refuses_anything_but_arrays():
    import io
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        _ArraysOnly(io.BytesIO(pickle.dumps(Evil()))).load()
    arrays = _ArraysOnly(io.BytesIO(pickle.dumps((np.arange(3.0), np.arange(2))))).load()
    assert arrays[0].tolist() == [0.0, 1.0, 2.0]


@needs_mnist
def test_prepared_mnist_is_canonical():
    from snnrun.data import TEST_CLASS_COUNTS, TRAIN_CLASS_COUNTS, load_mnist

    train_set, test_set = load_mnist(DATA)
    assert train_set.images.dtype == torch.uint8 and train_set.images.shape == (60000, 28, 28)
    assert tuple(torch.bincount(train_set.labels).tolist()) == TRAIN_CLASS_COUNTS
    assert tuple(torch.bincount(test_set.labels).tolist()) == TEST_CLASS_COUNTS
    assert train_set.labels[:5].tolist() == [5, 0, 4, 1, 9]  # canonical order


def test_direct_input_runs_the_first_layer_once():
    model = Network(parse_model({"hidden": [16, 8]}, "model", "t"), time_steps=10)
    calls = []
    model.linears[0].register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    out = model(torch.rand(4, 784))
    assert calls == [(4, 784)]  # once, not once per step
    assert out.logits.shape == (4, 10) and out.spikes.shape == (10, 4, 10)


def test_state_dict_holds_parameters_not_neuron_state():
    model = Network(parse_model({"hidden": [16], "neuron": {"learn_beta": True}}, "model", "t"), time_steps=5)
    keys = set(model.state_dict())
    assert "neurons.0.beta" in keys and not any("mem" in k for k in keys)
    assert model.neurons[0].beta.shape == (16,)


@pytest.mark.parametrize("kind", ["fast_sigmoid", "atan", "sigmoid", "straight_through"])
def test_surrogates_are_picklable_finite_and_keep_dtype(kind):
    spike = pickle.loads(pickle.dumps(Surrogate(kind, 5.0)))
    x = torch.tensor([-1e30, -1.0, 0.0, 1e-3, 1e30], requires_grad=True)
    out = spike(x)
    assert out.tolist() == [0, 0, 0, 1, 1]
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert spike(torch.zeros(3, dtype=torch.float16)).dtype == torch.float16


def test_rate_encoding_is_seeded_and_latency_fires_brighter_pixels_first():
    images = torch.tensor([[[0, 255, 128, 64]]], dtype=torch.uint8)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(encode(images, "rate", 50, 1.0, g1), encode(images, "rate", 50, 1.0, g2))
    spikes = encode(images, "latency", 11, 1.0)
    assert spikes.sum(dim=0).tolist() == [[0, 1, 1, 1]]  # one spike per lit pixel, none for black
    first = spikes[:, 0].argmax(dim=0).tolist()
    assert first[1] < first[2] < first[3]


def test_shift_moves_each_image_by_up_to_the_maximum():
    image = torch.zeros(1, 28, 28, dtype=torch.uint8)
    image[0, 10, 12] = 255
    g = torch.Generator().manual_seed(0)
    moved = shift_images(image.expand(200, -1, -1), 2, g)
    rows, cols = (moved == 255).nonzero()[:, 1], (moved == 255).nonzero()[:, 2]
    assert len(rows) == 200  # the lit pixel stays in the picture, once per image
    assert set((rows - 10).tolist()) == {-2, -1, 0, 1, 2} and set((cols - 12).tolist()) == {-2, -1, 0, 1, 2}


@needs_mnist
def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_the_run(in_tmp, hold):
    import os
    import signal
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    args = [sys.executable, "-m", "snnrun", "train", "configs/smoke.yaml", "--device", "cpu",
            "--set", f"data.root={DATA}", "--set", "train.epochs=6", "--set", "train.subset.train=1000"]
    # held in the 5th batch of epoch 2 (of 6) until the Ctrl-C comes: it stops after that batch, mid-epoch
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=hold.env("batch:1:5", env))
    hold.wait(proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=900)  # (timeouts here only guard against a hang)
    assert proc.returncode == 130, stderr
    folder = Path(stdout.strip().splitlines()[-1])
    assert (folder / "checkpoints" / "last.pt").is_file() and "--resume" in stderr
    assert not (folder / "summary.json").exists()

    done = subprocess.run([sys.executable, "-m", "snnrun", "train", "--resume", str(folder)], capture_output=True,
                          text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip().splitlines()[-1]) == folder
    epochs = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5, 6]
    again = subprocess.run([sys.executable, "-m", "snnrun", "train", "--resume", str(folder)], capture_output=True,
                           text=True, env=env, timeout=900)
    assert again.returncode == 2 and "never overwritten" in again.stderr


@needs_mnist
def test_nan_loss_stops_the_run_naming_epoch_and_batch_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import snnrun.training as training
    from snnrun.training import TrainingDiverged

    real_loss, calls = training.loss_of, {"n": 0}

    def loss_turning_nan(out, labels, settings, steps):
        calls["n"] += 1
        loss = real_loss(out, labels, settings, steps)
        return loss * float("nan") if calls["n"] == 14 else loss  # 10 batches + 1 validation: epoch 2, batch 3

    monkeypatch.setattr(training, "loss_of", loss_turning_nan)
    with pytest.raises(TrainingDiverged, match="epoch 2, batch 3"):
        train(small_config(**{"train.epochs": 2}), tmp_path, torch.device("cpu"))
    kept = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert kept["epoch"] == 1 and all(torch.isfinite(v).all() for v in kept["model"].values())


def test_surrogate_gradients_match_their_formulas():
    x = torch.tensor([-0.5, 0.0, 0.25], requires_grad=True)
    Surrogate("fast_sigmoid", 4.0)(x).sum().backward()
    assert x.grad.tolist() == pytest.approx([1 / 9, 1.0, 1 / 4])  # 1/(4|x| + 1)^2
    x.grad = None
    Surrogate("atan", 2.0)(x).sum().backward()
    assert x.grad[1].item() == pytest.approx(1.0)  # alpha/2 at x = 0


def test_rate_spikes_follow_the_pixel_probability():
    from snnrun.encoding import rate_spikes

    p = torch.tensor([0.0, 1.0, 0.5, 0.13, 0.9, 1 / 255])
    g = torch.Generator().manual_seed(0)
    spikes = rate_spikes(p.expand(4000, -1).contiguous(), 50, g)
    assert spikes.shape == (50, 4000, 6) and set(spikes.unique().tolist()) <= {0.0, 1.0}
    rates = spikes.mean(dim=(0, 1))
    assert rates[0] == 0 and rates[1] == 1
    torch.testing.assert_close(rates, p, atol=3e-3, rtol=0)  # 200,000 draws each: sd < 1.2e-3
    again = rate_spikes(p.expand(4000, -1).contiguous(), 50, torch.Generator().manual_seed(0))
    assert torch.equal(spikes, again)  # seeded


def test_spike_count_animation_has_a_frame_per_step_and_holds_the_last(tmp_path):
    from PIL import Image

    from snnrun.plots import spike_count_animation

    spikes = np.zeros((12, 10))
    spikes[::2, 3] = 1  # class 3 fires every other step: 6 spikes in all
    spikes[5, 8] = 1
    path = spike_count_animation(spikes, np.zeros((28, 28), dtype=np.uint8), 3, tmp_path / "counts.gif")
    with Image.open(path) as gif:
        assert gif.n_frames == 12  # the title names the step, so no two steps' frames are the same
        durations = []
        for frame in range(gif.n_frames):
            gif.seek(frame)
            durations.append(gif.info["duration"])
        frames = []
        for frame in (0, 11):
            gif.seek(frame)
            frames.append(np.asarray(gif.convert("RGB")).astype(int))
    assert durations[-1] >= durations[0] + 2000  # the answer stays on screen two seconds longer
    first, last = ((f[..., 1] > 120) & (f[..., 0] < 80) & (f[..., 2] < 80) for f in frames)  # the label's green bar
    assert 0 < 4 * first.sum() < last.sum()  # 1 spike at step 1, 6 at the end


@needs_mnist
def test_a_small_network_trains_on_one_thread_and_the_count_is_restored(in_tmp, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        sets = [f"data.root={DATA}", "train.subset.train=640", "train.subset.test=200", "model.hidden=[32]"]
        result = runner.invoke(app, ["train", "configs/smoke.yaml", "--device", "cpu",
                                     *[arg for s in sets for arg in ("--set", s)]])
        assert result.exit_code == 0, result.output
        folder = Path(result.output.strip().splitlines()[-1])
        assert json.loads((folder / "env.json").read_text())["threads"] == 1  # 64 x 32 neurons: one thread
        assert torch.get_num_threads() == 2  # the caller's count, back after the run
    finally:
        torch.set_num_threads(before)


def test_thread_rule_small_networks_config_and_environment(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    norse = parse_model({"hidden": [128], "outputs": 10}, "model", "test")
    tutorial5 = parse_model({"hidden": [1000]}, "model", "test")
    assert small_network_threads(norse, 32) == 1  # 32 x 128 = 4,096 elements a step
    assert small_network_threads(norse, 256) is None  # 32,768: a full grain for each of two threads
    assert small_network_threads(tutorial5, 128) is None
    assert cpu_threads(small_config()) == 1
    assert cpu_threads(small_config(threads=2)) == 2  # the config's own count wins
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cpu_threads(small_config()) is None  # and so does the user's environment


def test_run_folders_written_before_the_neuron_home_still_load():
    """Before each neuron model had its own keys, config.yaml listed every neuron key of both models for each layer
    (a leaky layer carried an unused alpha) and the checkpoints held an alpha buffer for every layer."""
    old = {"model": "leaky", "beta": 0.9, "tau": None, "dt": None, "alpha": 0.8, "threshold": 1.0,
           "reset": "subtract", "reset_delay": True, "learn_beta": False, "learn_threshold": False}
    model_section = {"input_size": 784, "hidden": [{"size": 8, "dropout": None, **old}], "outputs": 10,
                     "neuron": old, "output": {**old, "reset": "none"}, "surrogate": {"kind": "atan", "slope": 2.0},
                     "readout": "membrane", "membrane_reduce": "sum", "dropout": 0.0}
    cfg = parse_model(model_section, "model", "outputs/old/config.yaml")
    assert cfg.hidden[0].neuron.decay == 0.9 and cfg.output.reset == "none"
    network = Network(cfg, time_steps=4)
    state = network.state_dict()
    assert not any(key.endswith("alpha") for key in state)
    old_state = {**state, "neurons.0.alpha": torch.tensor(0.8), "output_neurons.alpha": torch.tensor(0.8)}
    Network(cfg, time_steps=4).load_state_dict(old_state)  # strict: nothing missing, nothing unexpected
    with pytest.raises(ConfigError, match="unknown key"):  # a config of today that gives leaky an alpha is told
        parse_model({"neuron": {"model": "leaky", "alpha": 0.8}}, "model", "new.yaml")


def test_a_checkpoint_config_written_before_new_keys_is_not_an_edit():
    """Resuming a run started by an older version: keys added since (data.dataset) take their defaults, and the
    unused alpha of old leaky sections goes, so only real edits stop a resume."""
    from snnrun.commands import _resolved_again, config_changes
    from snnrun.schema import config_to_dict

    cfg = small_config()
    saved = config_to_dict(cfg)
    del saved["data"]["dataset"]
    for section in [saved["model"]["neuron"], *saved["model"]["hidden"]]:
        section["alpha"] = 0.8
    assert config_changes(saved, config_to_dict(cfg))  # compared raw, they differ
    assert config_changes(_resolved_again(saved), config_to_dict(cfg)) == []
    edited = {**saved, "train": {**saved["train"], "lr": 0.5}}
    assert config_changes(_resolved_again(edited), config_to_dict(cfg)) == [f"train.lr: 0.5 -> {cfg.train.lr!r}"]
