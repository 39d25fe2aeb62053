"""`train` with `learning: stdp`: Diehl & Cook (2015), unsupervised learning of digits with STDP, as a story.

A `schema.STDPConfig` -> the network (input -> excitatory weights drawn as the original's, theta 20 mV) ->
each training image presented in turn, the weights learning by STDP (`snnrun.stdp_kernel`, one compiled loop)
-> the network frozen and shown `label_images` training images: each excitatory neuron is assigned the class it
answers most on average -> the test images classified by the mean response of each class's neurons.

Labels never reach the weights: they are used only to assign neurons and to score. Accuracy over training is
the original's running figure: each block of images classified with the assignments of the `window` images
before it. Nothing here prints: progress goes to `training.Callbacks`, files into the run folder.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from snnrun.data import load_images
from snnrun.neurons.conductance import conductance_keep, refractory_steps
from snnrun.schema import STDPConfig, config_to_dict
from snnrun.training import Callbacks, CheckpointError, TrainingInterrupted, read_checkpoint, save_checkpoint

CHUNK = 250  # images per call of the compiled loop: a stop (Ctrl-C) is heard and progress drawn between chunks
RESUME_KEYS = ("network", "position", "history", "train_seconds")


def constants(cfg: STDPConfig):
    """The kernel's constants from the config (times in ms, potentials in mV)."""
    from snnrun.stdp_kernel import Constants

    s, e, i, x, p = cfg.stdp, cfg.stdp.excitatory, cfg.stdp.inhibitory, cfg.stdp.input, cfg.stdp.plasticity
    dt = x.dt_ms
    return Constants(
        dt=dt, present_steps=round(x.duration_ms / dt), rest_steps=round(x.rest_ms / dt),
        e_rest=e.v_rest_mv, e_reset=e.v_reset_mv, e_thresh=e.v_thresh_mv, e_dt_tau=dt / e.tau_ms,
        e_exc=e.e_exc_mv, e_inh=e.e_inh_mv, e_ge_keep=conductance_keep(e.tau_ge_ms, dt),
        e_gi_keep=conductance_keep(e.tau_gi_ms, dt), e_refractory=refractory_steps(e.refractory_ms, dt),
        e_clamp=e.clamp_refractory, theta_plus=e.theta_plus_mv, theta_keep=conductance_keep(e.tau_theta_ms, dt),
        offset=e.offset_mv,
        i_rest=i.v_rest_mv, i_reset=i.v_reset_mv, i_thresh=i.v_thresh_mv, i_dt_tau=dt / i.tau_ms,
        i_exc=i.e_exc_mv, i_inh=i.e_inh_mv, i_ge_keep=conductance_keep(i.tau_ge_ms, dt),
        i_gi_keep=conductance_keep(i.tau_gi_ms, dt), i_refractory=refractory_steps(i.refractory_ms, dt),
        i_clamp=i.clamp_refractory,
        w_ei=s.w_exc_inh, w_ie=s.w_inh_exc,
        nu_pre=p.nu_pre, nu_post=p.nu_post, tau_pre=p.tau_pre_ms, post1_keep=math.exp(-dt / p.tau_post1_ms),
        post2_keep=math.exp(-dt / p.tau_post2_ms), wmax=p.wmax, weight_total=s.weight_total,
        max_rate_hz=x.max_rate_hz, rate_step_hz=x.rate_step_hz, min_spikes=x.min_spikes,
        max_presentations=x.max_presentations)


def initial_weights(cfg: STDPConfig, inputs: int) -> tuple[np.ndarray, np.ndarray]:
    """The original's random input weights, (U[0, 1) + 0.01) * 0.3, and synaptic delays, U[0, input_delay_ms)
    cut to whole steps: both drawn from the seed."""
    rng = np.random.default_rng(cfg.train.seed)
    shape = (inputs, cfg.stdp.excitatory_neurons)
    w = (rng.random(shape) + 0.01) * cfg.stdp.w_input_scale
    delays = (rng.random(shape) * (cfg.stdp.input_delay_ms / cfg.stdp.input.dt_ms)).astype(np.int64)
    return w, delays


def fresh_state(cfg: STDPConfig, w: np.ndarray, theta: np.ndarray, delays: np.ndarray | None = None):
    """The network with these weights, thresholds and delays (in steps; None: none) at rest (`rested`)."""
    from snnrun.stdp_kernel import State

    delays = np.zeros(w.shape, np.int64) if delays is None else np.asarray(delays, np.int64)
    order = np.argsort(delays, axis=1, kind="stable")
    top = int(delays.max()) if delays.size else 0
    start = np.stack([np.searchsorted(row, np.arange(top + 2)) for row in np.take_along_axis(delays, order, 1)])
    unset = np.zeros(0)
    static = State(w=np.ascontiguousarray(w, dtype=np.float64), theta=np.array(theta, dtype=np.float64),
                   v_e=unset, ge_e=unset, gi_e=unset, last_e=unset, v_i=unset, ge_i=unset, gi_i=unset, last_i=unset,
                   post1=unset, post2=unset, last_arrival=unset, delay_order=order.astype(np.int64),
                   delay_start=start.astype(np.int64), clock=unset)
    return rested(cfg, static)


