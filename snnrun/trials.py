"""A sweep's trials: the Optuna study that queues them, and the worker loop that takes and runs them.

Each member of a sweep (`snnrun.sweep` plans them) is a trial. A grid's combinations and seeded random draws
are queued in the study as waiting trials, in member order; a TPE search queues as many empty ones, whose values
the sampler picks when a worker takes one. A worker (this process; others may share the study from other
machines) takes waiting trials one at a time: the storage moves a trial from waiting to running once (a row
lock in PostgreSQL), so no two workers run the same. Members run as child processes (`snnrun.worker`),
`parallel` at a time.

Pruning is decided here, in the worker, not in the member: it reads a training member's metrics.jsonl as each
epoch lands, reports the epoch's score to the trial, and when the pruner says the member is hopeless, stops it
as Ctrl-C would (it saves a checkpoint) and marks its folder (pruned.json). So a member stays a plain
`snnrun train` run that knows nothing of Optuna or of the storage's address and password, and one process per
worker talks to the storage.

The worker beats a heartbeat for each trial it runs; a running trial whose worker has been silent for two
heartbeats is failed by whoever notices and queued again (`retry_trial`: same values, same member, so the
same folder and its checkpoint where the folders are shared). A member stopped by Ctrl-C is queued again at
once. Optuna is imported inside these functions: `snnrun --help` and `simulate` never load it.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from snnrun.config import ConfigError
from snnrun.runs import write_json
from snnrun.sweep import (
    HEARTBEAT_S,
    Member,
    Plan,
    label,
    member_metrics,
    member_name,
    plan_dict,
    plan_from_dict,
    public_url,
    read_epochs,
    short_values,
)


def _quiet_optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its per-trial lines would interleave with ours
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def open_storage(url: str, heartbeat: int = HEARTBEAT_S, source: str = "--storage"):
    """An Optuna storage on an SQLAlchemy URL, with the heartbeat that lets a worker's death be noticed: a
    running trial whose worker has been silent for 2 x heartbeat seconds is failed and queued again."""
    optuna = _quiet_optuna()
    import sqlalchemy.exc

    if "***" in url:
        raise ConfigError("the storage URL's password is not kept in sweep.json: give --storage URL again, or keep "
                          "the password in ~/.pgpass (or PGPASSWORD) and leave it out of the URL", source=source)
    try:
        return optuna.storages.RDBStorage(_with_driver(url), heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                                          heartbeat_stale_trial_callback=retry_trial)
    except ImportError as error:
        raise ConfigError(f"cannot open {public_url(url)}: {error} (PostgreSQL needs the sweep extra: pip install "
                          "'snnrun[sweep]')", source=source) from None
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as error:
        reason = " ".join(str(error).split("\n(Background")[0].split())
        raise ConfigError(f"cannot open the study storage {public_url(url)!r} ({reason[:300]}); expected an "
                          "SQLAlchemy URL such as postgresql://user@host/db or sqlite:///path/study.db",
                          source=source) from None


def _with_driver(url: str) -> str:
    """postgresql://... through psycopg (3, the sweep extra's driver) where it is installed: SQLAlchemy 2.0 would
    otherwise look for psycopg2, 2.1 for psycopg."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is not None:
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def create_study(storage, plan: Plan, config: dict):
    """A new study holding the plan and base config (all a joining worker needs) and the queue of members."""
    optuna = _quiet_optuna()
    try:
        study = optuna.create_study(storage=storage, study_name=plan.study, sampler=make_sampler(plan),
                                    pruner=make_pruner(plan), direction="maximize" if plan.goal == "max"
                                    else "minimize")
    except optuna.exceptions.DuplicatedStudyError:
        raise ConfigError(f"a study named {plan.study!r} is already in this storage; join it with --join "
                          f"{plan.study}", source="--storage") from None
    study.set_user_attr("snnrun", {"plan": {**plan_dict(plan), "storage": None}, "base": config})
    for member in plan.members:
        study.enqueue_trial({axis.key: axis.to_param(member.values[axis.key]) for axis in plan.axes},
                            user_attrs={"member": member.name, "index": member.index})
    for _ in range(plan.trials if plan.search == "tpe" else 0):
        study.enqueue_trial({})  # the sampler fills it in when a worker takes it
    return study


