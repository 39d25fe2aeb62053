"""`sweep`: one config run over many members, each its own run folder: planning them, and their results.

A sweep folder `outputs/sweep/<YYYY-MM-DD_HH-MM-SS>_<name>/` (its name is its Optuna study's) holds
    base.yaml            the config every member starts from (the file's `sweep:` section removed, --set applied)
    sweep.json           the plan: command, search, axes, metric and goal, pruner, storage, study name
    study.db             the study (SQLite: each member a trial), unless the plan names another storage
    <NNN>_<key=value...>/ each member's run folder, written by `snnrun train|simulate base.yaml --set ... --into`
                         (pruned.json in it when the pruner stopped it)
    logs/<NNN>.log       each member's console output
    sweep.csv, sweep.png the members' swept values, status and final metrics, from the study (every worker's)
    optimization_history.png, param_importances.png, intermediate_values.png: Optuna's own views of the study

A grid runs every combination of values (first key slowest); random draws are seeded, so the same seed gives
the same members; both are planned (and every member's config checked) before anything runs. A TPE search
plans only how many members; the sampler picks each one's values as it starts. `snnrun.trials` keeps the study
and runs the members; this module plans and ranks, and prints nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from snnrun.config import ConfigError, RunFolderError, dump_yaml, load_yaml
from snnrun.runs import flatten, write_json, write_text

COMMANDS = ("train", "simulate")
SEARCHES = ("grid", "random", "tpe")
PRUNERS = ("none", "median", "halving")
DEFAULT_METRIC = {"train": "test_accuracy", "simulate": "mean_firing_rate"}
EPOCH_KEYS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss")  # a training member's per-epoch scores
SECTION_KEYS = ("command", "search", "grid", "ranges", "random", "trials", "seed", "metric", "goal", "pruner",
                "prune_after", "parallel")
HEARTBEAT_S = 30  # a worker's heartbeat for each trial it runs; silent for twice that, the trial is another's
STUDY_FILE = "study.db"
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RANGE = re.compile(rf"^\s*({_NUMBER})\s*:\s*({_NUMBER})\s*(?::\s*(log))?\s*$")


@dataclass(frozen=True)
class Axis:
    """One swept key: a list of values (a grid axis, or choices), or a range LOW:HIGH (log-uniform with log)."""

    key: str
    values: list | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)

    @property
    def encoded(self) -> bool:
        """Choices Optuna cannot store as they are (lists, mappings) are stored as their YAML text."""
        return self.values is not None and any(isinstance(v, (list, dict)) for v in self.values)

    def draw(self, rng: random.Random):
        if self.values is not None:
            return rng.choice(self.values)
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        return round(value) if self.integer else float(f"{value:.6g}")

    def to_param(self, value):
        return _flow(value) if self.encoded else value

    def from_param(self, value):
        return yaml.safe_load(value) if self.encoded else value

    def suggest(self, trial):
        """The trial's value for this key: its fixed value (a planned member) or the sampler's pick (TPE)."""
        if self.values is not None:
            return self.from_param(trial.suggest_categorical(self.key, [self.to_param(v) for v in self.values]))
        if self.integer:
            return trial.suggest_int(self.key, self.low, self.high, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)


@dataclass(frozen=True)
class Member:
    index: int
    name: str  # the run folder's name: <NNN>_<key=value...>
    values: dict  # swept key -> value

    @property
    def overrides(self) -> list[str]:
        return [f"{key}={_flow(value)}" for key, value in self.values.items()]


@dataclass
class Plan:
    command: str
    metric: str
    goal: str  # max | min
    axes: list[Axis]
    members: list[Member]  # planned up front (grid, random); none for tpe, whose sampler picks as trials start
    search: str = "grid"
    trials: int | None = None  # random and tpe: how many members
    seed: int = 0
    parallel: int = 1
    device: str | None = None
    pruner: str = "none"
    prune_after: int = 5  # median: members that finish before any is pruned
    storage: str | None = None  # an SQLAlchemy URL (its password never written); None: study.db in the folder
    study: str | None = None  # the study's name: the sweep folder's name where it was made
    heartbeat: int = HEARTBEAT_S

    @property
    def keys(self) -> list[str]:
        return [axis.key for axis in self.axes]

    @property
    def size(self) -> int:
        return len(self.members) if self.search != "tpe" else self.trials

    @property
    def report(self) -> str:
        """What a training member reports each epoch for pruning: the metric itself where it is an epoch score,
        else validation accuracy (maximising) or loss (minimising)."""
        return self.metric if self.metric in EPOCH_KEYS else ("val_accuracy" if self.goal == "max" else "val_loss")


# --------------------------------------------------------------------------- planning


def parse_axis(text: str, source: str = "--grid") -> Axis:
    """`KEY=[v1, v2, ...]` (values parsed as YAML) or `KEY=LOW:HIGH[:log]` (a range)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{text!r} is not KEY=[v1,v2,...] or KEY=LOW:HIGH[:log] (e.g. {source} "
                          f"{'encoding.time_steps=[4,8,16]' if source == '--grid' else 'train.lr=1e-4:1e-2:log'})",
                          source=source)
    match = _RANGE.match(value)
    if match:
        return make_axis(key, {"low": match[1], "high": match[2], "log": bool(match[3])}, source)
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = None
    return make_axis(key, parsed, source)


