"""The neuron models as compiled loops (numba): the simulation's fast path on the CPU.

Each kernel runs one chunk of steps for all neurons. Neurons are split into blocks of `BLOCK`; the blocks run in
parallel on numba's threads, and each block goes through every step of the chunk while its state stays in the
core's cache, one vectorised pass over the block per step (the torch forms make six or seven passes over memory
per step). Spikes leave a block as (step, neuron) events, written only at steps where the block fired, so a
sparse raster costs nothing to store.

The arithmetic is the torch step functions' (leaky.py, synaptic.py, lapicque.py, lif.py), operation for
operation in the same dtype, so the spikes are the same and the membranes agree to the last bit or within a
rounding of it; tests/test_kernels.py compares them. The `lif` kernel computes the exact update as torch's
`lerp` does (one fused multiply-add); the others do not fuse, as torch does not.

This module imports numba (0.6 s) and is imported only when a kernel runs. Kernels are compiled on first use
(a few seconds) and cached on disk next to this file, or, where that folder is not writable, in numba's
user-wide cache (NUMBA_CACHE_DIR, else ~/.cache/numba or the platform's cache folder); later runs load them
in a fraction of a second.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

BLOCK = 2048  # neurons per block: a block's state (a few 8 kB arrays) stays in the L1/L2 cache for all steps
RESET_CODES = {"subtract": 0, "zero": 1, "none": 2}

_OPTIONS = {"parallel": True, "cache": True, "nogil": True, "error_model": "numpy", "boundscheck": False}


@njit(inline="always", cache=True)
def _collect(fired, m, lo, t, base, count, ev_step, ev_neuron):
    """Append the block's spikes of step t as events (a whole-word test first: most steps have none)."""
    words = fired.view(np.uint64)
    hit = np.uint64(0)
    for w in range(words.shape[0]):
        hit |= words[w]
    if hit:
        for j in range(m):
            if fired[j]:
                ev_step[base + count] = t
                ev_neuron[base + count] = lo + j
                count += 1
    return count


@njit(inline="always", cache=True)
def _bounds(b, n, steps):
    lo = b * BLOCK
    hi = min(lo + BLOCK, n)
    return lo, hi, hi - lo, lo * steps


# --------------------------------------------------------------------------- lif


@njit(inline="always", fastmath={"contract"}, cache=True)
def _lif(v, until, d, coeff, base_is_v, v_reset, v_thresh, now, later):
    """torch.lerp's vectorised form (base + coeff*(v - d), fused), then the refractory hold, threshold, reset."""
    x = (v if base_is_v else d) + coeff * (v - d)
    x = v_reset if until > now else x
    f = x > v_thresh
    return (v_reset if f else x), (later if f else until), f


@njit(**_OPTIONS, fastmath={"contract"})
def lif_chunk(drive, v, until, stamps, coeff, base_is_v, v_reset, v_thresh, refractory, membrane_out, ev_step,
              ev_neuron, counts):
    """`lif_scan` over one chunk. drive: v_rest + R*I, (steps, neurons or 1). until: per neuron, the step (local
    to the chunk, as a float) until which it is held; stamps: 0..steps-1 as floats."""
    steps, width = drive.shape
    n = v.shape[0]
    recorded = membrane_out.shape[1]
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo, hi, m, base = _bounds(b, n, steps)
        vb, ub = v[lo:hi], until[lo:hi]
        fired = np.zeros(BLOCK, np.uint8)
        count = 0
        for t in range(steps):
            now = stamps[t]
            later = now + refractory
            if width == 1:
                d = drive[t, 0]
                for j in range(m):
                    vb[j], ub[j], fired[j] = _lif(vb[j], ub[j], d, coeff, base_is_v, v_reset, v_thresh, now, later)
            else:
                row = drive[t, lo:hi]
                for j in range(m):
                    vb[j], ub[j], fired[j] = _lif(vb[j], ub[j], row[j], coeff, base_is_v, v_reset, v_thresh, now,
                                                  later)
            count = _collect(fired, m, lo, t, base, count, ev_step, ev_neuron)
            for j in range(min(m, recorded - lo)):
                membrane_out[t, lo + j] = vb[j]
        counts[b] = count


# --------------------------------------------------------------------------- leaky, synaptic, lapicque


@njit(inline="always", cache=True)
def _reset_before(v, u, thr, reset):
    """snnTorch's delayed reset: the spike of the step before (u > thr) resets this step's v."""
    if reset == 0:
        return v - thr if u > thr else v  # v - S*thr: v - 0 is v
    if reset == 1:
        return v - v if u > thr else v  # v - S*v
    return v


@njit(inline="always", cache=True)
def _reset_now(v, thr, reset):
    """The immediate reset (reset_delay: false) by the spike just fired."""
    f = v > thr
    if reset == 0:
        return (v - thr if f else v), f
    if reset == 1:
        return (v - v if f else v), f
    return v, f