def run_block(state, cfg: STDPConfig, images: np.ndarray, learn: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Present a block of images (uint8, one row each): (spike counts per image and neuron, presentations each)."""
    from snnrun.stdp_kernel import run_images

    counts = np.zeros((len(images), state.w.shape[1]), np.int32)
    presentations = np.zeros(len(images), np.int32)
    run_images(state, constants(cfg), np.ascontiguousarray(images), learn, seed, counts, presentations)
    return counts, presentations


def block_seed(seed: int, phase: int, epoch: int, block: int) -> int:
    """The input spikes' seed of one block: a run stopped and resumed draws what an unbroken run draws."""
    return (seed * 1_000_003 + phase * 7_919_000 + epoch * 104_729 + block) % (2**31 - 1)


# --------------------------------------------------------------------------- assignments and classification


def assign(counts: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """Each neuron's class: the one whose images it answers with the most spikes on average (ties: the lower
    class); -1 for a neuron that never fired (it takes no part in classification)."""
    rates = np.zeros((classes, counts.shape[1]))
    for c in range(classes):
        mask = labels == c
        if mask.any():
            rates[c] = counts[mask].mean(axis=0)
    assignments = rates.argmax(axis=0)
    assignments[rates.max(axis=0) <= 0] = -1
    return assignments


def classify(counts: np.ndarray, assignments: np.ndarray, classes: int) -> np.ndarray:
    """Each image's class: the one whose assigned neurons fired most on average (a class with no neurons scores
    0; ties: the lower class)."""
    scores = np.zeros((len(counts), classes))
    for c in range(classes):
        members = assignments == c
        if members.any():
            scores[:, c] = counts[:, members].mean(axis=1)
    return scores.argmax(axis=1)


def confusion(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    matrix = np.zeros((classes, classes), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


# --------------------------------------------------------------------------- the run


@dataclass
class Trained:
    """A trained Diehl & Cook network: what checkpoints/best.pt holds."""

    w: np.ndarray  # (inputs, excitatory) input weights
    theta: np.ndarray  # (excitatory,) adaptive thresholds, mV
    assignments: np.ndarray  # (excitatory,) each neuron's class, -1 if it never fired while labelling
    delays: np.ndarray  # (inputs, excitatory) synaptic delays in steps

    def state_dict(self) -> dict:
        return {"w": torch.from_numpy(self.w), "theta": torch.from_numpy(self.theta),
                "assignments": torch.from_numpy(self.assignments), "delays": torch.from_numpy(self.delays)}

    @classmethod
    def from_state_dict(cls, state: dict) -> Trained:
        return cls(state["w"].numpy().astype(np.float64), state["theta"].numpy().astype(np.float64),
                   state["assignments"].numpy().astype(np.int64), state["delays"].numpy().astype(np.int64))


def delays_of(state) -> np.ndarray:
    """The synaptic delays (steps) a state was built with (`fresh_state` keeps them as an order and offsets)."""
    delays = np.zeros(state.w.shape, np.int64)
    for i, (order, start) in enumerate(zip(state.delay_order, state.delay_start, strict=True)):
        delays[i, order] = np.repeat(np.arange(len(start) - 1), np.diff(start))
    return delays


def load_data(cfg: STDPConfig):
    """(train images, train labels, test images, test labels) as numpy, with the subsets applied."""
    train, test = load_images(cfg.data.root, cfg.data.dataset, cfg.data.download)
    sub = cfg.train.subset
    flat = lambda split, n: (split.images[:n].reshape(len(split.images[:n]), -1).numpy(),  # noqa: E731
                             split.labels[:n].numpy())
    return (*flat(train, sub.train), *flat(test, sub.test))


def _network_state(state) -> dict:
    return {name: torch.from_numpy(np.array(value)) for name, value in state._asdict().items()}


def _restore_state(saved: dict):
    from snnrun.stdp_kernel import State

    return State(**{name: saved[name].numpy().copy() for name in State._fields})


def train_stdp(cfg: STDPConfig, folder: Path, callbacks: Callbacks | None = None, resume: bool = False,
               data=None) -> dict:
    """Train into run folder `folder` (continuing from checkpoints/last.pt when `resume`), label, test; return the
    summary. Checkpoints: last.pt after every `checkpoint_every` images and at a stop (Ctrl-C) between blocks;
    best.pt, the trained network (weights, theta, assignments), at the end."""
    cb = callbacks or Callbacks()
    t = cfg.train
    checkpoints = folder / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    x_train, y_train, x_test, y_test = data if data is not None else load_data(cfg)
    classes, n = 10, cfg.stdp.excitatory_neurons
    window = t.window
    blocks = math.ceil(len(x_train) / CHUNK)
    if resume:
        saved = read_checkpoint(checkpoints / "last.pt", keys=RESUME_KEYS)
        state = _restore_state(saved["network"])
        epoch, block = (int(v) for v in saved["position"].tolist())
        history, seconds = saved["history"], saved["train_seconds"]
        recent_counts = saved["recent_counts"].numpy().astype(np.int32)
        recent_labels = saved["recent_labels"].numpy().astype(np.int64)
    else:
        w, delays = initial_weights(cfg, x_train.shape[1])
        state = fresh_state(cfg, w, np.full(n, cfg.stdp.excitatory.theta_start_mv), delays)
        epoch, block, history, seconds = 0, 0, [], 0.0
        recent_counts, recent_labels = np.zeros((0, n), np.int32), np.zeros(0, np.int64)

    def checkpoint(position: tuple[int, int], running: float = 0.0) -> None:
        """last.pt at `position` (epoch, block); `running`: seconds of the epoch not yet in `seconds`."""
        save_checkpoint(checkpoints / "last.pt", {
            "network": _network_state(state), "position": torch.tensor(position), "history": history,
            "train_seconds": seconds + running, "recent_counts": torch.from_numpy(recent_counts.astype(np.int16)),
            "recent_labels": torch.from_numpy(recent_labels), "config": config_to_dict(cfg)})

    while epoch < t.epochs:
        cb.epoch_started(epoch, blocks, block)
        started = time.perf_counter()
        done_in_epoch = block * CHUNK
        for b in range(block, blocks):
            if cb.should_stop():
                seconds += time.perf_counter() - started
                checkpoint((epoch, b))
                raise TrainingInterrupted(f"stopped in epoch {epoch + 1} after {b * CHUNK} images")
            lo, hi = b * CHUNK, min((b + 1) * CHUNK, len(x_train))
            counts, presentations = run_block(state, cfg, x_train[lo:hi], True, block_seed(t.seed, 0, epoch, b))
            labels = y_train[lo:hi]
            record = {"epoch": epoch + 1, "images": epoch * len(x_train) + hi,
                      "spikes_per_image": float(counts.sum(axis=1).mean()),
                      "presentations_per_image": float(presentations.mean()),
                      "theta_mean_mv": float(state.theta.mean())}
            if len(recent_labels) >= min(window, CHUNK):  # the original's running accuracy
                predicted = classify(counts, assign(recent_counts, recent_labels, classes), classes)
                record["train_accuracy"] = float((predicted == labels).mean())
            recent_counts = np.concatenate([recent_counts, counts])[-window:]
            recent_labels = np.concatenate([recent_labels, labels])[-window:]
            done_in_epoch = hi
            elapsed = time.perf_counter() - started
            record["samples_per_s"] = (hi - block * CHUNK) / max(elapsed, 1e-9)
            history.append(record)
            cb.batch_done({"spikes_per_image": record["spikes_per_image"], "accuracy": record.get("train_accuracy"),
                           "samples_per_s": record["samples_per_s"]})
            if (b + 1) * CHUNK % t.checkpoint_every < CHUNK and b + 1 < blocks:
                checkpoint((epoch, b + 1), time.perf_counter() - started)
        seconds += time.perf_counter() - started
        epoch, block = epoch + 1, 0
        checkpoint((epoch, 0))
        cb.epoch_done({"epoch": epoch, "images": done_in_epoch, "seconds": seconds,
                       "train_accuracy": history[-1].get("train_accuracy")})

    trained = Trained(state.w.copy(), state.theta.copy(), np.full(n, -1, np.int64), delays_of(state))
    started = time.perf_counter()
    labelled = frozen_responses(cfg, trained, x_train[:t.label_images], phase=1, should_stop=cb.should_stop)
    trained.assignments = assign(labelled, y_train[:t.label_images], classes)
    label_seconds = time.perf_counter() - started
    save_checkpoint(checkpoints / "best.pt", {**trained.state_dict(), "epoch": epoch})
    started = time.perf_counter()
    result = score(cfg, trained, x_test, y_test, should_stop=cb.should_stop)
    return {"test_accuracy": result["accuracy"], "train_seconds": seconds, "label_seconds": label_seconds,
            "test_seconds": time.perf_counter() - started, "epochs": epoch,
            "excitatory_neurons": n, "label_images": len(labelled), "test_images": len(y_test),
            "test_spikes_per_image": result["spikes_per_image"], "history": history,
            "neurons_per_class": np.bincount(trained.assignments[trained.assignments >= 0],
                                             minlength=classes).tolist(),
            "silent_neurons": int((trained.assignments < 0).sum()), "confusion": result["confusion"]}


def frozen_responses(cfg: STDPConfig, trained: Trained, images: np.ndarray, phase: int,
                     should_stop=lambda: False, workers: int | None = None) -> np.ndarray:
    """Spike counts of the frozen network (no learning, theta fixed) to each image. Each block of CHUNK images
    starts from rest with input spikes of its own seed, so the blocks are independent: they run on `workers`
    threads at once (default: one per core; the compiled loop releases the GIL) and give the same counts on any
    number of them."""
    from concurrent.futures import ThreadPoolExecutor

    base = fresh_state(cfg, trained.w, trained.theta, trained.delays)  # w, theta and delays: read, never written
    blocks = math.ceil(len(images) / CHUNK)
    workers = max(1, min(workers or os.cpu_count() or 1, blocks))

    def block(b: int) -> np.ndarray:
        state = rested(cfg, base)
        counts, _ = run_block(state, cfg, images[b * CHUNK:(b + 1) * CHUNK], False,
                              block_seed(cfg.train.seed, phase, 0, b))
        return counts

    out = []
    with ThreadPoolExecutor(workers) as pool:
        for wave in range(0, blocks, workers):
            if should_stop():
                raise TrainingInterrupted("stopped while labelling or scoring, after training; the trained network "
                                          "is in checkpoints/last.pt")
            out += list(pool.map(block, range(wave, min(wave + workers, blocks))))
    return np.concatenate(out) if out else np.zeros((0, trained.w.shape[1]), np.int32)


def rested(cfg: STDPConfig, state):
    """A copy of a state at rest that shares its weights, thresholds and delays: membranes at v_start, no
    conductance, no trace, no spike yet, the clock at 0."""
    from snnrun.stdp_kernel import NEVER

    n = state.w.shape[1]
    e, i = cfg.stdp.excitatory, cfg.stdp.inhibitory
    return state._replace(v_e=np.full(n, e.v_start_mv), ge_e=np.zeros(n), gi_e=np.zeros(n),
                          last_e=np.full(n, NEVER, np.int64), v_i=np.full(n, i.v_start_mv), ge_i=np.zeros(n),
                          gi_i=np.zeros(n), last_i=np.full(n, NEVER, np.int64), post1=np.zeros(n),
                          post2=np.zeros(n), last_arrival=np.full(state.w.shape, NEVER, np.int64),
                          clock=np.zeros(1, np.int64))


def digit_spikes(cfg: STDPConfig, trained: Trained, image: np.ndarray, seed: int) -> dict:
    """The frozen network's spikes for one image, one presentation from rest: input, excitatory and inhibitory
    spikes as (steps, neurons) arrays of 0/1, the excitatory counts and the class they give."""
    from snnrun.stdp_kernel import present_recorded

    c = constants(cfg)
    state = fresh_state(cfg, trained.w, trained.theta, trained.delays)
    n_in, n = trained.w.shape
    steps = c.present_steps
    exc, inh = np.zeros((steps, n), np.uint8), np.zeros((steps, n), np.uint8)
    ev_step, ev_index = np.empty(2 * steps * n_in, np.int64), np.empty(2 * steps * n_in, np.int64)
    counts = np.zeros(n, np.int32)
    m = present_recorded(state, c, np.ascontiguousarray(image), seed, counts, exc, inh, ev_step, ev_index)
    inputs = np.zeros((steps, n_in), np.uint8)
    inputs[ev_step[:m], ev_index[:m]] = 1
    return {"input": inputs, "excitatory": exc, "inhibitory": inh, "counts": counts,
            "predicted": int(classify(counts[None], trained.assignments, 10)[0])}


def score(cfg: STDPConfig, trained: Trained, images: np.ndarray, labels: np.ndarray,
          should_stop=lambda: False) -> dict:
    """Accuracy, predictions and confusion of the trained network on images (seeded, so repeatable)."""
    counts = frozen_responses(cfg, trained, images, phase=2, should_stop=should_stop)
    predicted = classify(counts, trained.assignments, 10)
    return {"accuracy": float((predicted == labels).mean()) if len(labels) else 0.0,
            "predictions": predicted, "spikes_per_image": float(counts.sum(axis=1).mean()) if len(counts) else 0.0,
            "confusion": confusion(labels, predicted, 10).tolist()}


def load_trained(path: Path) -> Trained:
    try:
        return Trained.from_state_dict(read_checkpoint(path, keys=("w", "theta", "assignments", "delays")))
    except KeyError as error:
        raise CheckpointError(f"not an STDP network checkpoint (no {error})") from None