def make_axis(key: str, spec, source: str | None, section: str = "grid") -> Axis:
    """An axis from a list of values or a {low, high, log} mapping (as written in a sweep section)."""
    where = key if source in ("--grid", "--range") else f"sweep.{section}.{key}"
    if isinstance(spec, list):
        if not spec:
            raise ConfigError("an empty list of values; give at least one", source=source, key=where)
        return Axis(key, values=[_number(v) for v in spec])  # (2e-3 is a float, not YAML 1.1's string)
    if isinstance(spec, dict) and set(spec) <= {"low", "high", "log"} and {"low", "high"} <= set(spec):
        low, high, log = _number(spec["low"]), _number(spec["high"]), spec.get("log", False)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
        if not numbers or not low < high or not isinstance(log, bool) or (log and low <= 0):
            raise ConfigError(f"{spec!r} is not allowed; a range needs numbers low < high (both > 0 with log: true)",
                              source=source, key=where)
        return Axis(key, low=low, high=high, log=log)
    raise ConfigError(f"{spec!r} is not allowed; expected a list of values [v1, v2, ...] or a range "
                      "{low, high, log} (LOW:HIGH[:log] on the command line)", source=source, key=where)


def _number(value):
    """An int or float, also from text such as 1e-4 (which YAML 1.1 reads as a string)."""
    if isinstance(value, str) and re.fullmatch(_NUMBER, value.strip()):
        text = value.strip()
        return int(text) if re.fullmatch(r"[-+]?\d+", text) else float(text)
    return value


def expand(axes: list[Axis], samples: int | None = None, seed: int = 0) -> list[Member]:
    """Every combination of the axes' values (first axis slowest), or `samples` seeded random draws."""
    if not axes:
        raise ConfigError("nothing to sweep: give --grid KEY=[v1,v2,...] (or --range KEY=LOW:HIGH) or a "
                          "sweep.grid section", source="sweep")
    if samples is None:
        ranged = [axis.key for axis in axes if axis.values is None]
        if ranged:
            raise ConfigError("a range needs random draws or a TPE search (--random N, or --search tpe --trials N): "
                              f"{', '.join(ranged)}", source="sweep", key=ranged[0])
        combos = [dict(zip([a.key for a in axes], values, strict=True))
                  for values in itertools.product(*(axis.values for axis in axes))]
    else:
        rng = random.Random(seed)
        combos = [{axis.key: axis.draw(rng) for axis in axes} for _ in range(samples)]
    return [Member(i, member_name(i, short_values(axes, combo)), combo) for i, combo in enumerate(combos)]


def probes(axes: list[Axis]) -> list[Member]:
    """Members to check a TPE search's configs with before it runs: each range's two ends and each choice, the
    other keys at their first value (or low end)."""
    first = {axis.key: axis.values[0] if axis.values is not None else axis.low for axis in axes}
    return [Member(0, f"{axis.key}={label(value)}", {**first, axis.key: value})
            for axis in axes for value in (axis.values if axis.values is not None else [axis.low, axis.high])]


def short_values(axes: list[Axis], values: dict) -> dict:
    short = short_names([axis.key for axis in axes])
    return {short[key]: value for key, value in values.items()}


def member_name(index: int, values: dict) -> str:
    """`003_time_steps=16_hidden=512`: the index, then each swept key's last part and value, path-safe."""
    parts = [f"{key}={label(value)}" for key, value in values.items()]
    name = re.sub(r"[^A-Za-z0-9._=+-]+", "-", "_".join(parts)).strip("-.")
    return f"{index:03d}_{name[:120]}" if name else f"{index:03d}"


