"""Figures a researcher looks at: traces, rasters, f-I curves. Each function writes one PNG (or one GIF).

Every figure draws a bounded number of things whatever the time steps or neurons: a line at most `MAX_POINTS`
points (the minimum and maximum of each pixel column, so no spike peak or reset is lost), a raster at most
`MAX_RASTER_ROWS` neurons and `MAX_MARKERS` spike marks (past that, an image of `MAX_COLUMNS` time columns),
an animation at most `MAX_FRAMES` frames. What drawing needs beyond the arrays passed in stays that small too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, works headless and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

MAX_TRACES = 5  # neurons whose current and membrane the three-panel figure shows
MAX_RASTER_ROWS = 200  # neurons in a raster (evenly spaced over the population when it has more)
MAX_POINTS = 2000  # points of one line: the minimum and maximum of each of ~1,000 pixel columns
MAX_COLUMNS = 1000  # time columns of a raster (a figure is about 1,000 pixels wide)
MAX_MARKERS = 20_000  # spikes drawn one mark each; a raster with more is drawn as an image of time columns
MAX_FRAMES = 100  # frames of an animation, its steps spread evenly over the run
_EVENT_CHUNK = 1 << 20  # spike events counted this many at a time


class Stopped(Exception):
    """A stop was asked for (Ctrl-C, SIGTERM) while a figure was being drawn; that file was not written."""


def draw_in_turn(jobs: Sequence[tuple[str, Callable[[], object]]],
                 should_stop: Callable[[], bool] = lambda: False) -> list[str]:
    """Draw each (file name, draw) in turn, asking `should_stop()` before each; once it says yes, draw nothing
    more. Returns the names not drawn (one stopped half-way, which writes nothing, included)."""
    for i, (_, draw) in enumerate(jobs):
        if should_stop():
            return [name for name, _ in jobs[i:]]
        try:
            draw()
        except Stopped:
            return [name for name, _ in jobs[i:]]
    return []


# --------------------------------------------------------------------------- bounding what is drawn


def envelope(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """A line of at most `max_points` points that looks like (x, y) drawn in full: the samples are cut into
    equal runs, and each run keeps its minimum and its maximum, in their order (so every spike peak, reset and
    trough is still drawn). Short lines come back as they are."""
    y = np.asarray(y)
    n = len(y)
    if n <= max_points:
        return np.asarray(x), y
    runs = max(1, max_points // 2 - 1)
    size = -(-n // runs)  # samples per run (ceil), so there are at most runs + 1 runs
    full = n // size
    body = y[:full * size].reshape(full, size)  # a view, also of a strided column
    low, high = np.argmin(body, axis=1), np.argmax(body, axis=1)
    base = np.arange(full) * size
    index = np.stack([base + np.minimum(low, high), base + np.maximum(low, high)], axis=1).ravel()
    if full * size < n:
        rest = y[full * size:]
        a, b = full * size + int(np.argmin(rest)), full * size + int(np.argmax(rest))
        index = np.concatenate([index, [min(a, b), max(a, b)]])
    return np.asarray(x)[index], y[index]


def time_bucket(steps: int, columns: int = MAX_COLUMNS) -> int:
    """Steps per drawn time column, so that `steps` make at most `columns` columns."""
    return max(1, -(-steps // columns))


def event_image(spike_steps: np.ndarray, spike_neurons: np.ndarray, rows: np.ndarray, steps: int,
                columns: int = MAX_COLUMNS) -> tuple[np.ndarray, int]:
    """Spike events (step, neuron) of the neurons `rows` (ascending ids) counted per row and time column:
    ((len(rows), columns') counts, steps per column). Counted a chunk of events at a time, so it needs no more
    memory than the image, however many events there are."""
    rows = np.asarray(rows, dtype=np.int64)
    bucket = time_bucket(steps, columns)
    width = -(-steps // bucket)
    counts = np.zeros(len(rows) * width, dtype=np.int64)
    for start in range(0, len(spike_steps), _EVENT_CHUNK):
        neuron = np.asarray(spike_neurons[start:start + _EVENT_CHUNK], dtype=np.int64)
        step = np.asarray(spike_steps[start:start + _EVENT_CHUNK], dtype=np.int64)
        row = np.searchsorted(rows, neuron)
        hit = row < len(rows)
        hit[hit] = rows[row[hit]] == neuron[hit]
        counts += np.bincount(row[hit] * width + step[hit] // bucket, minlength=len(counts))
    return counts.reshape(len(rows), width), bucket


def event_marks(spike_steps: np.ndarray, spike_neurons: np.ndarray, rows: np.ndarray,
                steps: int) -> tuple[tuple[np.ndarray, np.ndarray] | None, np.ndarray, int]:
    """What a raster of the neurons `rows` (ascending ids) draws: ((step, row) of each spike, or None when there
    are more than `MAX_MARKERS`), with the image of `event_image` for when there are."""
    rows = np.asarray(rows, dtype=np.int64)
    image, bucket = event_image(spike_steps, spike_neurons, rows, steps)
    if image.sum() > MAX_MARKERS:
        return None, image, bucket
    found_steps, found_rows = [], []
    for start in range(0, len(spike_steps), _EVENT_CHUNK):
        neuron = np.asarray(spike_neurons[start:start + _EVENT_CHUNK], dtype=np.int64)
        row = np.searchsorted(rows, neuron)
        hit = row < len(rows)
        hit[hit] = rows[row[hit]] == neuron[hit]
        found_steps.append(np.asarray(spike_steps[start:start + _EVENT_CHUNK], dtype=np.int64)[hit])
        found_rows.append(row[hit])
    marks = (np.concatenate(found_steps), np.concatenate(found_rows)) if found_steps else \
        (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    return marks, image, bucket


def dense_marks(spikes: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray] | None, np.ndarray | None, int]:
    """`event_marks` of a dense (time, neurons) spike array: (step, neuron) of each spike when there are at most
    `MAX_MARKERS`, else None and the `dense_image`."""
    if np.count_nonzero(spikes) <= MAX_MARKERS:
        return np.nonzero(spikes), None, 1
    image, bucket = dense_image(spikes)
    return None, image, bucket


def dense_image(spikes: np.ndarray, columns: int = MAX_COLUMNS) -> tuple[np.ndarray, int]:
    """A dense (time, neurons) spike array summed per time column: ((neurons, columns') sums, steps per column)."""
    steps = spikes.shape[0]
    bucket = time_bucket(steps, columns)
    if bucket == 1:
        return np.asarray(spikes).T, 1
    return np.add.reduceat(spikes, np.arange(0, steps, bucket), axis=0).T, bucket


def animation_steps(steps: int, max_frames: int = MAX_FRAMES) -> np.ndarray:
    """The steps an animation of a `steps`-step run shows: all of them, or `max_frames` spread evenly from the
    first to the last."""
    return np.unique(np.linspace(0, steps - 1, min(steps, max_frames)).round().astype(np.int64))


def _rate_counts(spike_steps: np.ndarray, steps: int, bins: int) -> np.ndarray:
    """Spikes per time bin (`bins` equal bins over `steps` steps), counted a chunk of events at a time."""
    counts = np.zeros(bins, dtype=np.int64)
    for start in range(0, len(spike_steps), _EVENT_CHUNK):
        step = np.asarray(spike_steps[start:start + _EVENT_CHUNK], dtype=np.int64)
        counts += np.bincount(step * bins // steps, minlength=bins)
    return counts


def _draw_raster(ax, marks, image: np.ndarray | None, bucket: int, t0: float, dt: float, marker_size: float) -> str:
    """One mark per spike (`marks`: steps, rows), or, when there were too many, the image of time columns,
    black where a neuron fired in that column. Says how it was drawn when not one mark per spike."""
    if marks is not None:
        step, row = marks
        ax.scatter(t0 + step * dt, row, s=marker_size, marker="|", color="black", linewidths=1.0)
        return ""
    rows, width = image.shape
    ax.imshow(image > 0, aspect="auto", origin="lower", cmap="gray_r", interpolation="nearest", vmin=0, vmax=1,
              extent=(t0, t0 + width * bucket * dt, -0.5, rows - 0.5))
    return f"too many spikes to mark one by one: black where a neuron fired within {bucket} steps"


def _legend_outside(ax, **options) -> None:
    """A legend in the right margin, where it covers no data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize="small", borderaxespad=0,
              **options)


def _time_label(unit: str) -> str:
    return {"ms": "time (ms)", "s": "time (s)"}.get(unit, "time step")


def _with_unit(name: str, unit: str) -> str:
    return f"{name} ({unit})" if unit else name


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- simulate


def current_membrane_spikes(result, path: Path, title: str = "", current_unit: str = "",
                            membrane_unit: str = "") -> Path:
    """Panels sharing the time axis: input current (and the synaptic current, for the synaptic model), membrane
    with the threshold dashed, spikes. A population shows up to `MAX_TRACES` neurons spread evenly over the
    recorded ones (an f-I run shows low to high drive), each membrane in its own row."""
    time, clock = result.time, result.clock
    recorded = result.membrane.shape[1]
    picked = np.unique(np.linspace(0, recorded - 1, MAX_TRACES).round().astype(np.int64))
    shown = len(picked)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = [colors[row % len(colors)] for row in range(shown)]
    rows = 1 if shown == 1 else shown
    heights = [1.5, *([3.0] if shown == 1 else [1.0] * shown), 0.5 + 0.3 * shown]
    fig = plt.figure(figsize=(9, sum(heights) + 0.9))
    grid = fig.add_gridspec(len(heights), 1, height_ratios=heights, hspace=0.18)
    ax_i = fig.add_subplot(grid[0])
    ax_us = [fig.add_subplot(grid[1 + r], sharex=ax_i) for r in range(rows)]
    ax_s = fig.add_subplot(grid[-1], sharex=ax_i)

    synaptic = getattr(result, "synaptic", None)
    for row, k in enumerate(picked):
        label = f"neuron {k}" if shown > 1 else ("input current" if synaptic is not None else None)
        ax_i.plot(*envelope(time, result.current[:, k]), color=color[row], lw=1.2, label=label,
                  drawstyle="steps-post")
        if synaptic is not None:
            ax_i.plot(*envelope(time, synaptic[:, k]), color=color[row], lw=1.2, ls="--",
                      label="synaptic current" if shown == 1 else None)
        ax_u = ax_us[row if shown > 1 else 0]
        ax_u.plot(*envelope(time, result.membrane[:, k]), color=color[row], lw=1.2)
        ax_u.axhline(result.threshold[k], color="black", ls="--", lw=1, label="threshold")
        if shown > 1:
            ax_u.set_ylabel(f"neuron {k}", fontsize="small", color=color[row])
    if shown > 1 and synaptic is not None:
        handles, labels = ax_i.get_legend_handles_labels()
        handles += [Line2D([], [], color="black", lw=1.2), Line2D([], [], color="black", lw=1.2, ls="--")]
        ax_i.legend(handles, [*labels, "input current", "synaptic current"], loc="upper left",
                    bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize="small", borderaxespad=0)
    elif shown > 1 or synaptic is not None:
        _legend_outside(ax_i)
    _legend_outside(ax_us[0])
    ax_i.set_ylabel(_with_unit("current" if synaptic is not None else "input current", current_unit))
    if shown == 1:
        ax_us[0].set_ylabel(_with_unit("membrane", membrane_unit))
    else:  # each row's label names its neuron; the quantity is said once, in the right margin beside the rows
        middle = ax_us[len(ax_us) // 2]
        middle.text(1.015, 0.5, _with_unit("membrane", membrane_unit), transform=middle.transAxes, rotation=270,
                    va="center", ha="left")

    steps = len(time)
    marks, image, bucket = event_marks(result.spike_steps, result.spike_neurons, picked, steps)
    if marks is not None:  # each spike at its own step
        positions = [time[0] + marks[0][marks[1] == row] * clock.dt for row in range(shown)]
    else:  # too many: one mark per time column that has spikes
        positions = [time[0] + np.nonzero(image[row])[0] * bucket * clock.dt for row in range(shown)]
    ax_s.eventplot(positions, colors=color, lineoffsets=np.arange(shown), linelengths=0.8)
    ax_s.set_ylabel("spikes" if shown == 1 else "spikes\n(neuron)")
    ax_s.set_yticks(np.arange(shown) if shown > 1 else [], [str(k) for k in picked] if shown > 1 else [])
    for tick, tick_color in zip(ax_s.get_yticklabels(), color, strict=False):
        tick.set_color(tick_color)  # the neuron ids, in their colours (a row with no spikes still names its neuron)
    ax_s.set_ylim(-0.6, shown - 0.4)
    ax_s.set_xlabel(_time_label(clock.unit))
    ax_s.set_xlim(time[0], time[-1] + clock.dt)
    for ax in (ax_i, *ax_us):
        ax.grid(alpha=0.3)
        ax.tick_params(labelbottom=False)
    heading = title
    if shown < recorded:
        heading += f"{' — ' if title else ''}{shown} of {recorded} neurons shown"
    if marks is None:
        heading += f"{'; ' if heading else ''}a spike mark per {bucket} steps with spikes"
    if heading:
        ax_i.set_title(heading)
    fig.align_ylabels([ax_i, *ax_us, ax_s])
    return _save(fig, path)


def raster(result, path: Path, title: str = "") -> Path:
    """Spike raster of the population (up to `MAX_RASTER_ROWS` neurons, evenly spaced) with the firing rate of
    all neurons over time below."""
    time, clock = result.time, result.clock
    steps, neurons = len(time), int(result.metrics["population"]["neurons"])
    if neurons <= MAX_RASTER_ROWS:
        rows = np.arange(neurons)
    else:
        rows = np.unique(np.linspace(0, neurons - 1, MAX_RASTER_ROWS).round().astype(np.int64))
    marks, image, bucket = event_marks(result.spike_steps, result.spike_neurons, rows, steps)
    fig, (ax_r, ax_p) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    how = _draw_raster(ax_r, marks, image, bucket, time[0], clock.dt, min(120.0, max(2.0, 3000 / max(len(rows), 1))))
    ax_r.yaxis.set_major_locator(MaxNLocator(integer=True))
    if len(rows) < neurons:  # rows stand for every k-th neuron: the ticks name the neurons
        ax_r.yaxis.set_major_formatter(FuncFormatter(
            lambda value, _: str(rows[int(round(value))]) if 0 <= round(value) < len(rows) else ""))
    ax_r.set_ylabel("neuron")
    ax_r.set_ylim(-0.5, len(rows) - 0.5)
    bins = min(steps, 100)
    counts = _rate_counts(result.spike_steps, steps, bins)
    edges = np.linspace(time[0], time[-1] + clock.dt, bins + 1)
    per_unit = counts / (neurons * (edges[1] - edges[0]))
    if clock.seconds:
        per_unit = per_unit / clock.seconds
    ax_p.step(edges[:-1], per_unit, where="post", color="tab:blue")
    ax_p.set_ylabel("rate (Hz)" if clock.seconds else "spikes/step")
    ax_p.set_xlabel(_time_label(clock.unit))
    ax_p.set_xlim(time[0], time[-1] + clock.dt)
    ax_p.set_ylim(bottom=0)
    ax_p.grid(alpha=0.3)
    notes = []
    if len(rows) < neurons:
        notes.append(f"{len(rows)} of {neurons:,} neurons, evenly spaced")
    if how:
        notes.append(how)
    shown = f" ({'; '.join(notes)})" if notes else ""
    ax_r.set_title((title + " — " if title else "") + f"spike raster{shown}")
    ax_p.set_title(f"population rate, all {neurons:,} neurons", fontsize="small")
    return _save(fig, path)


def fi_curve(amplitude: np.ndarray, rate: np.ndarray, path: Path, rate_unit: str, current_unit: str = "",
             title: str = "") -> Path:
    """Firing rate against input amplitude, one point per neuron (an envelope of them for huge populations)."""
    order = np.argsort(amplitude)
    x, y = envelope(np.asarray(amplitude)[order], np.asarray(rate)[order])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(x, y, "o-" if len(x) <= 200 else "-", ms=4)
    ax.set_xlabel(_with_unit("input amplitude", current_unit))
    ax.set_ylabel(f"firing rate ({rate_unit})")
    ax.grid(alpha=0.3)
    ax.set_title(title or "f–I curve")
    return _save(fig, path)


def overlaid(curves: list[tuple[str, np.ndarray, np.ndarray]], path: Path, xlabel: str, ylabel: str,
             title: str = "", markers: bool = False) -> Path:
    """One line per run (label, x, y), each drawn with at most MAX_POINTS points: f-I curves or membranes of
    the runs `snnrun compare` is given."""
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for label, x, y in curves:
        x, y = envelope(np.asarray(x), np.asarray(y))
        ax.plot(x, y, "o-" if markers and len(x) <= 200 else "-", ms=3, lw=1.2, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(curves) <= 20:
        _legend_outside(ax)
    ax.set_title(title)
    return _save(fig, path)


def compared_training(runs: list[tuple[str, list[dict]]], path: Path, title: str = "") -> Path:
    """Validation accuracy (training accuracy where a run has no validation) and training loss per epoch, one
    line per run."""
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(13, 4.5))
    for label, history in runs:
        epochs = [r["epoch"] for r in history]
        validated = bool(history) and history[0].get("val_accuracy") is not None
        accuracy = [100 * r["val_accuracy" if validated else "train_accuracy"] for r in history]
        ax_l.plot(epochs, [r["train_loss"] for r in history], "o-", ms=3, label=label)
        ax_a.plot(epochs, accuracy, "o-", ms=3, label=label if validated else f"{label} (train)")
    ax_l.set_ylabel("training loss")
    ax_a.set_ylabel("validation accuracy (%)")
    for ax in (ax_l, ax_a):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
    if len(runs) <= 20:
        _legend_outside(ax_a)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# --------------------------------------------------------------------------- train and eval


def training_curves(history: list[dict], path: Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, training and validation."""
    epochs = [r["epoch"] for r in history]
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
    ax_l.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_a.plot(epochs, [100 * r["train_accuracy"] for r in history], "o-", label="train")
    if history and history[0]["val_loss"] is not None:
        ax_l.plot(epochs, [r["val_loss"] for r in history], "o-", label="validation")
        ax_a.plot(epochs, [100 * r["val_accuracy"] for r in history], "o-", label="validation")
    ax_l.set_ylabel("loss")
    ax_a.set_ylabel("accuracy (%)")
    for ax in (ax_l, ax_a):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs, even just one
        if len(epochs) == 1:
            ax.set_xlim(epochs[0] - 0.5, epochs[0] + 0.5)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def network_raster(layers: list[np.ndarray], names: list[str], image: np.ndarray, label: int, predicted: int,
                   path: Path, time_label: str = "time step") -> Path:
    """Spikes of every layer for one digit (input, hidden..., output), the digit beside them."""
    return _save(network_raster_figure(layers, names, image, label, predicted, time_label), path)


def network_raster_figure(layers: list[np.ndarray], names: list[str], image: np.ndarray, label: int,
                          predicted: int, time_label: str = "time step"):
    """`network_raster`'s figure, left open (for TensorBoard's add_figure, which closes it)."""
    fig = plt.figure(figsize=(11, 2.2 * len(layers) + 1))
    grid = fig.add_gridspec(len(layers), 2, width_ratios=[4, 1])
    for row, (spikes, name) in enumerate(zip(layers, names, strict=True)):
        ax = fig.add_subplot(grid[row, 0])
        steps, neurons = spikes.shape
        how = _draw_raster(ax, *dense_marks(spikes), 0, 1, 4 if neurons > 50 else 30)
        if how:
            ax.set_title(how, fontsize="small", loc="right")
        ax.set_xlim(-0.5, steps - 0.5)
        ax.set_ylim(-0.5, neurons - 0.5)
        ax.set_ylabel(f"{name}\n({neurons})")
        if name == "output":
            ax.set_yticks(range(neurons))
        if row == len(layers) - 1:
            ax.set_xlabel(time_label)
        else:
            ax.set_xticklabels([])
    ax_img = fig.add_subplot(grid[:, 1])
    _show_sample(ax_img, image)
    ax_img.set_title(f"label {label}, predicted {predicted}")
    fig.suptitle("spikes of each layer for one test sample")
    return fig


def _show_sample(ax, image: np.ndarray) -> None:
    """A digit (or an event recording's summed events) as a picture; a channels x time recording (SHD: many more
    rows than columns) fills the panel, with its axes named."""
    picture = np.asarray(image)
    if picture.ndim == 1 and picture.size == 784:
        picture = picture.reshape(28, 28)
    if picture.shape[0] > 3 * picture.shape[1]:
        ax.imshow(picture, cmap="gray_r", aspect="auto", origin="lower", interpolation="nearest")
        ax.set_xlabel("time step")
        ax.set_ylabel("channel")
        return
    ax.imshow(picture, cmap="gray_r")
    ax.axis("off")


def output_membrane(membrane: np.ndarray, threshold: float, label: int, path: Path,
                    predicted: int | None = None, unit: str = "") -> Path:
    """The output layer's membrane traces for one digit, the true class highlighted."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps = np.arange(membrane.shape[0])
    for k in range(membrane.shape[1]):
        ax.plot(*envelope(steps, membrane[:, k]), lw=2.5 if k == label else 1, alpha=1 if k == label else 0.6,
                label=f"class {k}" + (" (label)" if k == label else ""))
    ax.axhline(threshold, color="black", ls="--", lw=1, label="threshold")
    ax.set_xlabel("time step")
    ax.set_ylabel(f"output membrane ({unit})" if unit else "output membrane")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2, frameon=False, loc="upper left", bbox_to_anchor=(1, 1))
    said = f", predicted {predicted}" if predicted is not None else ""
    ax.set_title(f"output membrane of each class for one test digit (label {label}{said})")
    return _save(fig, path)


def spike_counts(counts: np.ndarray, label: int, path: Path, title: str = "output spikes per class") -> Path:
    """Output spikes per class for one digit; the label's bar highlighted."""
    fig, ax = plt.subplots(figsize=(6, 4))
    colors = ["tab:green" if k == label else "tab:gray" for k in range(len(counts))]
    ax.bar(range(len(counts)), counts, color=colors)
    ax.set_xticks(range(len(counts)))
    ax.set_xlabel("class")
    ax.set_ylabel("spikes")
    ax.set_title(f"{title} (label {label} in green)")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def spike_count_animation(spikes: np.ndarray, image: np.ndarray, label: int, path: Path,
                          title: str = "output spikes so far", seconds: float = 3.0,
                          should_stop: Callable[[], bool] | None = None, max_frames: int = MAX_FRAMES) -> Path:
    """An animated GIF of one digit's cumulative output spike count per class growing over the steps (the
    snnTorch tutorial's `spike_count` video), with the digit beside it. spikes: (time, classes) of 0/1 (or, for a
    readout without output neurons, its per-step values). At most `max_frames` frames, their steps spread evenly
    over the run, each titled with its own step; about `seconds` long, the last frame held two seconds more.
    `should_stop()` is asked before each frame: once it says yes, Stopped is raised and no file is written.
    Pillow writes it, so no ffmpeg is needed."""
    from PIL import Image

    counts = np.cumsum(np.asarray(spikes, dtype=float), axis=0)
    steps, classes = counts.shape
    shown = animation_steps(steps, max_frames)
    fps = int(np.clip(round(len(shown) / seconds), 2, 25))
    fig, (ax_img, ax) = plt.subplots(1, 2, figsize=(8, 3.8), dpi=80, gridspec_kw={"width_ratios": [1, 2.2]})
    try:
        _show_sample(ax_img, image)
        ax_img.set_title(f"input (label {label})")
        colors = ["tab:green" if k == label else "tab:gray" for k in range(classes)]
        bars = ax.bar(range(classes), np.zeros(classes), color=colors)
        ax.set_ylim(min(0.0, float(counts.min()) * 1.1), max(float(counts.max()), 1.0) * 1.1)
        ax.set_xticks(range(classes))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("class (label in green)")
        ax.set_ylabel("spikes so far" if title.startswith("output spikes") else "readout so far")
        ax.grid(alpha=0.3, axis="y")
        heading = fig.suptitle(f"{title}: step {steps}/{steps}, leading class 0")  # widest text, for the layout
        fig.tight_layout()
        frames = []
        for t in shown:
            if should_stop is not None and should_stop():
                raise Stopped(f"{Path(path).name}: stopped at frame {len(frames) + 1} of {len(shown)}")
            for bar, height in zip(bars, counts[t], strict=True):
                bar.set_height(height)
            lead = "none yet" if not counts[t].any() else str(int(np.argmax(counts[t])))
            heading.set_text(f"{title}: step {t + 1}/{steps}, leading class {lead}")
            fig.canvas.draw()
            rgba = Image.frombuffer("RGBA", fig.canvas.get_width_height(), fig.canvas.buffer_rgba(), "raw",
                                    "RGBA", 0, 1)
            frames.append(rgba.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE))  # a quarter the bytes
    finally:
        plt.close(fig)
    duration = round(1000 / fps)
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], loop=0,
                   duration=[duration] * (len(frames) - 1) + [duration + 2000])
    return path


MAX_KERNELS = 64  # kernels of a convolution drawn
MAX_MAPS = 12  # feature maps (channels) drawn
MAX_WINDOWS = 8  # time windows of the feature maps


def conv_kernels(weights: np.ndarray, path: Path, title: str = "") -> Path:
    """The first convolution's kernels (out_channels, in_channels, k, k): one tile each (summed over input
    channels), on one diverging colour scale centred on 0 so that sign and size compare across tiles."""
    kernels = weights[:MAX_KERNELS].sum(axis=1)
    count = len(kernels)
    cols = min(count, 8)
    rows = -(-count // cols)
    limit = float(np.abs(kernels).max()) or 1.0
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols + 1.2, 1.3 * rows + 0.6), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < count:
            image = ax.imshow(kernels[i], cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_title(str(i), fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label="weight")
    fig.suptitle(title or f"the first layer's {len(weights)} kernels" +
                 (f" (first {MAX_KERNELS})" if len(weights) > MAX_KERNELS else ""))
    return _save(fig, path)


def feature_maps(spikes: np.ndarray, image: np.ndarray, label: int, path: Path, title: str = "") -> Path:
    """One digit's spiking feature maps over time, spikes (time, channels, height, width) of a convolution
    layer: a row per channel (the first MAX_MAPS), a column per window of steps (at most MAX_WINDOWS), each
    cell each position's spikes per step in that window, beside the digit."""
    steps, channels = spikes.shape[:2]
    shown = min(channels, MAX_MAPS)
    edges = np.linspace(0, steps, min(steps, MAX_WINDOWS) + 1).round().astype(int)  # windows differ by a step at most
    sums = np.stack([spikes[a:b, :shown].mean(axis=0) for a, b in zip(edges[:-1], edges[1:], strict=True)], axis=1)
    top = 1.0  # a spike every step of the window
    windows = len(edges) - 1
    fig, axes = plt.subplots(shown, windows + 1, figsize=(1.2 * (windows + 1) + 1.2, 1.2 * shown + 0.8),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for c in range(shown):
        for w in range(windows):
            picture = axes[c, w + 1].imshow(sums[c, w], cmap="magma", vmin=0, vmax=top)
            if c == 0:
                a, b = edges[w], edges[w + 1]
                axes[0, w + 1].set_title(f"step {a}" if b - a == 1 else f"steps {a}-{b - 1}", fontsize=8)
        axes[c, 1].set_ylabel(f"ch {c}", fontsize=8)
        axes[c, 0].set_axis_off()
    axes[0, 0].imshow(image, cmap="gray_r")
    axes[0, 0].set_title(f"label {label}", fontsize=8)
    fig.colorbar(picture, ax=axes, shrink=0.6, label="spikes per step in the window")
    more = f" (first {shown} of {channels} channels)" if channels > shown else ""
    fig.suptitle(title or f"spiking feature maps of the first convolution over time{more}")
    return _save(fig, path)


def confusion(matrix: np.ndarray, path: Path, title: str = "") -> Path:
    """Confusion matrix: rows the true class, columns the predicted one, counts in the cells."""
    fig, ax = plt.subplots(figsize=(7, 6))
    shown = np.log1p(matrix)
    image = ax.imshow(shown, cmap="Blues")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            color = "white" if shown[i, j] > shown.max() * 0.6 else "black"
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(matrix.shape[1]))
    ax.set_yticks(range(matrix.shape[0]))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    fig.colorbar(image, ax=ax, label="log(1 + count)")
    return _save(fig, path)


def sweep(rows: list[dict], keys: list[str], metric: str, path: Path, title: str = "", label: str = "",
          heat_map: bool = True) -> Path:
    """A sweep's metric against each swept key: one panel per key (a line through the mean at each value, every
    member a dot), or, for a grid over two keys, a heat map of the metric with each cell's value written in it."""
    done = [r for r in rows if isinstance(r.get(metric), (int, float))]
    label = label or metric.replace("_", " ")
    if heat_map and len(keys) == 2 and done:
        ys, xs = (_ordered({r[k] for r in done}) for k in keys)
        grid = np.full((len(ys), len(xs)), np.nan)
        for r in done:
            grid[ys.index(r[keys[0]]), xs.index(r[keys[1]])] = r[metric]
        fig, ax = plt.subplots(figsize=(1.3 * len(xs) + 3, 0.8 * len(ys) + 2))
        image = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
        ax.set_xticks(range(len(xs)), [str(x) for x in xs])
        ax.set_yticks(range(len(ys)), [str(y) for y in ys])
        ax.set_xlabel(keys[1])
        ax.set_ylabel(keys[0])
        finite = grid[np.isfinite(grid)]
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0
        for (i, j), value in np.ndenumerate(grid):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.4g}", ha="center", va="center", fontsize=9,
                        color="white" if value < middle else "black")
        fig.colorbar(image, ax=ax, label=label)
        ax.set_title(title)
        return _save(fig, path)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.8), squeeze=False, sharey=True)
    for ax, key in zip(axes[0], keys, strict=True):
        values = _ordered({r[key] for r in done})
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        position = (lambda v: v) if numeric else values.index
        ax.scatter([position(r[key]) for r in done], [r[metric] for r in done], s=18, alpha=0.6, color="tab:blue")
        means = [np.mean([r[metric] for r in done if r[key] == v]) for v in values]
        ax.plot([position(v) for v in values], means, "-o", color="tab:blue", markersize=4)
        if numeric and len(values) > 2 and min(values) > 0 and max(values) / min(values) >= 20:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(values)), [str(v) for v in values])
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(label)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _ordered(values: set) -> list:
    """Numbers (also numbers written as text, such as a layer size label) in numeric order, then the rest."""
    def key(value):
        try:
            return (0, float(value), "")
        except (TypeError, ValueError):
            return (1, 0.0, str(value))

    return sorted(values, key=key)


