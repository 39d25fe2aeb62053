"""`sweep`: one config run over a grid (or seeded random draws) of values, each member its own run folder.

A sweep folder `outputs/sweep/<YYYY-MM-DD_HH-MM-SS>_<name>/` holds
    base.yaml            the config every member starts from (the file's `sweep:` section removed, --set applied)
    sweep.json           the plan: command, metric, and each member's overrides and folder name
    <NNN>_<key=value...>/ each member's run folder, written by `snnrun train|simulate base.yaml --set ... --into`
    logs/<NNN>.log       each member's console output
    sweep.csv, sweep.png the members' swept values, status and final metrics, written each time the sweep ends

Members run in child processes, one after another or `parallel` at a time (each with cores/parallel threads,
or its own GPU), so a member that fails does not take the sweep down: a training member as its own `snnrun train`
process, simulate members in `parallel` long-lived workers that import snnrun once and run member after member
(a simulation takes milliseconds; a process start-up, seconds). Stopped and started again
(`snnrun sweep --resume DIR`), a sweep skips finished members and resumes an interrupted training member from
its checkpoint. This module plans, runs and collects; it prints nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from snnrun.config import ConfigError, RunFolderError, dump_yaml, load_yaml
from snnrun.runs import flatten, write_json, write_text

COMMANDS = ("train", "simulate")
DEFAULT_METRIC = {"train": "test_accuracy", "simulate": "mean_firing_rate"}
SECTION_KEYS = ("command", "grid", "random", "seed", "metric", "goal", "parallel")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RANGE = re.compile(rf"^\s*({_NUMBER})\s*:\s*({_NUMBER})\s*(?::\s*(log))?\s*$")


@dataclass(frozen=True)
class Axis:
    """One swept key: a list of values (a grid axis, or choices for random draws), or a range LOW:HIGH."""

    key: str
    values: list | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)

    def draw(self, rng: random.Random):
        if self.values is not None:
            return rng.choice(self.values)
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        return round(value) if self.integer else float(f"{value:.6g}")


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
    members: list[Member]
    random: int | None = None
    seed: int = 0
    parallel: int = 1
    device: str | None = None

    @property
    def keys(self) -> list[str]:
        return [axis.key for axis in self.axes]


# --------------------------------------------------------------------------- planning


def parse_axis(text: str, source: str = "--grid") -> Axis:
    """`KEY=[v1, v2, ...]` (values parsed as YAML) or `KEY=LOW:HIGH[:log]` (a range for random draws)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{text!r} is not KEY=[v1,v2,...] or KEY=LOW:HIGH[:log] "
                          "(e.g. --grid encoding.time_steps=[4,8,16])", source=source)
    match = _RANGE.match(value)
    if match:
        return make_axis(key, {"low": match[1], "high": match[2], "log": bool(match[3])}, source)
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = None
    return make_axis(key, parsed, source)


def make_axis(key: str, spec, source: str | None) -> Axis:
    """An axis from a list of values or a {low, high, log} mapping (as written in a sweep section)."""
    where = f"sweep.grid.{key}" if source != "--grid" else key
    if isinstance(spec, list):
        if not spec:
            raise ConfigError("an empty list of values; give at least one", source=source, key=where)
        return Axis(key, values=spec)
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
        raise ConfigError("nothing to sweep: give --grid KEY=[v1,v2,...] or a sweep.grid section", source="sweep")
    if samples is None:
        ranged = [axis.key for axis in axes if axis.values is None]
        if ranged:
            raise ConfigError(f"a range needs random draws (--random N, or sweep.random: N): {', '.join(ranged)}",
                              source="sweep", key=ranged[0])
        combos = [dict(zip([a.key for a in axes], values, strict=True))
                  for values in itertools.product(*(axis.values for axis in axes))]
    else:
        rng = random.Random(seed)
        combos = [{axis.key: axis.draw(rng) for axis in axes} for _ in range(samples)]
    short = short_names([axis.key for axis in axes])
    return [Member(i, member_name(i, {short[k]: v for k, v in combo.items()}), combo)
            for i, combo in enumerate(combos)]


