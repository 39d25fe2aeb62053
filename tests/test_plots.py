"""Plots: bounded whatever the time steps or neurons, readable, and stopped by Ctrl-C or SIGTERM in every phase.

The capping functions are tested directly on 10,000-step inputs; the figures through `plots._save`, replaced
by one that keeps the figure to look at; stopping through the commands' own `should_stop` callbacks, or a
signal the test process sends itself at a known point (`signal.raise_signal`, handled before it returns).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
from matplotlib.collections import EventCollection, PathCollection
from matplotlib.image import AxesImage
from typer.testing import CliRunner

from snnrun import commands, plots
from snnrun.cli import StopFlag, _simulation_table, app
from snnrun.data import available
from snnrun.neurons import Clock
from snnrun.schema import parse_simulation
from snnrun.simulation import simulate

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
needs_mnist = pytest.mark.skipif(not available(DATA), reason="MNIST not prepared: run `make data`")
runner = CliRunner()


@pytest.fixture
def figures(monkeypatch) -> list:
    """The figures the plot functions make, kept open to look at instead of written."""
    kept = []

    def keep(fig, path):
        kept.append(fig)
        return path

    monkeypatch.setattr(plots, "_save", keep)
    yield kept
    for fig in kept:
        matplotlib.pyplot.close(fig)


def population(steps: int = 10_000, neurons: int = 21, recorded: int = 21, spikes: int = 10_000,
               seed: int = 0) -> SimpleNamespace:
    """A simulate result shaped like SimulationResult: dense traces of the recorded neurons (sawtooth membranes
    that reach past the threshold), spikes of all neurons as time-ordered events (Brian2's SpikeMonitor)."""
    rng = np.random.default_rng(seed)
    spike_steps = np.sort(rng.integers(0, steps, spikes))
    spike_neurons = rng.integers(0, neurons, spikes)
    membrane = (np.arange(steps)[:, None] % 17) / 16 * 1.2 - 0.1 + 0.01 * np.arange(recorded)
    return SimpleNamespace(
        time=np.arange(steps) * 0.1, current=np.tile(np.linspace(0, 5, recorded), (steps, 1)),
        membrane=membrane, spike_steps=spike_steps, spike_neurons=spike_neurons, synaptic=None,
        threshold=np.ones(recorded), amplitude=None, clock=Clock(0.1, "ms"),
        metrics={"population": {"neurons": neurons}})


def drawn_points(fig) -> list[int]:
    """The number of points of every line, marker set and event row in a figure."""
    counts = []
    for ax in fig.axes:
        counts += [len(line.get_xdata()) for line in ax.get_lines()]
        for collection in ax.collections:
            if isinstance(collection, EventCollection):
                counts.append(len(collection.get_positions()))
            elif isinstance(collection, PathCollection):
                counts.append(len(collection.get_offsets()))
    return counts


# --------------------------------------------------------------------------- capping


def test_envelope_bounds_a_10000_step_line_and_keeps_every_peak():
    steps = np.arange(10_000)
    y = np.sin(steps / 300.0)
    y[::97] = 5.0  # one-step spikes: each must survive
    y[50::97] = -3.0  # and one-step resets
    x, kept = plots.envelope(steps, y)
    assert len(x) <= plots.MAX_POINTS
    assert np.all(np.diff(x) >= 0)  # in time order
    assert np.array_equal(kept, y[x])  # real samples, not averages
    assert set(x[kept == 5.0]) == set(steps[::97]) and set(x[kept == -3.0]) == set(steps[50::97])
    short = np.arange(300.0)
    assert np.array_equal(plots.envelope(short, short)[1], short)  # a short line as it is


def test_an_animation_shows_at_most_max_frames_spread_to_the_last_step():
    frames = plots.animation_steps(10_000)
    assert len(frames) <= plots.MAX_FRAMES and frames[0] == 0 and frames[-1] == 9_999
    assert np.all(np.diff(frames) > 0)
    assert np.array_equal(plots.animation_steps(12), np.arange(12))  # a short run: every step


def test_event_image_counts_a_million_events_in_chunks_into_bounded_columns(monkeypatch):
    monkeypatch.setattr(plots, "_EVENT_CHUNK", 100_000)
    rng = np.random.default_rng(1)
    steps = np.sort(rng.integers(0, 50_000, 1_000_000))
    neurons = rng.integers(0, 5_000, 1_000_000)
    rows = np.arange(0, 5_000, 25)
    image, bucket = plots.event_image(steps, neurons, rows, 50_000)
    assert image.shape == (len(rows), 1_000) and bucket == 50
    assert image.sum() == np.isin(neurons, rows).sum()
    assert image[3, 7] == ((neurons == rows[3]) & (steps // 50 == 7)).sum()


def test_spike_count_animation_of_10000_steps_is_capped_and_titled_with_the_real_steps(tmp_path, monkeypatch):
    from matplotlib.text import Text
    from PIL import Image

    titles = []
    real_set_text = Text.set_text
    monkeypatch.setattr(Text, "set_text", lambda self, s: (titles.append(str(s)), real_set_text(self, s))[1])
    spikes = np.zeros((10_000, 10))
    spikes[::3, 4] = 1
    path = plots.spike_count_animation(spikes, np.zeros((28, 28)), 4, tmp_path / "counts.gif", max_frames=6)
    with Image.open(path) as gif:
        assert gif.n_frames == 6
    named = [int(t.split("step ")[1].split("/")[0]) for t in titles if "step " in t and "leading class" in t]
    assert named[1:] == [t + 1 for t in plots.animation_steps(10_000, 6)]  # (the first: the layout's widest)
    assert named[1] == 1 and named[-1] == 10_000


def test_a_stop_between_animation_frames_writes_no_gif(tmp_path):
    asked = []

    def stop_at_the_third_frame():
        asked.append(1)
        return len(asked) >= 3

    with pytest.raises(plots.Stopped):
        plots.spike_count_animation(np.ones((500, 10)), np.zeros((28, 28)), 1, tmp_path / "counts.gif",
                                    should_stop=stop_at_the_third_frame)
    assert len(asked) == 3 and not (tmp_path / "counts.gif").exists()


# --------------------------------------------------------------------------- figures


def test_current_membrane_spikes_of_10000_steps_draws_a_bounded_figure(figures):
    result = population()
    plots.current_membrane_spikes(result, Path("unused.png"), "f-I", "nA", "mV")
    (fig,) = figures
    assert max(drawn_points(fig)) <= plots.MAX_POINTS


def test_each_shown_neuron_gets_its_own_membrane_row_and_legends_cover_no_trace(figures):
    plots.current_membrane_spikes(population(steps=2_000), Path("unused.png"), "f-I", "nA", "mV")
    (fig,) = figures
    fig.canvas.draw()
    rows = [ax for ax in fig.axes if ax.get_ylabel().startswith("neuron ")]
    assert [ax.get_ylabel() for ax in rows] == ["neuron 0", "neuron 5", "neuron 10", "neuron 15", "neuron 20"]
    assert all(len([line for line in ax.get_lines() if line.get_linestyle() == "-"]) == 1 for ax in rows)
    assert "5 of 21 neurons shown" in fig.axes[0].get_title()
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None:  # in the right margin, off the data
            assert legend.get_window_extent().x0 >= ax.get_window_extent().x1


def test_one_neuron_keeps_its_threshold_legend_off_the_trace(figures):
    result = simulate(parse_simulation({"stimulus": {"kind": "sine"}}, "test"))
    plots.current_membrane_spikes(result, Path("unused.png"))
    (fig,) = figures
    fig.canvas.draw()
    membrane = next(ax for ax in fig.axes if ax.get_ylabel() == "membrane")
    legend = membrane.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["threshold"]
    assert legend.get_window_extent().x0 >= membrane.get_window_extent().x1


def test_raster_of_a_large_population_shows_evenly_spaced_neurons_and_says_so(figures):
    result = population(steps=10_000, neurons=5_000, recorded=10, spikes=1_000_000)
    plots.raster(result, Path("unused.png"))
    (fig,) = figures
    ax_r = fig.axes[0]
    assert "200 of 5,000 neurons, evenly spaced" in ax_r.get_title()
    assert max(drawn_points(fig)) <= plots.MAX_MARKERS
    images = ax_r.get_images()
    assert len(images) == 1 and images[0].get_array().shape[1] <= plots.MAX_COLUMNS  # 40,000 spikes shown: an image


def test_network_raster_of_10000_steps_draws_each_layer_within_bounds(figures):
    rng = np.random.default_rng(2)
    layers = [rng.random((10_000, 784)) < 0.1, rng.random((10_000, 64)) < 0.001, np.zeros((10_000, 10))]
    plots.network_raster(layers, ["input", "hidden 1", "output"], np.zeros((28, 28)), 3, 3, Path("unused.png"))
    (fig,) = figures
    assert max(drawn_points(fig)) <= plots.MAX_MARKERS
    input_ax, hidden_ax = fig.axes[0], fig.axes[1]
    assert isinstance(input_ax.get_images()[0], AxesImage) and "within 10 steps" in input_ax.get_title("right")
    assert not hidden_ax.get_images()  # 640 spikes: one mark each, at their own steps


def test_training_curves_of_one_epoch_tick_whole_epochs_only(figures):
    record = {"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.9, "val_loss": 0.4, "val_accuracy": 0.92}
    plots.training_curves([record], Path("unused.png"))
    (fig,) = figures
    fig.canvas.draw()
    for ax in fig.axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks == [1.0]


def test_stdp_curves_of_three_passes_label_at_most_seven_ticks_in_thousands(figures):
    history = [{"images": n, "train_accuracy": 0.8, "spikes_per_image": 8.0, "theta_mean_mv": 40.0}
               for n in range(250, 180_001, 250)]
    plots.stdp_curves(history, Path("unused.png"))
    (fig,) = figures
    fig.canvas.draw()
    for ax in fig.axes:
        low, high = ax.get_xlim()
        labels = [tick.get_text() for tick in ax.get_xticklabels() if low <= tick.get_position()[0] <= high]
        assert 3 <= len(labels) <= 7 and "160k" in labels  # 180000 written out would run into its neighbours


def test_output_membrane_has_a_title_naming_the_digit(figures):
    plots.output_membrane(np.zeros((25, 10)), 1.0, 7, Path("unused.png"), predicted=2)
    (fig,) = figures
    assert "label 7, predicted 2" in fig.axes[0].get_title()


def test_lapicque_plots_its_current_in_amperes_and_membrane_in_volts(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(plots, "current_membrane_spikes",
                        lambda result, path, title, current_unit, membrane_unit: seen.update(
                            current=current_unit, membrane=membrane_unit))
    cfg = parse_simulation({"time_steps": 20, "neuron": {"model": "lapicque"}}, "test")
    commands._plot_simulation(cfg, simulate(cfg), tmp_path)
    assert seen == {"current": "A", "membrane": "V"}


def test_the_simulation_table_says_how_many_neurons_it_leaves_out_and_where_they_are():
    per = {key: [1.0] * 21 for key in ("spike_count", "firing_rate", "first_spike_time", "mean_isi", "isi_cv")}
    metrics = {"units": {"firing_rate": "Hz", "mean_isi": "ms"}, "per_neuron": per,
               "population": {"total_spikes": 21, "mean_firing_rate": 1.0, "mean_isi": 1.0}}
    run = SimpleNamespace(result=SimpleNamespace(metrics=metrics, seconds=0.1, engine="torch"),
                          folder=Path("outputs/x"),
                          config=SimpleNamespace(neuron=SimpleNamespace(model="lif"), time_steps=10,
                                                 stimulus=SimpleNamespace(kind="step")))
    table = _simulation_table(run)
    assert table.row_count == 11  # 10 neurons and "all"
    assert "neurons 10–20 not shown (11 more)" in table.caption and "metrics.json" in table.caption


# --------------------------------------------------------------------------- stopping


def test_draw_in_turn_skips_the_rest_once_stopped_and_names_them():
    drawn = []
    jobs = [(name, lambda name=name: drawn.append(name)) for name in ("a.png", "b.png", "c.gif")]
    assert plots.draw_in_turn(jobs, lambda: len(drawn) == 1) == ["b.png", "c.gif"]
    assert drawn == ["a.png"]


def test_a_signal_with_at_once_stops_at_once_and_exits_143_for_sigterm():
    stop = StopFlag(at_once=True)
    with pytest.raises(KeyboardInterrupt), stop.installed():
        signal.raise_signal(signal.SIGTERM)
        pytest.fail("the handler did not stop the command")
    assert stop.is_set() and stop.exit_code == 143 and stop.name == "SIGTERM"


def test_ctrl_c_while_simulate_plots_leaves_no_run_folder(in_tmp, monkeypatch):
    real = commands._plot_simulation

    def plot_then_ctrl_c(*args):
        real(*args)
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(commands, "_plot_simulation", plot_then_ctrl_c)
    result = runner.invoke(app, ["simulate", "--out", "runs"])
    assert result.exit_code == 130, result.output
    said = " ".join(result.output.split())
    assert "stopped by Ctrl-C" in said and "nothing written" in said
    assert not Path("runs").exists() or not any(Path("runs").iterdir())  # no run folder, no staging folder


@needs_mnist
def test_a_stop_while_plotting_keeps_what_is_drawn_and_resume_draws_the_rest(in_tmp, monkeypatch):
    args = ["train", "configs/smoke.yaml", "--device", "cpu", "--out", "runs", "--set", f"data.root={DATA}",
            "--set", "train.subset.train=640", "--set", "train.subset.test=200", "--set", "data.val_size=500",
            "--set", "model.hidden=[32]"]
    real_curves = plots.training_curves

    def curves_then_ctrl_c(*rest, **options):
        real_curves(*rest, **options)
        signal.raise_signal(signal.SIGINT)  # the stop flag is set before curves.png's job returns

    monkeypatch.setattr(plots, "training_curves", curves_then_ctrl_c)
    result = runner.invoke(app, args)
    assert result.exit_code == 130, result.output
    folder = Path(result.output.strip().splitlines()[-1])
    said = " ".join(result.output.split())  # as one line, whatever rich wrapped
    assert "stopped while plotting" in said and "not drawn: raster.png" in said and "--resume" in said
    assert (folder / "curves.png").is_file() and (folder / "metrics.csv").is_file()
    assert not (folder / "raster.png").exists() and not (folder / "summary.json").exists()
    log = (folder / "run.log").read_text()
    assert "not drawn: raster.png, membrane.png, spike_counts.png, spike_counts.gif" in log
    stopped_at = log.split("test accuracy ")[1].split(" %")[0]

    monkeypatch.setattr(plots, "training_curves", real_curves)
    resumed = runner.invoke(app, ["train", "--resume", str(folder)])
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads((folder / "summary.json").read_text())
    assert f"{100 * summary['test_accuracy']:.2f}" == stopped_at  # the score was final already
    assert all((folder / name).is_file() for name in ("raster.png", "membrane.png", "spike_counts.gif"))

    # eval: a stop before the GIF writes no eval folder at all (callback, then a real SIGTERM)
    with pytest.raises(plots.Stopped, match="spike_counts.gif"):
        commands.run_evaluation(folder, should_stop=lambda: any((folder / "eval").glob(".staging-*/confusion.png")))
    real_confusion = plots.confusion

    def confusion_then_sigterm(*rest, **options):
        real_confusion(*rest, **options)
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(plots, "confusion", confusion_then_sigterm)
    stopped = runner.invoke(app, ["eval", str(folder)])
    assert stopped.exit_code == 143 and "stopped by SIGTERM" in " ".join(stopped.output.split()), stopped.output
    assert not any((folder / "eval").iterdir())


@needs_mnist
def test_a_stop_during_the_final_test_evaluation_is_heard_between_its_batches(tmp_path):
    import torch

    from snnrun.config import apply_overrides, load_yaml
    from snnrun.schema import parse_train
    from snnrun.training import Callbacks, TrainingInterrupted, train

    data = apply_overrides(load_yaml(REPO / "configs" / "smoke.yaml"), [
        f"data.root={DATA}", "device=cpu", "train.subset.train=640", "train.subset.test=300", "data.val_size=500",
        "model.hidden=[32]", "train.eval_batch_size=100"])
    cfg = parse_train(data, "test")
    asked = []

    def stop_in_the_test_score():  # 10 training batches, then the test batches ask
        asked.append(1)
        return len(asked) == 12

    with pytest.raises(TrainingInterrupted, match="final test evaluation"):
        train(cfg, tmp_path, torch.device("cpu"), Callbacks(should_stop=stop_in_the_test_score))
    assert len(asked) == 12  # heard at the second test batch, not after the third
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    summary = train(cfg, tmp_path, torch.device("cpu"), resume=True)  # only scores again
    assert summary["epochs"] == 1 and 0 < summary["test_accuracy"] <= 1