def study(study, folder: Path, title: str = "", label: str = "", per_epoch: bool = True) -> list[str]:
    """Optuna's own views of a sweep's study, beside sweep.png: optimization_history.png (each member's metric
    in the order they finished, and the best so far), param_importances.png (how much of the metric's variance
    each swept key explains: fANOVA, which needs scikit-learn) and, for training sweeps, intermediate_values.png
    (each member's per-epoch score; pruned members' lines stop where they were stopped). Returns a note for each
    one that could not be drawn (too few finished members, no scikit-learn)."""
    import warnings

    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as views

    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    label = label or "metric"
    notes = []
    jobs = [("optimization_history.png", lambda: views.plot_optimization_history(study, target_name=label))]
    if len(finished) >= 2 and any(len({repr(t.params.get(k)) for t in finished}) > 1 for k in finished[0].params):
        jobs.append(("param_importances.png", lambda: views.plot_param_importances(study, target_name=label)))
    else:
        notes.append("param_importances.png not drawn: it needs two finished members with different values")
    if per_epoch:
        jobs.append(("intermediate_values.png", lambda: views.plot_intermediate_values(study)))
    for name, draw in jobs:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib views experimental
                ax = draw()
        except ImportError as error:
            notes.append(f"{name} not drawn: {error} (pip install 'snnrun[sweep]')")
            continue
        except (ValueError, RuntimeError) as error:
            notes.append(f"{name} not drawn: {error}")
            continue
        ax.set_title(f"{title}: {ax.get_title()}" if title else ax.get_title())
        _save(ax.figure, folder / name)
    return notes