def short_names(keys: list[str]) -> dict[str, str]:
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: (short if last.count(short) == 1 else key) for key, short in zip(keys, last, strict=True)}


def label(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "-".join(label(v) for v in value) or "none"
    if isinstance(value, dict):
        return "-".join(f"{k}{label(v)}" for k, v in value.items())
    return str(value)


def _flow(value) -> str:
    """A value as one line of YAML, as `--set` reads it back."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def split_sweep_section(data: dict, source: str) -> tuple[dict, dict]:
    """A sweep file is a train or simulate config plus a `sweep:` section: (the run config, the section)."""
    section = data.get("sweep") or {}
    if not isinstance(section, dict):
        raise ConfigError("expected a mapping", source=source, key="sweep")
    unknown = [k for k in section if k not in SECTION_KEYS]
    if unknown:
        raise ConfigError(f"unknown key; allowed here: {', '.join(SECTION_KEYS)}", source=source,
                          key=f"sweep.{unknown[0]}")
    return {k: v for k, v in data.items() if k != "sweep"}, section


def infer_command(config: dict) -> str:
    """train for a config with model/encoding/train sections, simulate otherwise."""
    return "train" if {"model", "encoding", "train", "data"} & set(config) else "simulate"


def make_plan(config_path: Path, grid: list[str], samples: int | None = None, seed: int | None = None,
              command: str | None = None, metric: str | None = None, goal: str | None = None,
              parallel: int | None = None, *, ranges: list[str] = (), search: str | None = None,
              trials: int | None = None, maximize: str | None = None, minimize: str | None = None,
              pruner: str | None = None, prune_after: int | None = None) -> tuple[dict, Plan]:
    """(the base config, the plan) from a config file with an optional `sweep:` section and the command line's
    options, which take precedence (a --grid or --range key replaces the file's axis of the same key)."""
    source = str(config_path)
    config, section = split_sweep_section(load_yaml(config_path), source)

    def given(cli, key: str, flag: str):
        """(value, source, key) of a setting: the command line's, else the sweep section's (None: neither)."""
        if cli is not None:
            return cli, flag, None
        return section.get(key), source, f"sweep.{key}"

    command, where, key = given(command, "command", "--command")
    command = command or infer_command(config)
    if command not in COMMANDS:
        raise ConfigError(f"{command!r} is not allowed; expected one of {', '.join(COMMANDS)}", source=where, key=key)
    axes = {}
    for name in ("grid", "ranges"):
        spec = section.get(name) or {}
        if not isinstance(spec, dict):
            raise ConfigError("expected a mapping of dotted keys to lists of values or ranges", source=source,
                              key=f"sweep.{name}")
        for axis_key, axis_spec in spec.items():
            axes[str(axis_key)] = make_axis(str(axis_key), axis_spec, source, name)
    for text, flag in [*((t, "--grid") for t in grid), *((t, "--range") for t in ranges)]:
        axis = parse_axis(text, flag)
        axes[axis.key] = axis

    samples, samples_at, samples_key = given(samples, "random", "--random")
    trials, trials_at, trials_key = given(trials, "trials", "--trials")
    search, search_at, search_key = given(search, "search", "--search")
    seed = seed if seed is not None else section.get("seed", 0)
    parallel = parallel if parallel is not None else section.get("parallel", 1)
    prune_after, after_at, after_key = given(prune_after, "prune_after", "--prune-after")
    for value, low, at, name in ((samples, 1, samples_at, samples_key), (trials, 1, trials_at, trials_key),
                                 (seed, None, source, "sweep.seed"), (parallel, 1, source, "sweep.parallel"),
                                 (prune_after, 0, after_at, after_key)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or (low is not None and value < low)):
            raise ConfigError(f"{value!r} is not allowed; expected an integer" + (f" >= {low}" if low is not None
                                                                                 else ""), source=at, key=name)
    search = search or ("random" if samples is not None else "grid")
    if search not in SEARCHES:
        raise ConfigError(f"{search!r} is not allowed; expected one of {', '.join(SEARCHES)}", source=search_at,
                          key=search_key)
    if samples is not None:
        if search != "random":
            raise ConfigError(f"--random N draws members at random; it does not go with search {search} (use "
                              "--trials N with --search tpe)", source=samples_at, key=samples_key)
        if trials is not None and trials != samples:
            raise ConfigError("give the number of random members once: --random N or --trials N", source=trials_at,
                              key=trials_key)
        trials = samples
    if search == "grid" and trials is not None:
        raise ConfigError("a grid runs every combination; --trials N is for --search random or tpe",
                          source=trials_at, key=trials_key)
    if search != "grid" and trials is None:
        raise ConfigError(f"search {search} needs the number of members: --trials N", source=search_at,
                          key=search_key)

    metric, goal = metric_and_goal(metric, goal, maximize, minimize)
    metric = metric or section.get("metric") or DEFAULT_METRIC[command]
    goal, goal_at, goal_key = given(goal, "goal", "--goal")
    goal = goal or ("min" if re.search(r"loss|seconds|error", metric) else "max")
    if goal not in ("max", "min"):
        raise ConfigError(f"{goal!r} is not allowed; expected max or min", source=goal_at, key=goal_key)

    pruner, pruner_at, pruner_key = given(pruner, "pruner", "--pruner")
    pruner = pruner or "none"
    if pruner not in PRUNERS:
        raise ConfigError(f"{pruner!r} is not allowed; expected one of {', '.join(PRUNERS)}", source=pruner_at,
                          key=pruner_key)
    if pruner != "none" and command != "train":
        raise ConfigError("pruning stops members between epochs; a simulate sweep has none (pruner: none)",
                          source=pruner_at, key=pruner_key)
    if prune_after is not None and pruner != "median":
        raise ConfigError("--prune-after is the median pruner's: give it with --pruner median", source=after_at,
                          key=after_key)

    axes = list(axes.values())
    members = expand(axes, trials if search == "random" else None, seed) if search != "tpe" else []
    if search == "tpe" and not axes:
        expand(axes)  # the same error: nothing to sweep
    plan = Plan(command, metric, goal, axes, members, search, trials, seed, parallel, pruner=pruner,
                prune_after=5 if prune_after is None else prune_after)
    return config, plan


def metric_and_goal(metric: str | None, goal: str | None, maximize: str | None,
                    minimize: str | None) -> tuple[str | None, str | None]:
    """--maximize M and --minimize M are --metric M with --goal max or min; given with either, they conflict."""
    if maximize and minimize:
        raise ConfigError("give one of --maximize METRIC and --minimize METRIC", source="--minimize")
    wanted = maximize or minimize
    if wanted is None:
        return metric, goal
    flag = "--maximize" if maximize else "--minimize"
    if metric is not None or goal is not None:
        raise ConfigError(f"{flag} METRIC names the metric and its goal; leave out --metric and --goal",
                          source=flag)
    return wanted, "max" if maximize else "min"


PLANNING = ("--grid", "--range", "--search", "--trials", "--random", "--seed", "--command", "--metric", "--goal",
            "--maximize", "--minimize", "--pruner", "--prune-after", "--set")


def check_mode(config, resume, join, collect, storage, given: list[str]) -> str:
    """new, resume, join or collect: what `snnrun sweep` is asked to do. `given`: the other options given.
    Options that do not go together are a clear error naming them."""
    modes = [name for name, value in (("CONFIG", config), ("--resume", resume), ("--join", join),
                                      ("--collect", collect)) if value is not None]
    if not modes:
        raise ConfigError("give a config file (e.g. configs/sweep_time_steps.yaml), --resume SWEEP_DIR, "
                          "--join STUDY (with --storage URL) or --collect SWEEP_DIR", source="snnrun sweep")
    if len(modes) > 1:
        raise ConfigError(f"{modes[0]} and {modes[1]} do not go together: start a sweep from a config, or continue "
                          "(--resume), join (--join) or collect (--collect) one", source=modes[1])
    mode = {"CONFIG": "new", "--resume": "resume", "--join": "join", "--collect": "collect"}[modes[0]]
    if mode == "join" and storage is None:
        raise ConfigError("--join STUDY needs --storage URL, the database that holds the study (e.g. --storage "
                          "postgresql://user@host/snnrun)", source="--join")
    if mode != "new":
        planned = [flag for flag in given if flag in PLANNING]
        if planned:
            raise ConfigError(f"{modes[0]} takes the plan from the study; leave out {', '.join(planned)}",
                              source=planned[0])
        allowed = {"resume": ("--parallel", "--heartbeat"), "join": ("--parallel", "--heartbeat", "--device"),
                   "collect": ()}[mode]
        other = [flag for flag in given if flag not in allowed]
        if other:
            raise ConfigError(f"{other[0]} does not go with {modes[0]} (allowed with it: "
                              f"{', '.join(('--storage', *allowed))})", source=other[0])
    return mode


def plan_dict(plan: Plan) -> dict:
    data = asdict(plan)
    data["members"] = [dict(asdict(m), overrides=m.overrides) for m in plan.members]
    return data


def plan_from_dict(data: dict) -> Plan:
    data = dict(data)
    axes = [Axis(**axis) for axis in data.pop("axes")]
    members = [Member(m["index"], m["name"], m["values"]) for m in data.pop("members")]
    return Plan(axes=axes, members=members, **data)


def save_plan(folder: Path, config: dict, plan: Plan) -> None:
    write_text(folder / "base.yaml", dump_yaml(config))
    write_json(folder / "sweep.json", {**plan_dict(plan), "storage": public_url(plan.storage)})


def load_plan(folder: Path) -> Plan:
    path = folder / "sweep.json"
    if not path.is_file():
        raise RunFolderError("not a sweep folder (no sweep.json)", source=str(folder))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise RunFolderError(f"sweep.json is damaged ({error})", source=str(path)) from None
    if isinstance(data, dict) and "search" not in data:
        raise RunFolderError("this sweep was made by an snnrun from before sweeps kept an Optuna study; its member "
                             "folders are complete runs, but it cannot be continued (start the sweep again)",
                             source=str(folder))
    try:
        return plan_from_dict(data)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise RunFolderError(f"sweep.json is damaged ({error})", source=str(path)) from None


def public_url(url: str | None) -> str | None:
    """A storage URL as written down: without its password (PostgreSQL can read that from ~/.pgpass)."""
    if url is None:
        return None
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def storage_url(folder: Path, plan: Plan) -> str:
    return plan.storage or f"sqlite:///{(folder / STUDY_FILE).resolve()}"


# --------------------------------------------------------------------------- results


def read_epochs(path: Path) -> list[dict]:
    """The epoch records of a member's metrics.jsonl so far (rewritten whole, atomically, after each epoch)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return records


def member_metrics(folder: Path, command: str) -> dict:
    """A finished member's final scalar metrics (lists become name_1, name_2, ...); a training member's also
    hold its last epoch's scores (val_accuracy, val_loss, train_accuracy, train_loss)."""
    if command == "train":
        data = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        data.pop("weights_sha256", None)
        last = (read_epochs(folder / "metrics.jsonl") or [{}])[-1]
        data.update({key: last[key] for key in EPOCH_KEYS if key in last})
    else:
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        data = dict(metrics["population"], simulation_seconds=metrics.get("simulation_seconds"))
    return {k: v for k, v in flatten(data).items() if v is None or isinstance(v, (int, float))}


def metric_label(folder: Path, plan: Plan, rows: list[dict]) -> str:
    """The metric's name for an axis, with its unit where a simulate member's metrics.json gives one."""
    label = plan.metric.replace("_", " ")
    done = [r for r in rows if r["status"] == "done" and (folder / r["member"] / "metrics.json").is_file()]
    if plan.command != "simulate" or not done:
        return label
    units = json.loads((folder / done[0]["member"] / "metrics.json").read_text(encoding="utf-8")).get("units", {})
    unit = next((u for name, u in units.items() if plan.metric.endswith(name)), None)
    return f"{label} ({unit})" if unit else label


def ranked(rows: list[dict], metric: str, goal: str) -> list[dict]:
    """Finished rows best first by the metric; the others (pruned, failed, not run) after them."""
    have = [r for r in rows if r["status"] == "done" and isinstance(r.get(metric), (int, float))]
    rest = [r for r in rows if r not in have]
    return sorted(have, key=lambda r: r[metric], reverse=goal == "max") + rest


def check_metric(rows: list[dict], metric: str) -> None:
    """A metric no finished member has is a clear error naming the ones there are."""
    finished = [r for r in rows if r["status"] == "done"]
    if finished and metric not in finished[0]:
        names = [k for k in finished[0] if k not in ("index", "member", "status", "host")]
        raise ConfigError(f"{metric!r} is not a metric of these runs; available: {', '.join(names)}",
                          source="--metric")