def read_study(storage, name: str, source: str = "--join") -> tuple[dict, Plan]:
    """(base config, plan) of an snnrun study in the storage."""
    optuna = _quiet_optuna()
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        raise ConfigError(f"no study {name!r} in this storage; there: {', '.join(names) or 'none'}",
                          source=source) from None
    attrs = storage.get_study_user_attrs(study_id).get("snnrun")
    if not isinstance(attrs, dict):
        raise ConfigError(f"the study {name!r} was not made by snnrun sweep", source=source)
    return attrs["base"], plan_from_dict(attrs["plan"])


def open_study(storage, plan: Plan, joined: bool = False):
    """The study again, for a worker that resumes or joins it."""
    optuna = _quiet_optuna()
    started = sum(1 for t in optuna.load_study(study_name=plan.study, storage=storage).get_trials(deepcopy=False)
                  if t.params)
    return optuna.load_study(study_name=plan.study, storage=storage, sampler=make_sampler(plan, joined, started),
                             pruner=make_pruner(plan))


def make_sampler(plan: Plan, joined: bool = False, started: int = 0):
    """TPE for a tpe search, seeded: a new study from the plan's seed (so it repeats), one resumed after
    `started` members from a stream of its own (not to pick again the values its first members had), a worker
    that joins from a stream of its own too (not to pick those of another worker). A planned member's values are
    all fixed, so its sampler is never asked."""
    import optuna

    seed = plan.seed
    if joined or started:
        seed = random.Random(f"{plan.seed}:{started}:{joined and WORKER_ID}").randrange(2**32)
    if plan.search == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(plan: Plan):
    import optuna

    if plan.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=plan.prune_after, n_warmup_steps=0)
    if plan.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def retry_trial(study, trial) -> None:
    """Queue a stopped or lost trial again: same values, same member (so the same folder, and its checkpoint)."""
    import optuna

    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(history) > 3:  # a member that keeps losing its worker (killed for memory, say) is given up
        return
    fixed = {**trial.system_attrs.get("fixed_params", {}), **trial.params}  # (taken, but not yet started)
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs={k: v for k, v in trial.user_attrs.items() if k in ("member", "index")},
        system_attrs={"fixed_params": fixed, "failed_trial": history[0], "retry_history": history}))


WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