# --------------------------------------------------------------------------- STDP (Diehl & Cook)

MAX_FIELDS = 1600  # receptive fields tiled in weights.png (40 x 40 tiles of 28 x 28: about 1,100 pixels square)


def receptive_fields(w: np.ndarray, path: Path, title: str = "", side: int = 28) -> Path:
    """The input weights of each excitatory neuron as a side x side image, tiled in one picture (the paper's
    figure of learned weights): one shared scale from 0 to the largest weight."""
    n = min(w.shape[1], MAX_FIELDS)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    tiles = np.full((rows * side, cols * side), np.nan)
    for k in range(n):
        r, c = divmod(k, cols)
        tiles[r * side:(r + 1) * side, c * side:(c + 1) * side] = w[:, k].reshape(side, side)
    size = min(12.0, 2.0 + 0.35 * cols)
    fig, ax = plt.subplots(figsize=(size + 1.2, size * rows / cols + 0.6))
    image = ax.imshow(tiles, cmap="hot_r", vmin=0, vmax=float(np.nanmax(tiles)) or 1.0, interpolation="nearest")
    for k in range(1, cols):
        ax.axvline(k * side - 0.5, color="0.75", lw=0.4)
    for k in range(1, rows):
        ax.axhline(k * side - 0.5, color="0.75", lw=0.4)
    ax.set_xticks([])
    ax.set_yticks([])
    shown = f" (first {n} of {w.shape[1]})" if n < w.shape[1] else ""
    ax.set_title((title or "input weights") + shown)
    fig.colorbar(image, ax=ax, label="weight", fraction=0.04, pad=0.02)
    return _save(fig, path)