def member_name(index: int, values: dict) -> str:
    """`003_time_steps=16_hidden=512`: the index, then each swept key's last part and value, path-safe."""
    parts = [f"{key}={_label(value)}" for key, value in values.items()]
    name = re.sub(r"[^A-Za-z0-9._=+-]+", "-", "_".join(parts)).strip("-.")
    return f"{index:03d}_{name[:120]}" if name else f"{index:03d}"


def short_names(keys: list[str]) -> dict[str, str]:
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: (short if last.count(short) == 1 else key) for key, short in zip(keys, last, strict=True)}


def _label(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "-".join(_label(v) for v in value) or "none"
    if isinstance(value, dict):
        return "-".join(f"{k}{_label(v)}" for k, v in value.items())
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
              parallel: int | None = None) -> tuple[dict, Plan]:
    """(the base config, the plan) from a config file with an optional `sweep:` section and the command line's
    options, which take precedence (a --grid key replaces the file's axis of the same key)."""
    source = str(config_path)
    config, section = split_sweep_section(load_yaml(config_path), source)
    command = command or section.get("command") or infer_command(config)
    if command not in COMMANDS:
        raise ConfigError(f"{command!r} is not allowed; expected one of {', '.join(COMMANDS)}",
                          source=source if "command" in section else "--command", key="sweep.command")
    axes = {}
    file_grid = section.get("grid") or {}
    if not isinstance(file_grid, dict):
        raise ConfigError("expected a mapping of dotted keys to lists of values", source=source, key="sweep.grid")
    for key, spec in file_grid.items():
        axes[key] = make_axis(str(key), spec, source)
    for text in grid:
        axis = parse_axis(text)
        axes[axis.key] = axis
    samples = samples if samples is not None else section.get("random")
    seed = seed if seed is not None else section.get("seed", 0)
    parallel = parallel if parallel is not None else section.get("parallel", 1)
    for name, value, low in (("random", samples, 1), ("seed", seed, None), ("parallel", parallel, 1)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or (low is not None and value < low)):
            raise ConfigError(f"{value!r} is not allowed; expected an integer" + (f" >= {low}" if low else ""),
                              source=source, key=f"sweep.{name}")
    metric = metric or section.get("metric") or DEFAULT_METRIC[command]
    goal = goal or section.get("goal") or ("min" if re.search(r"loss|seconds|error", metric) else "max")
    if goal not in ("max", "min"):
        raise ConfigError(f"{goal!r} is not allowed; expected max or min", source=source, key="sweep.goal")
    members = expand(list(axes.values()), samples, seed)
    return config, Plan(command, metric, goal, list(axes.values()), members, samples, seed, parallel)


def save_plan(folder: Path, config: dict, plan: Plan) -> None:
    write_text(folder / "base.yaml", dump_yaml(config))
    data = asdict(plan)
    data["members"] = [dict(asdict(m), overrides=m.overrides) for m in plan.members]
    write_json(folder / "sweep.json", data)


def load_plan(folder: Path) -> Plan:
    path = folder / "sweep.json"
    if not path.is_file():
        raise RunFolderError("not a sweep folder (no sweep.json)", source=str(folder))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        axes = [Axis(**axis) for axis in data.pop("axes")]
        members = [Member(m["index"], m["name"], m["values"]) for m in data.pop("members")]
        return Plan(axes=axes, members=members, **data)
    except (ValueError, KeyError, TypeError) as error:
        raise RunFolderError(f"sweep.json is damaged ({error})", source=str(path)) from None


# --------------------------------------------------------------------------- running


def member_state(folder: Path, command: str) -> str:
    """done, resumable (a training member with a checkpoint) or new."""
    if (folder / ("summary.json" if command == "train" else "metrics.json")).is_file():
        return "done"
    if command == "train" and (folder / "checkpoints" / "last.pt").is_file():
        return "resumable"
    return "new"


def member_command(folder: Path, plan: Plan, member: Member) -> list[str]:
    """The member's `snnrun` arguments (a training member with a checkpoint resumes from it)."""
    target = folder / member.name
    if member_state(target, plan.command) == "resumable":
        return ["train", "--resume", str(target)]
    device = ["--device", plan.device] if plan.device else []
    sets = [a for item in member.overrides for a in ("--set", item)]
    return [plan.command, str(folder / "base.yaml"), *sets, *device, "--into", str(target)]


