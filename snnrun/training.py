"""`train`: the story of a training run, top to bottom.

A `schema.TrainConfig` -> data on the device -> network ->
epochs of shuffled index batches with surrogate-gradient BPTT -> validation -> checkpoints
-> the best epoch scored once on the test set. Nothing here prints: progress and
per-epoch records go to callbacks, files go into the run folder given.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from snnrun import distributed
from snnrun import encoding as encodings
from snnrun.config import ConfigError
from snnrun.data import Split, load_images, validation_split
from snnrun.distributed import Ranks
from snnrun.event_data import load_frames
from snnrun.memory import peak_memory_mb
from snnrun.network import Network, NetworkOutput
from snnrun.runs import write_atomically
from snnrun.schema import TrainConfig, TrainSettings, config_to_dict

# --------------------------------------------------------------------------- pieces of an epoch


class TrainingInterrupted(Exception):
    """Stopped on request (Ctrl-C, SIGTERM) after saving a checkpoint to resume from."""


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def load_splits(cfg: TrainConfig, device) -> tuple[Split, Split, Split]:
    """(train, val, test) as uint8 tensors on the device, with the config's subset applied."""
    d = cfg.data
    if d.events:
        train, test = load_frames(d.root, d.dataset, cfg.encoding.time_steps, d.duration_ms, d.denoise_us,
                                  d.download, downsample=d.downsample)
    else:
        train, test = load_images(d.root, d.dataset, d.download)
    train, val = validation_split(train, min(cfg.data.val_size, len(train) // 2), cfg.train.seed)
    subset = cfg.train.subset
    if subset.train is not None:  # the validation images stay data.val_size, whatever the subset
        train = train.take(slice(0, subset.train))
    if subset.test is not None:
        test = test.take(slice(0, subset.test))
    return train.to(device), val.to(device), test.to(device)


def shift_images(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by its own random (dy, dx) in [-max_shift, max_shift], filling with zeros."""
    b, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    d = torch.randint(-max_shift, max_shift + 1, (2, b), generator=generator, device=images.device)
    rows = torch.arange(h, device=images.device) + max_shift - d[0, :, None]
    cols = torch.arange(w, device=images.device) + max_shift - d[1, :, None]
    return padded[torch.arange(b, device=images.device)[:, None, None], rows[:, :, None], cols[:, None, :]]


def loss_of(out: NetworkOutput, labels: torch.Tensor, settings: TrainSettings, time_steps: int) -> torch.Tensor:
    if settings.loss == "ce":
        return F.cross_entropy(out.logits, labels)
    if settings.loss == "ce_rate":
        return F.cross_entropy(out.spikes.sum(dim=0), labels)
    if settings.loss == "ce_rate_steps":  # snnTorch's ce_rate_loss (tutorial 6): each step's spikes as logits
        steps, batch, classes = out.spikes.shape
        per_step = F.cross_entropy(out.spikes.reshape(steps * batch, classes), labels.repeat(steps),
                                   reduction="none")
        return per_step.reshape(steps, batch).mean(dim=1).mean()
    if settings.loss == "ce_membrane":  # snnTorch tutorial 5: the sum over steps of per-step cross-entropy
        steps, batch, classes = out.membrane.shape
        per_step = F.cross_entropy(out.membrane.reshape(steps * batch, classes), labels.repeat(steps),
                                   reduction="none")
        return per_step.reshape(steps, batch).mean(dim=1).sum()
    # mse_count: spike counts against target rates (snnTorch's mse_count_loss)
    target = torch.full_like(out.logits, settings.incorrect_rate * time_steps)
    target.scatter_(1, labels[:, None], settings.correct_rate * time_steps)
    return F.mse_loss(out.spikes.sum(dim=0), target)


def make_optimizer(model: Network, s: TrainSettings) -> torch.optim.Optimizer:
    if s.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    cls = torch.optim.AdamW if s.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=s.lr, weight_decay=s.weight_decay, fused=_fused_adam(model))


def _fused_adam(model: Network) -> bool | None:
    """Adam's fused kernel (one pass over each parameter instead of a dozen; 0.12 against 0.28 ms a step for the
    Norse tutorial network on the CPU) where this torch has it: CUDA, and the CPU since torch 2.4."""
    device = next(model.parameters()).device.type
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return True if device == "cuda" or (device == "cpu" and (major, minor) >= (2, 4)) else None


def make_schedule(optimizer, s: TrainSettings, batches_per_epoch: int):
    if s.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=s.epochs * batches_per_epoch)
    if s.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=s.step_size * batches_per_epoch, gamma=s.gamma)
    return None


def encode(images: torch.Tensor, cfg: TrainConfig, generator: torch.Generator | None) -> torch.Tensor:
    e = cfg.encoding
    neurons = cfg.model.neuron.parameters(images.device) if e.kind in encodings.PHYSICAL else None
    return encodings.encode(images, e.kind, e.time_steps, e.gain, generator, neurons)


@torch.no_grad()
def evaluate(model: Network, split: Split, cfg: TrainConfig, with_predictions: bool = False) -> dict:
    """Loss, accuracy and spikes per neuron per step of each layer on a split (seeded, so repeatable)."""
    model.eval()
    generator = torch.Generator(device=split.images.device).manual_seed(cfg.train.seed + 1)
    loss_sum, correct, spikes = 0.0, 0, torch.zeros(len(model.layer_sizes), dtype=torch.float64)
    input_spikes, predictions = 0.0, []
    for start in range(0, len(split), cfg.train.eval_batch_size):
        images = split.images[start:start + cfg.train.eval_batch_size]
        labels = split.labels[start:start + cfg.train.eval_batch_size]
        x = encode(images, cfg, generator)
        out = model(x)
        if x.dim() == 3:
            input_spikes += float(x.sum())
        loss_sum += float(loss_of(out, labels, cfg.train, cfg.encoding.time_steps)) * len(labels)
        predicted = out.logits.argmax(dim=1)
        correct += int((predicted == labels).sum())
        spikes += out.spike_counts.double().cpu()
        if with_predictions:
            predictions.append(predicted.cpu())
    n = max(len(split), 1)
    result = {"loss": loss_sum / n, "accuracy": correct / n,
              "spikes_per_neuron_step": per_neuron_step(spikes, model, n, cfg.encoding.time_steps),
              "spikes_per_sample": [float(total) / n for total in spikes],
              "input_spikes_per_sample": input_spikes / n}
    if with_predictions:
        result["predictions"] = torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long)
    return result


def per_neuron_step(spike_totals: torch.Tensor, model: Network, samples: int, steps: int) -> list[float]:
    return [float(total) / (samples * steps * size) for total, size in zip(spike_totals, model.layer_sizes,
                                                                             strict=True)]


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically: a crash leaves the previous complete file or the new one, never a torn file.

    The state goes to a hidden temporary file in the same folder, is flushed to disk, and replaces the old file
    in one rename (then the folder entry is flushed too: `runs.write_atomically`). A failed write (a full disk)
    removes the temporary file and leaves the old checkpoint as it was."""
    write_atomically(path, lambda handle: torch.save(state, handle))


RESUME_KEYS = ("model", "optimizer", "rng", "epoch", "batch", "history", "best_val_accuracy", "train_seconds")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as one of ours."""


def read_checkpoint(path: Path, device="cpu", keys: tuple[str, ...] = ("model",)) -> dict:
    """A checkpoint's contents (tensors only, never arbitrary pickled code), with the keys asked for; a
    damaged, truncated or foreign file raises CheckpointError naming the problem."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises many types for damaged or foreign files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"not a snnrun checkpoint ({reason[:200]})") from None
    missing = [key for key in keys if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"not a snnrun checkpoint (no {', '.join(missing)})")
    return state


def initial_weights(cfg: TrainConfig, device="cpu") -> dict:
    """The weights `train.init_from` names (a run folder's best.pt, or a checkpoint file), checked against the
    network the config builds: a ConfigError naming the key where they do not fit."""
    path = Path(cfg.train.init_from)
    file = path / "checkpoints" / "best.pt" if path.is_dir() else path
    where = {"source": cfg.train.init_from, "key": "train.init_from"}
    if not file.is_file():
        raise ConfigError("no such run folder (with checkpoints/best.pt) or checkpoint file", **where)
    try:
        weights = read_checkpoint(file, device)["model"]
    except CheckpointError as error:
        raise ConfigError(str(error), **where) from None
    try:
        Network(cfg.model, cfg.encoding.time_steps).load_state_dict(weights)
    except RuntimeError as error:
        reason = " ".join(str(error).split())
        raise ConfigError(f"its weights do not fit this config's network ({reason[:300]})", **where) from None
    return weights


# --------------------------------------------------------------------------- the run


@dataclass
class Callbacks:
    """How a run reports to whoever watches it (the CLI draws bars and prints lines)."""

    epoch_started: Callable[[int, int, int], None] = lambda epoch, batches, done: None  # done: batches already run
    batch_done: Callable[[dict], None] = lambda stats: None
    epoch_done: Callable[[dict], None] = lambda record: None
    should_stop: Callable[[], bool] = lambda: False
    inspect: Callable[[dict, torch.nn.Module], None] = lambda record, model: None  # the trained network, per epoch


SMALL_LAYER = 16_384  # elements of a (batch, neurons) tensor at or below which one thread is faster


def small_network_threads(model, batch_size: int) -> int | None:
    """1 when every neuron layer's (batch, neurons) tensor has at most SMALL_LAYER elements, else None.

    torch splits element-wise work into 32,768-element grains, so the whole-sequence tensors of such a
    network give a second thread little to do, and waking it for each of the hundreds of small operations of
    a step costs more than it saves. The Norse-tutorial network (batch 32 x 128 neurons, 10 steps) trained at
    1.12-1.37 ms a step on one thread against 1.75-2.45 ms on two, on the 2-core benchmark machine."""
    widest = max(model.layer_sizes)
    return 1 if batch_size * widest <= SMALL_LAYER else None


def cpu_threads(cfg: TrainConfig) -> int | None:
    """The CPU threads a training uses: the config's `threads`; else torch's own choice when OMP_NUM_THREADS
    is set; else one thread for a small network (`small_network_threads`); None: leave torch's default."""
    if cfg.threads:
        return cfg.threads
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return small_network_threads(cfg.model, cfg.train.batch_size)


@contextlib.contextmanager
def using_threads(threads: int | None):
    """torch's intra-op threads set to `threads` (None: unchanged) inside the block, restored after it."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class RunState:
    """Everything a run carries from batch to batch; `state_dict()` is the checkpoint to resume from."""

    model: Network
    optimizer: torch.optim.Optimizer
    schedule: object  # a learning-rate scheduler, or None
    generator: torch.Generator  # augmentation and input spikes (each rank its own stream)
    perm_generator: torch.Generator  # the order of the training images (the same on every rank)
    epoch: int = 0  # epochs done
    batch: int = 0  # batches done of the current epoch
    order: torch.Tensor | None = None  # the current epoch's order of the training images
    partial: dict | None = None  # the current epoch's running totals, when stopped inside it
    history: list[dict] = dataclasses.field(default_factory=list)
    best_val: float = -1.0
    train_seconds: float = 0.0

    def rng(self) -> dict:
        state = {"torch": torch.get_rng_state(), "generator": self.generator.get_state(),
                 "perm_generator": self.perm_generator.get_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def restore_rng(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        self.generator.set_state(state["generator"])
        self.perm_generator.set_state(state["perm_generator"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def state_dict(self, cfg: TrainConfig, ranks: Ranks) -> dict:
        """The checkpoint (collective: every rank calls it, and each rank's random streams are kept)."""
        rngs = distributed.gather(ranks, self.rng())
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict() if self.schedule is not None else None,
                "rng": rngs[0], "rng_ranks": rngs if ranks.active else None, "epoch": self.epoch,
                "batch": self.batch, "order": self.order, "partial": self.partial, "history": self.history,
                "best_val_accuracy": self.best_val, "train_seconds": self.train_seconds, "processes": ranks.world,
                "config": config_to_dict(cfg)}

    def load_state_dict(self, ckpt: dict, ranks: Ranks, seed: int, batches_per_epoch: int) -> None:
        """Continue from a checkpoint, saved with this number of processes or another."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.schedule is not None:
            self.schedule.load_state_dict(ckpt["schedule"])
        self.history, self.best_val, self.train_seconds = ckpt["history"], ckpt["best_val_accuracy"], \
            ckpt["train_seconds"]
        self.epoch, self.batch = ckpt["epoch"], ckpt["batch"]
        self.order, self.partial = ckpt.get("order"), ckpt.get("partial") if ranks.main else None
        per_rank = ckpt.get("rng_ranks") or [ckpt["rng"]]
        if len(per_rank) == ranks.world:
            self.restore_rng(per_rank[ranks.rank])
        else:  # saved with another number of processes: the shared order as saved, fresh streams per rank
            self.restore_rng(per_rank[0])
            if ranks.rank > 0:
                reseed = seed + _RANK_STRIDE * ranks.rank + 7 * (self.epoch * batches_per_epoch + self.batch)
                self.generator.manual_seed(reseed)
                torch.manual_seed(reseed)


def train(cfg: TrainConfig, folder: Path | None, device: torch.device, callbacks: Callbacks | None = None,
          resume: bool = False, ranks: Ranks = distributed.SINGLE,
          splits: tuple[Split, Split, Split] | None = None) -> dict | None:
    """Train into run folder `folder` (continuing from checkpoints/last.pt when `resume`); return the summary.

    `splits`: (train, val, test) on the device, as `load_splits` gives them (read here when not given). With
    several ranks (`snnrun.distributed`, the process group already started) each trains on its part of every
    global batch through DistributedDataParallel; only rank 0 writes into `folder` (None on the others unless
    resuming), evaluates and returns the summary; the others return None."""
    cb = callbacks or Callbacks()
    s = cfg.train
    checkpoints = folder / "checkpoints" if folder is not None else None
    if ranks.main:
        checkpoints.mkdir(exist_ok=True)

    torch.manual_seed(s.seed)
    train_set, val_set, test_set = splits or load_splits(cfg, device)
    run, forward = start(cfg, device, len(train_set), ranks)
    batches_per_epoch = math.ceil(len(train_set) / s.batch_size)
    if resume:
        run.load_state_dict(read_checkpoint(checkpoints / "last.pt", device, RESUME_KEYS), ranks, s.seed,
                            batches_per_epoch)
    elif s.init_from is not None:
        run.model.load_state_dict(initial_weights(cfg, device))

    def save(name: str, state: dict) -> None:
        if ranks.main:
            save_checkpoint(checkpoints / name, state)

    while run.epoch < s.epochs:
        totals, seconds = train_epoch(run, forward, train_set, cfg, cb, ranks, device, save)
        run.epoch, run.batch, run.order, run.partial = run.epoch + 1, 0, None, None
        run.train_seconds += seconds
        checkpointed = run.epoch % s.checkpoint_every == 0 or run.epoch == s.epochs
        resume_state = run.state_dict(cfg, ranks) if checkpointed else None  # collective: before the record
        if not ranks.main:  # validation, records and checkpoints are rank 0's
            continue
        val = evaluate(run.model, val_set, cfg) if len(val_set) else None
        record = epoch_record(run, cfg, totals, val, seconds)
        run.history.append(record)
        score = record["val_accuracy"] if val else record["epoch"]  # without validation: the last epoch is best
        if score > run.best_val:
            run.best_val = score
            save("best.pt", {"model": run.model.state_dict(), "epoch": run.epoch})
        if checkpointed:
            save("last.pt", {**resume_state, "history": run.history, "best_val_accuracy": run.best_val})
        cb.inspect(record, run.model)
        cb.epoch_done(record)

    digests = distributed.gather(ranks, distributed.weights_digest(run.model))
    if len(set(digests)) > 1:
        raise RuntimeError(f"the {ranks.world} replicas ended with different weights: {digests}")
    if not ranks.main:
        return None
    best = read_checkpoint(checkpoints / "best.pt", device, ("model", "epoch"))
    run.model.load_state_dict(best["model"])
    test = final_test(run.model, test_set, cfg, cb, ranks)
    return {
        "best_epoch": best["epoch"],
        "best_val_accuracy": run.history[best["epoch"] - 1]["val_accuracy"],
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_spikes_per_neuron_step": test["spikes_per_neuron_step"],
        "train_seconds": run.train_seconds,
        "peak_memory_mb": peak_memory_mb(device),  # this process's (a resumed run's: since the resume)
        "epochs": len(run.history),
        "history": run.history,
        "test_images": len(test_set),
        "processes": ranks.world,
        "weights_sha256": digests,
    }


def start(cfg: TrainConfig, device: torch.device, train_images: int, ranks: Ranks) -> tuple[RunState, nn.Module]:
    """A fresh run: the network (its weights drawn from the seeded global stream), the optimizer, the schedule
    and the random streams; and what the batches go through (the network, or its DistributedDataParallel
    wrapper when several ranks train)."""
    s = cfg.train
    model = Network(cfg.model, cfg.encoding.time_steps, time_chunk=cfg.train.time_chunk).to(device)
    forward = distributed.replicate(model, ranks, device)
    if ranks.rank > 0:  # each rank its own dropout draws (rank 0 keeps the single-process ones)
        torch.manual_seed(s.seed + _RANK_STRIDE * ranks.rank)
    optimizer = make_optimizer(model, s)
    schedule = make_schedule(optimizer, s, math.ceil(train_images / s.batch_size))
    generator = torch.Generator(device=device).manual_seed(s.seed + _RANK_STRIDE * ranks.rank)
    return RunState(model, optimizer, schedule, generator, torch.Generator().manual_seed(s.seed)), forward


def train_epoch(run: RunState, forward: nn.Module, train_set: Split, cfg: TrainConfig, cb: Callbacks,
                ranks: Ranks, device, save: Callable[[str, dict], None]) -> tuple[dict, float]:
    """One pass over the training images in shuffled batches (from `run.batch` on, when resumed inside the
    epoch): the epoch's totals summed over the ranks, and its seconds. A stop asked for between batches saves
    last.pt and raises TrainingInterrupted; a loss that is not finite raises TrainingDiverged."""
    s = cfg.train
    run.model.train()
    batches = math.ceil(len(train_set) / s.batch_size)
    if run.order is None:
        run.order = torch.randperm(len(train_set), generator=run.perm_generator).to(device)
    totals = run.partial or {"loss": 0.0, "correct": 0, "seen": 0, "spikes": [0.0] * len(run.model.layer_sizes),
                             "seconds": 0.0}
    cb.epoch_started(run.epoch, batches, run.batch)
    started = time.perf_counter() - totals["seconds"]
    for batch in range(run.batch, batches):
        stop, = distributed.any_rank(ranks, device, cb.should_stop())  # all ranks stop at the same batch
        if stop:
            totals["seconds"] = time.perf_counter() - started  # the epoch's time so far, resumed later
            run.batch, run.partial = batch, _summed(totals, ranks, device)
            save("last.pt", run.state_dict(cfg, ranks))
            raise TrainingInterrupted(f"stopped in epoch {run.epoch + 1} at batch {batch}")
        index, share = distributed.shard(run.order[batch * s.batch_size:(batch + 1) * s.batch_size], ranks)
        images, labels = train_set.images[index], train_set.labels[index]
        if s.augment_shift:
            images = shift_images(images, s.augment_shift, run.generator)
        out = forward(encode(images, cfg, run.generator))
        loss = loss_of(out, labels, s, cfg.encoding.time_steps)
        diverged, = distributed.any_rank(ranks, device, not bool(torch.isfinite(loss)))
        if diverged:
            raise TrainingDiverged(f"the loss became {float(loss.detach())} in epoch {run.epoch + 1}, batch "
                                   f"{batch + 1}; the last good checkpoint is kept (try a lower train.lr or "
                                   "train.grad_clip)")
        run.optimizer.zero_grad(set_to_none=True)
        (loss * share if ranks.active else loss).backward()
        if s.grad_clip:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), s.grad_clip)
        run.optimizer.step()
        if run.schedule is not None:
            run.schedule.step()
        if share > 0:  # (a rank with no images this batch ran one with weight 0)
            totals["loss"] += float(loss.detach()) * len(labels)
            totals["correct"] += int((out.logits.argmax(dim=1) == labels).sum())
            totals["seen"] += len(labels)
            totals["spikes"] = [a + float(b) for a, b in zip(totals["spikes"], out.spike_counts, strict=True)]
        elapsed = time.perf_counter() - started
        cb.batch_done({"loss": totals["loss"] / max(totals["seen"], 1),
                       "accuracy": totals["correct"] / max(totals["seen"], 1),
                       "samples_per_s": totals["seen"] * ranks.world / max(elapsed, 1e-9)})
    seconds = time.perf_counter() - started
    return _summed(totals, ranks, device), seconds


def epoch_record(run: RunState, cfg: TrainConfig, totals: dict, val: dict | None, seconds: float) -> dict:
    """One line of metrics.jsonl: the epoch's training totals, its validation score, the learning rate, speed."""
    return {
        "epoch": run.epoch,
        "train_loss": totals["loss"] / totals["seen"],
        "train_accuracy": totals["correct"] / totals["seen"],
        "val_loss": val["loss"] if val else None,
        "val_accuracy": val["accuracy"] if val else None,
        "train_spikes_per_neuron_step": per_neuron_step(torch.tensor(totals["spikes"]), run.model, totals["seen"],
                                                        cfg.encoding.time_steps),
        "val_spikes_per_neuron_step": val["spikes_per_neuron_step"] if val else None,
        "lr": run.optimizer.param_groups[0]["lr"],
        "epoch_seconds": seconds,
        "samples_per_s": totals["seen"] / seconds,
    }


def final_test(model: Network, test_set: Split, cfg: TrainConfig, cb: Callbacks, ranks: Ranks) -> dict:
    """The best epoch's network scored on the test set. It hears a stop between its batches (asked as each
    enters the network). Nothing is lost: last.pt holds the final epoch, so `--resume` only scores (and plots)
    again."""
    def stop_between_batches(module, inputs) -> None:
        if cb.should_stop():
            raise TrainingInterrupted("stopped during the final test evaluation, after the last epoch")

    hook = model.register_forward_pre_hook(stop_between_batches)
    try:
        return evaluate(model, test_set, cfg)
    except TrainingInterrupted:
        distributed.all_done(ranks)  # the other ranks wait there for rank 0 (commands._train_in_folder)
        raise
    finally:
        hook.remove()


_RANK_STRIDE = 1_000_003  # seeds of rank r's random streams: seed + r * stride (rank 0: the single-process ones)


def _summed(totals: dict, ranks: Ranks, device: torch.device) -> dict:
    """An epoch's running totals summed over the ranks (the seconds are rank 0's)."""
    if not ranks.active:
        return totals
    values = distributed.sum_ranks(ranks, device, [totals["loss"], totals["correct"], totals["seen"],
                                                   *totals["spikes"]])
    return {**totals, "loss": values[0], "correct": int(values[1]), "seen": int(values[2]), "spikes": values[3:]}