@njit(inline="always", cache=True)
def _leaky(u, c, beta, thr, reset, delay):
    if not delay:
        return _reset_now(beta * u + c, thr, reset)
    if reset == 1:  # U[t] = beta*(U[t-1]*(1 - S[t-1])) + I[t]: I[t] after a spike
        x = c if u > thr else beta * u + c
    else:
        x = _reset_before(beta * u + c, u, thr, reset)
    return x, x > thr


@njit(**_OPTIONS)
def leaky_chunk(current, u, beta, thr, reset, delay, membrane_out, ev_step, ev_neuron, counts):
    """`leaky_step` over one chunk: current (steps, neurons or 1), u the membranes (updated in place)."""
    steps, width = current.shape
    n = u.shape[0]
    recorded = membrane_out.shape[1]
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo, hi, m, base = _bounds(b, n, steps)
        ub = u[lo:hi]
        fired = np.zeros(BLOCK, np.uint8)
        count = 0
        for t in range(steps):
            if width == 1:
                c = current[t, 0]
                for j in range(m):
                    ub[j], fired[j] = _leaky(ub[j], c, beta, thr, reset, delay)
            else:
                row = current[t, lo:hi]
                for j in range(m):
                    ub[j], fired[j] = _leaky(ub[j], row[j], beta, thr, reset, delay)
            count = _collect(fired, m, lo, t, base, count, ev_step, ev_neuron)
            for j in range(min(m, recorded - lo)):
                membrane_out[t, lo + j] = ub[j]
        counts[b] = count


@njit(inline="always", cache=True)
def _synaptic(s, u, c, alpha, beta, thr, reset, delay):
    s = alpha * s + c
    v = beta * u + s
    if not delay:
        v, f = _reset_now(v, thr, reset)
        return s, v, f
    v = _reset_before(v, u, thr, reset)
    return s, v, v > thr


@njit(**_OPTIONS)
def synaptic_chunk(current, syn, u, alpha, beta, thr, reset, delay, membrane_out, synaptic_out, ev_step,
                   ev_neuron, counts):
    """`synaptic_step` over one chunk: syn and u updated in place."""
    steps, width = current.shape
    n = u.shape[0]
    recorded = membrane_out.shape[1]
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo, hi, m, base = _bounds(b, n, steps)
        sb, ub = syn[lo:hi], u[lo:hi]
        fired = np.zeros(BLOCK, np.uint8)
        count = 0
        for t in range(steps):
            if width == 1:
                c = current[t, 0]
                for j in range(m):
                    sb[j], ub[j], fired[j] = _synaptic(sb[j], ub[j], c, alpha, beta, thr, reset, delay)
            else:
                row = current[t, lo:hi]
                for j in range(m):
                    sb[j], ub[j], fired[j] = _synaptic(sb[j], ub[j], row[j], alpha, beta, thr, reset, delay)
            count = _collect(fired, m, lo, t, base, count, ev_step, ev_neuron)
            for j in range(min(m, recorded - lo)):
                membrane_out[t, lo + j] = ub[j]
                synaptic_out[t, lo + j] = sb[j]
        counts[b] = count


@njit(inline="always", cache=True)
def _lapicque(u, c, r, inv_tau, dt, keep, thr, reset):
    v = c * r * inv_tau * dt + keep * u
    v = _reset_before(v, u, thr, reset)
    return v, v > thr


@njit(**_OPTIONS)
def lapicque_chunk(current, u, r, inv_tau, dt, keep, thr, reset, membrane_out, ev_step, ev_neuron, counts):
    """`lapicque_step` over one chunk: V[t] = I[t]*R*(1/tau)*dt + (1 - dt/tau)*U[t-1], then the delayed reset."""
    steps, width = current.shape
    n = u.shape[0]
    recorded = membrane_out.shape[1]
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo, hi, m, base = _bounds(b, n, steps)
        ub = u[lo:hi]
        fired = np.zeros(BLOCK, np.uint8)
        count = 0
        for t in range(steps):
            if width == 1:
                c = current[t, 0]
                for j in range(m):
                    ub[j], fired[j] = _lapicque(ub[j], c, r, inv_tau, dt, keep, thr, reset)
            else:
                row = current[t, lo:hi]
                for j in range(m):
                    ub[j], fired[j] = _lapicque(ub[j], row[j], r, inv_tau, dt, keep, thr, reset)
            count = _collect(fired, m, lo, t, base, count, ev_step, ev_neuron)
            for j in range(min(m, recorded - lo)):
                membrane_out[t, lo + j] = ub[j]
        counts[b] = count


# --------------------------------------------------------------------------- events