@dataclass
class Outcome:
    member: Member
    status: str  # done, skipped (done before), failed, error, interrupted
    exit_code: int | None
    seconds: float


STATUS = {0: "done", 130: "interrupted", 143: "interrupted", 2: "error"}  # by exit code; any other: failed


def run_members(folder: Path, plan: Plan, parallel: int, gpus: int = 0,
                on_start: Callable[[Member], None] | None = None,
                on_done: Callable[[Outcome], None] | None = None,
                should_stop: Callable[[], bool] = lambda: False) -> list[Outcome]:
    """Run every member not yet done, `parallel` at a time (at most one per GPU when there are GPUs);
    when should_stop() turns true, running members are asked to stop (SIGINT: a training member saves a
    checkpoint) and no new ones start.

    A training member runs as its own `snnrun train` process. Simulate members, which take a fraction of a
    second, run in `parallel` long-lived worker processes (`serve`) that import snnrun once and take members one
    after another, so that a member does not pay a process start-up (seconds: torch, matplotlib) each."""
    if gpus:
        parallel = min(parallel, gpus)
    threads = max(1, (os.cpu_count() or 1) // parallel)
    outcomes: list[Outcome] = []
    pending = []
    for member in plan.members:
        if member_state(folder / member.name, plan.command) == "done":
            outcome = Outcome(member, "skipped", 0, 0.0)
            outcomes.append(outcome)
            if on_done:
                on_done(outcome)
        else:
            pending.append(member)
    (folder / "logs").mkdir(exist_ok=True)
    workers: dict[int, _Worker] = {}  # simulate: by slot
    running: dict[int, tuple[_Process | _Worker, Member, float]] = {}  # by slot (a GPU's number)
    stopping = False
    try:
        while pending or running:
            if not stopping and should_stop():
                stopping = True
                for process, *_ in running.values():
                    process.interrupt()
            while pending and not stopping and len(running) < parallel:
                slot = min(set(range(parallel)) - set(running))
                member = pending.pop(0)
                target = folder / member.name
                if member_state(target, plan.command) == "new" and target.exists():
                    shutil.rmtree(target)  # stopped before its first checkpoint: nothing in it to keep
                env = dict(os.environ, OMP_NUM_THREADS=str(threads))
                if gpus:
                    env["CUDA_VISIBLE_DEVICES"] = str(slot)
                log = folder / "logs" / f"{member.index:03d}.log"
                args = member_command(folder, plan, member)
                if plan.command == "simulate":
                    if slot not in workers or not workers[slot].alive:
                        if slot in workers:
                            workers[slot].close()  # (it has exited: its member was reported)
                        workers[slot] = _Worker(env, log)
                    workers[slot].submit(args, log)
                    running[slot] = (workers[slot], member, time.monotonic())
                else:
                    running[slot] = (_Process(args, env, log), member, time.monotonic())
                if on_start:
                    on_start(member)
            if stopping and not running:
                break
            _wait([process for process, *_ in running.values()], 0.1)
            for slot, (process, member, began) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                del running[slot]
                outcome = Outcome(member, STATUS.get(code, "failed"), code, time.monotonic() - began)
                outcomes.append(outcome)
                if on_done:
                    on_done(outcome)
    finally:
        for slot, worker in workers.items():
            worker.close(interrupt=slot in running)
    return sorted(outcomes, key=lambda o: o.member.index)


def _wait(processes: list, timeout: float) -> None:
    """Sleep until a worker has something to say, or timeout seconds (a child process is polled)."""
    pipes = [p.reply for p in processes if isinstance(p, _Worker) and p.alive]
    if pipes:
        select.select(pipes, [], [], timeout)
    else:
        time.sleep(timeout)


class _Process:
    """One member as its own `snnrun` process, in its own session (only the sweep passes Ctrl-C on)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        with open(log, "a", encoding="utf-8") as handle:
            self.process = subprocess.Popen([sys.executable, "-m", "snnrun", *args], stdout=handle, stderr=handle,
                                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    def poll(self) -> int | None:
        return self.process.poll()

    def interrupt(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGINT)


WORKER = "from snnrun.worker import serve; serve()"


class _Worker:
    """A long-lived process running simulate members one after another (`serve`), in its own session.

    The sweep writes one member's arguments and log file per line to its stdin, and reads back one exit code per
    member from its stdout. A worker that dies (killed, crashed) fails the member it held; the next member in
    its slot gets a new worker."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        with open(log, "a", encoding="utf-8") as handle:  # where an interpreter that cannot start says why
            self.process = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=handle, env=env, start_new_session=True)
        self.reply = self.process.stdout.fileno()
        os.set_blocking(self.reply, False)
        self.buffer = b""
        self.alive = True

    def submit(self, args: list[str], log: Path) -> None:
        try:
            self.process.stdin.write(json.dumps({"args": args, "log": str(log)}).encode() + b"\n")
            self.process.stdin.flush()
        except OSError:  # it has died: poll() reports its exit
            pass

    def poll(self) -> int | None:
        """The member's exit code once it has finished, else None."""
        try:
            chunk = os.read(self.reply, 4096)
        except BlockingIOError:
            return None
        self.buffer += chunk
        if b"\n" in self.buffer:
            line, _, self.buffer = self.buffer.partition(b"\n")
            code = int(line)
            if code in (130, 143):  # it stops after an interrupted member
                self.alive = False
            return code
        if chunk:
            return None
        self.alive = False  # the end of its output: the worker has exited, the member with it
        code = self.process.wait()
        return code if code != 0 else 1

    def interrupt(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGINT)

    def close(self, interrupt: bool = False) -> None:
        """End the worker: it finishes its member (unless interrupted) and exits when its input closes."""
        if interrupt:
            self.interrupt()
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self.alive = False