def _thousands(x: float, _position=None) -> str:
    """A count for an axis: 500, 2.5k, 180k."""
    return f"{x / 1000:g}k" if abs(x) >= 1000 else f"{x:g}"


def stdp_curves(history: list[dict], path: Path, title: str = "") -> Path:
    """Over the training images: the running accuracy (each block classified with the assignments of the images
    before it), the excitatory spikes per image and the mean adaptive threshold theta."""
    images = [r["images"] for r in history]
    fig, (ax_a, ax_s, ax_t) = plt.subplots(1, 3, figsize=(15, 4))
    scored = [(r["images"], 100 * r["train_accuracy"]) for r in history if "train_accuracy" in r]
    if scored:
        ax_a.plot(*zip(*scored, strict=True), ".-", ms=3)
    ax_a.set_ylabel("accuracy on the next images (%)")
    ax_a.set_ylim(0, 100)
    ax_s.plot(images, [r["spikes_per_image"] for r in history], ".-", ms=3)
    ax_s.set_ylabel("excitatory spikes per image")
    ax_t.plot(images, [r["theta_mean_mv"] for r in history], ".-", ms=3)
    ax_t.set_ylabel("mean theta (mV)")
    for ax in (ax_a, ax_s, ax_t):
        ax.set_xlabel("training images presented")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        ax.xaxis.set_major_formatter(FuncFormatter(_thousands))  # 180k, not 180000 run into its neighbours
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def theta(theta_mv: np.ndarray, assignments: np.ndarray, path: Path, title: str = "") -> Path:
    """Each excitatory neuron's adaptive threshold theta, coloured by its assigned class, and their histogram."""
    fig, (ax_n, ax_h) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 1]})
    colours = plt.get_cmap("tab10")
    for c in range(-1, 10):
        members = np.flatnonzero(assignments == c)
        if len(members):
            ax_n.scatter(members, theta_mv[members], s=8, color="0.6" if c < 0 else colours(c),
                         label="silent" if c < 0 else str(c))
    ax_n.set_xlabel("excitatory neuron")
    ax_n.legend(frameon=False, fontsize=7, ncol=11, loc="lower center", bbox_to_anchor=(0.5, 1.0),
                handletextpad=0.1, columnspacing=0.8)
    ax_h.hist(theta_mv, bins=min(40, max(5, len(theta_mv) // 5)), color="tab:blue")
    ax_h.set_xlabel("theta (mV)")
    ax_h.set_ylabel("neurons")
    for ax in (ax_n, ax_h):
        ax.grid(alpha=0.3)
    ax_n.set_ylabel("theta (mV), coloured by assigned class")
    fig.suptitle(f"{title}: adaptive thresholds" if title else "adaptive thresholds", y=1.06)
    return _save(fig, path)


def assignments(assigned: np.ndarray, path: Path, title: str = "", classes: int = 10) -> Path:
    """Excitatory neurons assigned to each class (and those that never fired while labelling)."""
    counts = np.bincount(assigned[assigned >= 0], minlength=classes)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(range(classes), counts, color="tab:blue")
    for c, k in enumerate(counts):
        ax.text(c, k, str(int(k)), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(classes))
    ax.set_xlabel("class")
    ax.set_ylabel("neurons assigned")
    silent = int((assigned < 0).sum())
    ax.set_title(f"{title}: neurons per class" + (f" ({silent} silent)" if silent else ""))
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)
