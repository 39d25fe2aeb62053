"""`compare`: several runs side by side: the config keys in which they differ, their final metrics, and their
curves overlaid (training curves for train runs; f-I curves or membranes for simulate runs).

A sweep folder stands for its finished members. Everything here reads run folders and returns plain data; the
command layer writes the comparison folder and the plot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from snnrun.config import RunFolderError, load_yaml
from snnrun.runs import flatten

TRAIN_METRICS = ("best_val_accuracy", "test_accuracy", "best_epoch", "epochs", "train_seconds")
SIMULATE_METRICS = ("total_spikes", "mean_firing_rate", "active_fraction", "mean_isi", "simulation_seconds")


@dataclass
class ComparedRun:
    folder: Path
    command: str  # train or simulate
    config: dict  # flat: dotted key -> value
    metrics: dict
    history: list[dict] = field(default_factory=list)  # train: one record per epoch
    label: str = ""


def run_kind(folder: Path) -> str | None:
    """train or simulate for a finished run folder, else None."""
    if (folder / "summary.json").is_file() and (folder / "config.yaml").is_file():
        return "train"
    if (folder / "metrics.json").is_file() and (folder / "traces.npz").is_file():
        return "simulate"
    return None


def expand(paths: list[Path]) -> list[Path]:
    """Run folders, with each sweep folder replaced by its finished members, in order."""
    folders = []
    for path in paths:
        if (path / "sweep.json").is_file():
            members = sorted(p for p in path.iterdir() if p.is_dir() and run_kind(p))
            if not members:
                raise RunFolderError("a sweep with no finished members yet", source=str(path))
            folders += members
        elif run_kind(path) is not None:
            folders.append(path)
        elif path.is_dir() and (path / "config.yaml").is_file():
            raise RunFolderError("the run has not finished (no summary.json or metrics.json); finish it first",
                                 source=str(path))
        else:
            raise RunFolderError("not a run or sweep folder (compare takes train or simulate run folders, or sweeps)",
                                 source=str(path))
    return folders


def load(paths: list[Path]) -> list[ComparedRun]:
    folders = expand(paths)
    if len(folders) < 2:
        raise RunFolderError("compare needs at least two runs (or a sweep with two finished members)",
                             source=str(paths[0]) if paths else "snnrun compare")
    kinds = {run_kind(f) for f in folders}
    if len(kinds) > 1:
        raise RunFolderError("train runs and simulate runs cannot be compared with each other",
                             source=" ".join(map(str, paths)))
    runs = []
    for folder in folders:
        kind = run_kind(folder)
        config = flatten_config(load_yaml(folder / "config.yaml"))
        if kind == "train":
            summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
            metrics = {k: summary.get(k) for k in TRAIN_METRICS}
            history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
        else:
            data = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
            metrics = {k: data["population"].get(k, data.get(k)) for k in SIMULATE_METRICS}
            metrics["firing_rate_unit"] = data["units"]["firing_rate"]
            history = []
        runs.append(ComparedRun(folder, kind, config, metrics, history))
    for run, label in zip(runs, labels(runs), strict=True):
        run.label = label
    return runs


def flatten_config(data: dict, prefix: str = "") -> dict:
    """Nested config -> {dotted key: value}; lists stay whole values."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(runs: list[ComparedRun]) -> list[str]:
    """The config keys whose values are not the same in every run (the run name aside)."""
    keys = dict.fromkeys(k for run in runs for k in run.config)
    return [k for k in keys if k != "name" and len({json.dumps(run.config.get(k), sort_keys=True)
                                                     for run in runs}) > 1]


def labels(runs: list[ComparedRun]) -> list[str]:
    """Each run by the values in which it differs (its folder name when the configs are the same)."""
    keys = differences(runs)
    if not keys:
        return [run.folder.name for run in runs]
    short = {k: k.rsplit(".", 1)[-1] for k in keys}
    if len(set(short.values())) < len(keys):
        short = {k: k for k in keys}
    return [" ".join(f"{short[k]}={_show(run.config.get(k))}" for k in keys) for run in runs]


def _show(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)


def rows(runs: list[ComparedRun]) -> list[dict]:
    """One row per run: its folder, the differing config values, its final metrics (CSV-ready)."""
    keys = differences(runs)
    return [flatten({"run": str(run.folder), **{k: _show(run.config.get(k)) for k in keys},
                     **{k: v for k, v in run.metrics.items() if k != "firing_rate_unit"}}) for run in runs]