def take_trial(study, storage):
    """(trial, its storage id): a waiting trial this worker now holds (moved to running; retries of stopped
    members first); (None, None) when none is waiting. The storage moves a trial from waiting to running once (a
    row lock in PostgreSQL), so no other worker gets it."""
    optuna = _quiet_optuna()
    from optuna.trial import TrialState

    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in sorted(waiting, key=lambda t: ("failed_trial" not in t.system_attrs, t.number)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        try:
            if not storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        storage.record_heartbeat(trial_id)
        return optuna.Trial(study, trial_id), trial_id
    return None, None


def start_member(trial, plan: Plan, folder: Path) -> Member:
    """The member a trial runs: its values (fixed, or picked by the sampler now) and its folder's name."""
    values = {axis.key: axis.suggest(trial) for axis in plan.axes}
    name = trial.user_attrs.get("member") or member_name(trial.number, short_values(plan.axes, values))
    index = trial.user_attrs.get("index", trial.number)
    for key, value in (("member", name), ("index", index), ("worker", WORKER_ID),
                       ("folder", str((folder / name).resolve()))):
        trial.set_user_attr(key, value)
    return Member(index, name, values)


def reclaim_lost(study, storage) -> list[str]:
    """Fail and queue again the running trials whose worker was a process of this machine that is gone (killed,
    or the machine restarted), without waiting for their heartbeat to go stale. The members' names."""
    optuna = _quiet_optuna()
    from optuna.trial import TrialState

    host = socket.gethostname()
    study_id = storage.get_study_id_from_name(study.study_name)
    lost = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            storage.set_trial_user_attr(trial_id, "status", "lost")
            failed = storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker got there first
            continue
        if failed:
            retry_trial(study, storage.get_trial(trial_id))
            lost.append(trial.user_attrs.get("member", str(trial.number)))
    return lost


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def requeue_failed(study) -> list[str]:
    """`--resume` runs failed members again: each member whose last try failed, and that none holds or waits
    for, is queued once more. The members' names."""
    members = attempts(study)
    again = []
    for name, tries in members.items():
        last = tries[-1]
        if last.state.name == "FAIL" and not any(t.state.name in ("COMPLETE", "PRUNED") for t in tries):
            retry_trial(study, last)
            again.append(name)
    return again


def attempts(study) -> dict[str, list]:
    """Each member's trials (its first try, and retries), oldest first; members by index."""
    by_member: dict[str, list] = {}
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        name = trial.user_attrs.get("member")
        if name:
            by_member.setdefault(name, []).append(trial)
    return dict(sorted(by_member.items(), key=lambda item: item[1][0].user_attrs.get("index", 0)))


def member_of(trials: list, plan: Plan) -> Member:
    first = trials[0]
    values = {axis.key: axis.from_param(first.params[axis.key]) for axis in plan.axes if axis.key in first.params}
    return Member(first.user_attrs.get("index", first.number), first.user_attrs["member"], values)


def status_of(trials: list) -> str:
    """done, pruned, running (a worker holds it), the last try's end (interrupted, failed, error, lost), or
    not run."""
    states = {t.state.name for t in trials}
    for state, status in (("COMPLETE", "done"), ("PRUNED", "pruned"), ("RUNNING", "running")):
        if state in states:
            return status
    ended = [t for t in trials if t.state.name == "FAIL"]
    return ended[-1].user_attrs.get("status", "lost") if ended else "not run"  # (no status: its heartbeat stopped)


# --------------------------------------------------------------------------- running


def member_done(folder: Path, command: str) -> bool:
    return (folder / ("summary.json" if command == "train" else "metrics.json")).is_file()


def member_command(folder: Path, plan: Plan, member: Member) -> list[str]:
    """The member's `snnrun` arguments (a training member with a checkpoint resumes from it)."""
    target = folder / member.name
    if plan.command == "train" and (target / "checkpoints" / "last.pt").is_file():
        return ["train", "--resume", str(target)]
    device = ["--device", plan.device] if plan.device else []
    sets = [a for item in member.overrides for a in ("--set", item)]
    return [plan.command, str(folder / "base.yaml"), *sets, *device, "--into", str(target)]


@dataclass
class Outcome:
    member: Member
    status: str  # done, skipped (done before), pruned, failed, error, interrupted, lost
    exit_code: int | None
    seconds: float
    pruned_at: int | None = None  # the epoch after which the pruner stopped it


STATUS = {0: "done", 130: "interrupted", 143: "interrupted", 2: "error"}  # by exit code; any other: failed


@dataclass
class _Running:
    process: object  # worker.MemberProcess | worker.SimulateWorker | _Finished
    member: Member
    trial: object  # optuna.Trial
    trial_id: int
    began: float
    epochs: int = 0  # epoch lines of metrics.jsonl reported so far
    pruned: dict | None = None  # set when the pruner stopped it: the epoch, the value reported


@dataclass
class Sweep:
    """What this worker's run of a sweep left: the outcomes of the members it ran and of those done before, notes
    (members queued again), and an error that stopped it."""

    outcomes: list[Outcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: ConfigError | None = None


def run_members(folder: Path, plan: Plan, study, storage, parallel: int, gpus: int = 0,
                on_start: Callable[[Member], None] | None = None,
                on_done: Callable[[Outcome], None] | None = None,
                should_stop: Callable[[], bool] = lambda: False, retry_failed: bool = False) -> Sweep:
    """Take the study's waiting trials and run them, `parallel` at a time (at most one per GPU), until none is
    waiting and no other worker holds one (a trial whose worker falls silent is failed, queued again and taken);
    when should_stop() turns true, running members are asked to stop (SIGINT: a training member saves a
    checkpoint) and queued again, and no new ones start."""
    from snnrun.worker import SimulateWorker, wait_for_any

    optuna = _quiet_optuna()
    if gpus:
        parallel = min(parallel, gpus)
    threads = max(1, (os.cpu_count() or 1) // parallel)
    sweep = Sweep()
    sweep.notes += [f"{name}: its worker on this machine is gone; queued again" for name in reclaim_lost(study,
                                                                                                       storage)]
    if retry_failed:
        sweep.notes += [f"{name}: failed before; queued again" for name in requeue_failed(study)]
    for trials in attempts(study).values():
        if status_of(trials) in ("done", "pruned"):
            pruned = next((t.user_attrs.get("pruned_at_epoch") for t in trials if t.state.name == "PRUNED"), None)
            _report(sweep, on_done, Outcome(member_of(trials, plan), "skipped", 0, 0.0, pruned))
    (folder / "logs").mkdir(exist_ok=True)
    workers: dict[int, SimulateWorker] = {}  # simulate: by slot
    running: dict[int, _Running] = {}  # by slot (a GPU's number)
    stopping, look_at, stale_at, beat = False, 0.0, 0.0, time.monotonic()
    try:
        while True:
            if not stopping and (should_stop() or sweep.error):
                stopping = True
                for run in running.values():
                    run.process.interrupt()
            now = time.monotonic()
            if not stopping and len(running) < parallel and now >= look_at:
                if now >= stale_at:  # trials whose workers fell silent: failed, and queued again
                    optuna.storages.fail_stale_trials(study)
                    stale_at = now + plan.heartbeat
                while len(running) < parallel:
                    trial, trial_id = take_trial(study, storage)
                    if trial is None:
                        look_at = now + 1.0  # none waiting: look again in a second
                        break
                    slot = min(set(range(parallel)) - set(running))
                    member = start_member(trial, plan, folder)
                    process = _launch(folder, plan, member, slot, workers, threads, gpus)
                    running[slot] = _Running(process, member, trial, trial_id, time.monotonic())
                    if on_start:
                        on_start(member)
            if not running:
                if stopping or not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                    break
                wait_for_any([], 1.0)  # other workers hold the last members
                continue
            wait_for_any([run.process for run in running.values()], 0.1)
            if time.monotonic() - beat >= plan.heartbeat / 2:
                beat = time.monotonic()
                for run in running.values():
                    with contextlib.suppress(Exception):  # a trial another worker took over: see _finish
                        storage.record_heartbeat(run.trial_id)
            for slot, run in list(running.items()):
                if plan.pruner != "none" and run.pruned is None and not stopping:
                    _report_epochs(folder, plan, run)
                code = run.process.poll()
                if code is None:
                    continue
                del running[slot]
                look_at = 0.0
                outcome = _finish(folder, plan, study, storage, run, code, time.monotonic() - run.began, sweep)
                _report(sweep, on_done, outcome)
    finally:
        for slot, worker in workers.items():
            worker.close(interrupt=slot in running)
    sweep.outcomes.sort(key=lambda o: o.member.index)
    return sweep


def _report(sweep: Sweep, on_done, outcome: Outcome) -> None:
    sweep.outcomes.append(outcome)
    if on_done:
        on_done(outcome)


def _launch(folder: Path, plan: Plan, member: Member, slot: int, workers: dict, threads: int, gpus: int):
    """The member's process: `snnrun train` of its own, or the slot's simulate worker given the member."""
    from snnrun.worker import MemberProcess, SimulateWorker

    target = folder / member.name
    if member_done(target, plan.command):  # it finished, but its worker died before saying so
        return _Finished()
    if target.exists() and not (target / "checkpoints" / "last.pt").is_file():
        shutil.rmtree(target)  # stopped before its first checkpoint: nothing in it to keep
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(slot)
    log = folder / "logs" / f"{member.index:03d}.log"
    args = member_command(folder, plan, member)
    if plan.command == "train":
        return MemberProcess(args, env, log)
    if slot not in workers or not workers[slot].alive:
        if slot in workers:
            workers[slot].close()  # (it has exited: its member was reported)
        workers[slot] = SimulateWorker(env, log)
    workers[slot].submit(args, log)
    return workers[slot]


class _Finished:
    """A member whose folder was finished already: nothing to run."""

    def poll(self) -> int:
        return 0

    def interrupt(self) -> None:
        pass


def _report_epochs(folder: Path, plan: Plan, run: _Running) -> None:
    """Report the member's new epochs to its trial; stop the member (Ctrl-C: it saves a checkpoint) when the
    pruner says it is hopeless."""
    records = read_epochs(folder / run.member.name / "metrics.jsonl")
    for record in records[run.epochs:]:
        run.epochs += 1
        value = record.get(plan.report)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            continue
        run.trial.report(value, record["epoch"])
        if run.trial.should_prune():
            run.pruned = {"epoch": record["epoch"], plan.report: value}
            run.process.interrupt()
            return


def _finish(folder: Path, plan: Plan, study, storage, run: _Running, code: int, seconds: float,
            sweep: Sweep) -> Outcome:
    """Tell the study how the member ended; a pruned member's folder says so (pruned.json, a line in run.log);
    an interrupted one is queued again."""
    optuna = _quiet_optuna()
    target = folder / run.member.name
    status = STATUS.get(code, "failed")
    trial, FAIL = run.trial, optuna.trial.TrialState.FAIL
    try:
        if run.pruned is not None and status != "done":
            record = {**run.pruned, "pruner": plan.pruner, "reported": plan.report, "trial": trial.number}
            write_json(target / "pruned.json", record)
            with open(target / "run.log", "a", encoding="utf-8") as log:
                log.write(f"pruned by the sweep's {plan.pruner} pruner after epoch {record['epoch']} "
                          f"({plan.report} {record[plan.report]:.4f}); its checkpoints are kept\n")
            trial.set_user_attr("pruned_at_epoch", record["epoch"])
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return Outcome(run.member, "pruned", code, seconds, record["epoch"])
        if status == "done":
            metrics = member_metrics(target, plan.command)
            trial.set_user_attr("metrics", metrics)
            value = metrics.get(plan.metric)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                study.tell(trial, value)
            else:  # the run is whole, but the sweep cannot rank it: stop, and say which metrics there are
                trial.set_user_attr("status", "done")
                study.tell(trial, state=FAIL)
                sweep.error = ConfigError(f"{plan.metric!r} is not a metric of these runs; available: "
                                          f"{', '.join(metrics)}", source="--metric")
            return Outcome(run.member, status, code, seconds)
        trial.set_user_attr("status", status)
        study.tell(trial, state=FAIL)
        if status == "interrupted":
            retry_trial(study, storage.get_trial(run.trial_id))
        return Outcome(run.member, status, code, seconds)
    except optuna.exceptions.UpdateFinishedTrialError:  # its heartbeat was missed: another worker failed it
        return Outcome(run.member, "lost", code, seconds)



def collect(study, plan: Plan) -> list[dict]:
    """One row per member of the study (every worker's, in member order): index, member, status, host (where
    its folder is), the swept values, then its final metrics (or the epoch it was pruned after)."""
    rows = []
    for name, trials in attempts(study).items():
        member = member_of(trials, plan)
        status = status_of(trials)
        last = next((t for t in reversed(trials) if t.state.name in ("COMPLETE", "PRUNED")), trials[-1])
        host = str(last.user_attrs.get("worker", "")).rpartition(":")[0]
        row = {"index": member.index, "member": name, "status": status, "host": host}
        row.update({key: label(value) if isinstance(value, (list, dict)) else value
                    for key, value in member.values.items()})
        if status == "done":
            row.update(last.user_attrs.get("metrics", {}))
        if status == "pruned":
            row["pruned_at_epoch"] = last.user_attrs.get("pruned_at_epoch")
        rows.append(row)
    return rows


def elsewhere(folder: Path, study) -> list[tuple[str, str, str]]:
    """(member, host, folder) of the finished members whose run folders another worker wrote, not in `folder`."""
    found = []
    for name, trials in attempts(study).items():
        ended = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
        if ended and not (folder / name).is_dir():
            found.append((name, str(ended[-1].user_attrs.get("worker", "")).rpartition(":")[0],
                          str(ended[-1].user_attrs.get("folder", ""))))
    return found