class Events:
    """Per-block event buffers for chunks of up to `steps` steps of `n` neurons: reused chunk after chunk, so
    their pages are touched once (a fresh buffer per chunk cost more than the kernel itself). Their size is the
    worst case (every neuron firing every step); only the pages that spikes reach are ever backed by memory."""

    def __init__(self, steps: int, n: int):
        self.steps, self.n = steps, n
        self.step = np.empty(steps * n, np.int32)
        self.neuron = np.empty(steps * n, np.int32)
        self.counts = np.zeros((n + BLOCK - 1) // BLOCK, np.int64)

    def fits(self, steps: int, n: int) -> bool:
        return steps <= self.steps and n == self.n

    def gathered(self, steps: int) -> np.ndarray:
        """(step, neuron) rows of the chunk's spikes, in time order, neurons ascending within a step."""
        return _gather(self.step, self.neuron, self.counts, steps)


@njit(cache=True)
def _gather(ev_step, ev_neuron, counts, steps):
    """The blocks' events merged into time order by a counting sort on the step (blocks taken in neuron order,
    so neurons stay ascending within a step)."""
    offsets = np.zeros(steps + 1, np.int64)
    for b in range(counts.shape[0]):
        base = b * BLOCK * steps
        for i in range(counts[b]):
            offsets[ev_step[base + i] + 1] += 1
    for t in range(steps):
        offsets[t + 1] += offsets[t]
    out = np.empty((offsets[steps], 2), np.int32)
    for b in range(counts.shape[0]):
        base = b * BLOCK * steps
        for i in range(counts[b]):
            t = ev_step[base + i]
            k = offsets[t]
            out[k, 0] = t
            out[k, 1] = ev_neuron[base + i]
            offsets[t] = k + 1
    return out


def set_threads(threads: int) -> None:
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))


# --------------------------------------------------------------------------- the models' kernels, from torch


def run_chunk(model: str, currents, params, state, membrane_out, synaptic_out, events: Events):
    """One chunk of `model` through its kernel: currents (steps, neurons or 1) and the state (per neuron) as
    torch CPU tensors; membrane_out/synaptic_out (steps, recorded) filled in place. Returns the events, a
    (spikes, 2) int32 array of (step, neuron) rows, and the state after the chunk (new tensors: the ones given
    are not changed)."""
    import torch

    steps = currents.shape[0]
    dtype = state.membrane.dtype
    scalar = np.float32 if dtype == torch.float32 else np.float64
    as_np = lambda x: x.detach().contiguous().numpy()  # noqa: E731
    membrane = state.membrane.detach().clone()
    args = (_output(membrane_out, steps, dtype), events.step, events.neuron, events.counts)
    events.counts[:] = 0
    if model == "lif":
        drive = params.v_rest_mv + params.r_mohm * currents  # as lif_scan computes it
        exact = params.method == "exact"
        weight = scalar(params.decay if exact else params.dt_ms / params.tau_ms)
        small = abs(weight) < 0.5  # torch.lerp: start + w*(end - start), else end - (1 - w)*(end - start)
        coeff = weight if small else weight - scalar(1)
        # exact: lerp(drive, v, decay); euler: lerp(v, drive, dt/tau), whose (end - start) is -(v - drive)
        base_is_v = (not small) if exact else small
        coeff = coeff if exact else -coeff
        until = state.refractory_left.to(dtype).numpy().copy()
        stamps = np.arange(steps, dtype=scalar)
        lif_chunk(as_np(drive), membrane.numpy(), until, stamps, coeff, base_is_v, scalar(params.v_reset_mv),
                  scalar(params.v_thresh_mv), scalar(params.refractory_steps), *args)
        left = torch.from_numpy(until - steps).clamp_(min=0).to(state.refractory_left.dtype)
        new_state = type(state)(membrane, left)
    elif model == "leaky":
        leaky_chunk(as_np(currents), membrane.numpy(), scalar(params.beta), scalar(params.threshold),
                    RESET_CODES[params.reset], bool(params.reset_delay), *args)
        new_state = type(state)(membrane)
    elif model == "synaptic":
        syn = state.synaptic_current.detach().clone()
        synaptic_chunk(as_np(currents), syn.numpy(), membrane.numpy(), scalar(params.alpha), scalar(params.beta),
                       scalar(params.threshold), RESET_CODES[params.reset], bool(params.reset_delay), args[0],
                       _output(synaptic_out, steps, dtype), *args[1:])
        new_state = type(state)(syn, membrane)
    elif model == "lapicque":
        tau = params.R * params.C
        lapicque_chunk(as_np(currents), membrane.numpy(), scalar(params.R), scalar(1 / tau),
                       scalar(params.time_step), scalar(1 - params.time_step / tau), scalar(params.threshold),
                       RESET_CODES[params.reset], *args)
        new_state = type(state)(membrane)
    else:
        raise ValueError(f"no kernel for {model!r}")
    return events.gathered(steps), new_state


def _output(out, steps: int, dtype) -> np.ndarray:
    """A trace tensor to be filled in place, as a numpy view (an empty one where nothing is recorded)."""
    if out is None:
        return np.empty((steps, 0), np.float32 if str(dtype) == "torch.float32" else np.float64)
    if not out.is_contiguous():
        raise ValueError("kernel outputs must be contiguous")
    return out.detach().numpy()
