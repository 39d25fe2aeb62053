"""Figures a researcher looks at: traces, rasters, f-I curves. Each function writes one PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, works headless and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

MAX_TRACES = 5  # membrane/current lines drawn in the three-panel figure
MAX_RASTER_ROWS = 200


def _time_label(unit: str) -> str:
    return {"ms": "time (ms)", "s": "time (s)"}.get(unit, "time step")


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def current_membrane_spikes(result, path: Path, title: str = "", current_unit: str = "",
                            membrane_unit: str = "") -> Path:
    """Three panels sharing the time axis: input current, membrane with the threshold dashed, spike raster."""
    time, unit = result.time, result.clock.unit
    # For a population, neurons spread evenly over the recorded ones (an f-I run shows low to high drive).
    picked = np.unique(np.linspace(0, result.membrane.shape[1] - 1, MAX_TRACES).round().astype(int))
    shown = len(picked)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, (ax_i, ax_u, ax_s) = plt.subplots(3, 1, figsize=(9, 6.5), sharex=True,
                                           gridspec_kw={"height_ratios": [1, 2, 0.4 + 0.25 * shown]})
    for row, k in enumerate(picked):
        color = colors[row % len(colors)]
        label = f"neuron {k}" if shown > 1 else None
        ax_i.plot(time, result.current[:, k], color=color, lw=1.2, label=label, drawstyle="steps-post")
        ax_u.plot(time, result.membrane[:, k], color=color, lw=1.2)
    for row, thr in enumerate(np.unique(result.threshold[picked])):
        ax_u.axhline(thr, color="black", ls="--", lw=1, label="threshold" if row == 0 else None)
    spike_rows = [time[result.spikes[:, k]] for k in picked]
    ax_s.eventplot(spike_rows, colors=[colors[row % len(colors)] for row in range(shown)], lineoffsets=range(shown),
                   linelengths=0.8)
    ax_i.set_ylabel(f"input current{f' ({current_unit})' if current_unit else ''}")
    ax_u.set_ylabel(f"membrane{f' ({membrane_unit})' if membrane_unit else ''}")
    ax_s.set_ylabel("spikes")
    ax_s.set_yticks(range(shown) if shown > 1 else [], [str(k) for k in picked] if shown > 1 else [])
    ax_s.set_ylim(-0.6, shown - 0.4)
    ax_s.set_xlabel(_time_label(unit))
    ax_s.set_xlim(time[0], time[-1] + result.clock.dt)
    ax_u.legend(loc="lower right", frameon=True, framealpha=0.9)
    if shown > 1:
        ax_i.legend(loc="upper left", frameon=False, ncol=shown, fontsize="small")
    for ax in (ax_i, ax_u):
        ax.grid(alpha=0.3)
    if title:
        ax_i.set_title(title)
    fig.align_ylabels()
    return _save(fig, path)


def raster(result, path: Path, title: str = "") -> Path:
    """Spike raster of the recorded population with its firing rate over time below."""
    spikes = result.spikes[:, :MAX_RASTER_ROWS]
    steps, rows = spikes.shape
    step_idx, neuron_idx = np.nonzero(spikes)
    fig, (ax_r, ax_p) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax_r.scatter(result.time[step_idx], neuron_idx, s=min(120.0, max(2.0, 3000 / max(rows, 1))), marker="|",
                 color="black", linewidths=1.0)
    ax_r.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_r.set_ylabel("neuron")
    ax_r.set_ylim(-0.5, rows - 0.5)
    bins = min(steps, 100)
    counts, edges = np.histogram(result.time[step_idx], bins=bins, range=(result.time[0], result.time[-1]
                                                                                  + result.clock.dt))
    width = edges[1] - edges[0]
    per_unit = counts / (rows * width)
    if result.clock.seconds:
        per_unit = per_unit / result.clock.seconds
    ax_p.step(edges[:-1], per_unit, where="post", color="tab:blue")
    ax_p.set_ylabel("rate (Hz)" if result.clock.seconds else "spikes/step")
    ax_p.set_xlabel(_time_label(result.clock.unit))
    ax_p.set_ylim(bottom=0)
    ax_p.grid(alpha=0.3)
    shown = f" (first {rows} of {result.metrics['population']['neurons']})" if (
        rows < result.metrics["population"]["neurons"]) else ""
    ax_r.set_title((title + " — " if title else "") + f"spike raster{shown}")
    return _save(fig, path)


def fi_curve(amplitude: np.ndarray, rate: np.ndarray, path: Path, rate_unit: str, current_unit: str = "",
             title: str = "") -> Path:
    """Firing rate against input amplitude, one point per neuron."""
    order = np.argsort(amplitude)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(amplitude[order], rate[order], "o-", ms=4)
    ax.set_xlabel(f"input amplitude{f' ({current_unit})' if current_unit else ''}")
    ax.set_ylabel(f"firing rate ({rate_unit})")
    ax.grid(alpha=0.3)
    ax.set_title(title or "f–I curve")
    return _save(fig, path)


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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def network_raster(layers: list[np.ndarray], names: list[str], image: np.ndarray, label: int, predicted: int,
                   path: Path) -> Path:
    """Spikes of every layer for one digit (input, hidden..., output), the digit beside them."""
    fig = plt.figure(figsize=(11, 2.2 * len(layers) + 1))
    grid = fig.add_gridspec(len(layers), 2, width_ratios=[4, 1])
    for row, (spikes, name) in enumerate(zip(layers, names, strict=True)):
        ax = fig.add_subplot(grid[row, 0])
        steps, neurons = spikes.shape
        t, n = np.nonzero(spikes > 0)
        ax.scatter(t, n, s=4 if neurons > 50 else 30, marker="|", color="black", linewidths=0.8)
        ax.set_xlim(-0.5, steps - 0.5)
        ax.set_ylim(-0.5, neurons - 0.5)
        ax.set_ylabel(f"{name}\n({neurons})")
        if name == "output":
            ax.set_yticks(range(neurons))
        if row == len(layers) - 1:
            ax.set_xlabel("time step")
        else:
            ax.set_xticklabels([])
    ax_img = fig.add_subplot(grid[:, 1])
    ax_img.imshow(image, cmap="gray_r")
    ax_img.set_title(f"label {label}, predicted {predicted}")
    ax_img.axis("off")
    fig.suptitle("spikes of each layer for one test digit")
    return _save(fig, path)


def output_membrane(membrane: np.ndarray, threshold: float, label: int, path: Path) -> Path:
    """The output layer's membrane traces for one digit, the true class highlighted."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for k in range(membrane.shape[1]):
        ax.plot(membrane[:, k], lw=2.5 if k == label else 1, alpha=1 if k == label else 0.6,
                label=f"class {k}" + (" (label)" if k == label else ""))
    ax.axhline(threshold, color="black", ls="--", lw=1, label="threshold")
    ax.set_xlabel("time step")
    ax.set_ylabel("output membrane")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2, frameon=False, loc="upper left", bbox_to_anchor=(1, 1))
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
                          title: str = "output spikes so far", seconds: float = 3.0) -> Path:
    """An animated GIF of one digit's cumulative output spike count per class growing step by step (the
    snnTorch tutorial's `spike_count` video), with the digit beside it. spikes: (time, classes) of 0/1 (or, for a
    readout without output neurons, its per-step values). About `seconds` long, the last frame held two seconds
    more; Pillow writes it, so no ffmpeg is needed."""
    from matplotlib.animation import FuncAnimation, PillowWriter

    counts = np.cumsum(np.asarray(spikes, dtype=float), axis=0)
    steps, classes = counts.shape
    fps = int(np.clip(round(steps / seconds), 2, 25))
    fig, (ax_img, ax) = plt.subplots(1, 2, figsize=(8, 3.8), gridspec_kw={"width_ratios": [1, 2.2]})
    ax_img.imshow(np.asarray(image).reshape(28, 28), cmap="gray_r")
    ax_img.set_title(f"input digit (label {label})")
    ax_img.axis("off")
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

    def draw(t: int):
        for bar, height in zip(bars, counts[t], strict=True):
            bar.set_height(height)
        lead = "none yet" if not counts[t].any() else str(int(np.argmax(counts[t])))
        heading.set_text(f"{title}: step {t + 1}/{steps}, leading class {lead}")
        return [*bars, heading]

    frames = [*range(steps), *[steps - 1] * (2 * fps)]  # identical frames merge into one long one in the GIF
    FuncAnimation(fig, draw, frames=frames).save(path, writer=PillowWriter(fps=fps), dpi=80)
    plt.close(fig)
    return path


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