# --------------------------------------------------------------------------- results


def member_metrics(folder: Path, command: str) -> dict:
    """A finished member's final scalar metrics (lists become name_1, name_2, ...)."""
    if command == "train":
        data = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        data.pop("weights_sha256", None)
    else:
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        data = dict(metrics["population"], simulation_seconds=metrics.get("simulation_seconds"))
    return {k: v for k, v in flatten(data).items() if v is None or isinstance(v, (int, float))}


def collect(folder: Path, plan: Plan, outcomes: list[Outcome]) -> list[dict]:
    """One row per member: index, member, status, the swept values, then its metrics."""
    status = {o.member.index: o.status for o in outcomes}
    rows = []
    for member in plan.members:
        state = status.get(member.index, "not run")
        done = member_state(folder / member.name, plan.command) == "done"
        row = {"index": member.index, "member": member.name, "status": "done" if done else state}
        row.update({key: _label(value) if isinstance(value, (list, dict)) else value
                    for key, value in member.values.items()})
        if done:
            row.update(member_metrics(folder / member.name, plan.command))
        rows.append(row)
    return rows


def metric_label(folder: Path, plan: Plan, rows: list[dict]) -> str:
    """The metric's name for an axis, with its unit where a simulate member's metrics.json gives one."""
    label = plan.metric.replace("_", " ")
    done = [r for r in rows if r["status"] == "done"]
    if plan.command != "simulate" or not done:
        return label
    units = json.loads((folder / done[0]["member"] / "metrics.json").read_text(encoding="utf-8")).get("units", {})
    unit = next((u for name, u in units.items() if plan.metric.endswith(name)), None)
    return f"{label} ({unit})" if unit else label


def ranked(rows: list[dict], metric: str, goal: str) -> list[dict]:
    """Finished rows best first by the metric; rows without it last."""
    have = [r for r in rows if isinstance(r.get(metric), (int, float))]
    rest = [r for r in rows if r not in have]
    return sorted(have, key=lambda r: r[metric], reverse=goal == "max") + rest


def check_metric(rows: list[dict], metric: str) -> None:
    """A metric no finished member has is a clear error naming the ones there are."""
    finished = [r for r in rows if r["status"] == "done"]
    if finished and metric not in finished[0]:
        names = [k for k in finished[0] if k not in ("index", "member", "status")]
        raise ConfigError(f"{metric!r} is not a metric of these runs; available: {', '.join(names)}",
                          source="--metric")
