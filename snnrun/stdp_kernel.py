"""The Diehl & Cook (2015) network as one compiled loop (numba): every step of every digit, learning included.

One presentation (`present`) runs the step loop below for `present_steps` steps of input and `rest_steps` of
rest, for all neurons, in the order of the original code's time step:

    1. state update: each membrane by forward Euler (snnrun.neurons.conductance; split into sub-steps in the rare
       steps where one would overshoot, see `_membrane`), conductances, theta and the post-synaptic traces decay;
    2. thresholds: excitatory v > v_thresh + theta - offset, inhibitory v > v_thresh, not while refractory;
    3. synapses: each excitatory spike (learning) potentiates its input weights by nu_post * pre * post2 (post2
       before this spike); each input spike arrives at each excitatory neuron after that synapse's delay (0 to
       10 ms in the original), adds the weight to its ge, sets the synapse's pre trace to 1 and (learning)
       depresses the weight by nu_pre * post1; each excitatory spike sets its traces post1 = post2 = 1 and drives
       its inhibitory partner (ge += w_ei); each inhibitory spike adds w_ie to the gi of every other excitatory
       neuron. Weights are clipped to [0, wmax] after each update;
    4. resets: v = v_reset, theta += theta_plus (excitatory, learning).

The traces are set to 1 at a spike (at an arrival, for pre) and decay exactly (exp(-dt/tau) a step), as Brian
integrates them. When an input arrives at a neuron in the step that neuron fires, neither sees the other's new
trace: the potentiation uses the pre trace of the earlier arrivals and the depression post1 before the spike, as
in the original, whose STDP reads the traces recorded at the end of the previous step. (Brian2's Synapses, which
run the pre pathway first, would let the potentiation see the arrival; tests/test_stdp.py orders its Brian2 model
as the original.) Input spikes still in flight when a presentation and its rest end are dropped (none are unless
rest_ms is shorter than the longest delay).

The per-step work is a few passes over the 2 x N neurons plus one weight row per input spike: about 4 ms a digit
for 400 neurons on one core. Compiled on first use and cached on disk (see snnrun.neurons.kernels for where).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from snnrun.neurons.conductance import euler_membrane

_OPTIONS = {"cache": True, "nogil": True, "error_model": "numpy", "boundscheck": False}
_euler = njit(inline="always", **_OPTIONS)(euler_membrane)
NEVER = -(1 << 60)  # the step of the last spike of a neuron or input that has not fired
TINY = 1e-30  # a decaying conductance or trace below this is 0: it moves no membrane or weight by a float64 ulp,
# and left to decay it becomes a subnormal number, whose arithmetic is ~100x slower (training slowed 2x without it)


@njit(inline="always", **_OPTIONS)
def _membrane(v, ge, gi, v_rest, e_exc, e_inh, dt_over_tau):
    """The membrane's forward-Euler step (`snnrun.neurons.conductance.euler_membrane`), split into n equal
    sub-steps (conductances held) when dt/tau * (1 + ge + gi) > 1, n = ceil of that: there one Euler step would
    overshoot the membrane's target potential, and from 2 on it diverges (a 400-neuron network ran to +30,000 mV
    when some 24 inhibitory neurons fired in one step). Where one step does not overshoot it is the plain step."""
    rate = dt_over_tau * (1.0 + ge + gi)
    if rate <= 1.0:
        return _euler(v, ge, gi, v_rest, e_exc, e_inh, dt_over_tau)
    n = int(np.ceil(rate))
    for _ in range(n):
        v = _euler(v, ge, gi, v_rest, e_exc, e_inh, dt_over_tau / n)
    return v


@njit(inline="always", **_OPTIONS)
def _decay(x, keep):
    """x * keep, flushed to 0 below TINY (x >= 0: conductances and traces)."""
    y = x * keep
    return y if y > TINY else 0.0


class Constants(NamedTuple):
    """Everything fixed during a run, in ms and mV (built from the config by `snnrun.stdp.constants`)."""

    dt: float
    present_steps: int
    rest_steps: int
    e_rest: float
    e_reset: float
    e_thresh: float
    e_dt_tau: float
    e_exc: float
    e_inh: float
    e_ge_keep: float
    e_gi_keep: float
    e_refractory: int
    e_clamp: bool
    theta_plus: float
    theta_keep: float
    offset: float
    i_rest: float
    i_reset: float
    i_thresh: float
    i_dt_tau: float
    i_exc: float
    i_inh: float
    i_ge_keep: float
    i_gi_keep: float
    i_refractory: int
    i_clamp: bool
    w_ei: float
    w_ie: float
    nu_pre: float
    nu_post: float
    tau_pre: float
    post1_keep: float
    post2_keep: float
    wmax: float
    weight_total: float
    max_rate_hz: float
    rate_step_hz: float
    min_spikes: int
    max_presentations: int


class State(NamedTuple):
    """The network: the learned weights and thresholds, the input delays, and the dynamic state that runs on from
    digit to digit."""

    w: np.ndarray  # (inputs, excitatory) float64: input -> excitatory weights
    theta: np.ndarray  # (excitatory,) mV
    v_e: np.ndarray
    ge_e: np.ndarray
    gi_e: np.ndarray
    last_e: np.ndarray  # int64: step of the last spike
    v_i: np.ndarray
    ge_i: np.ndarray
    gi_i: np.ndarray
    last_i: np.ndarray
    post1: np.ndarray  # post-synaptic traces of the excitatory neurons
    post2: np.ndarray
    last_arrival: np.ndarray  # int64 (inputs, excitatory): step each synapse's last input spike arrived (its
    # pre trace is exp(-age*dt/tau_pre))
    delay_order: np.ndarray  # int64 (inputs, excitatory): each input's targets in order of their delay
    delay_start: np.ndarray  # int64 (inputs, max delay + 2): where each delay's targets start in delay_order
    clock: np.ndarray  # int64 (1,): steps run so far


@njit(inline="always", **_OPTIONS)
def _needs_split(st, c):
    """Whether any membrane needs the split step now (`_membrane`)."""
    worst = 0.0
    for j in range(st.v_e.shape[0]):
        x = c.e_dt_tau * (1.0 + st.ge_e[j] + st.gi_e[j])
        y = c.i_dt_tau * (1.0 + st.ge_i[j] + st.gi_i[j])
        worst = x if x > worst else worst
        worst = y if y > worst else worst
    return worst > 1.0


@njit(inline="always", **_OPTIONS)
def _population(v, ge, gi, last, g, split, v_rest, e_exc, e_inh, dt_tau, clamp, refractory, ge_keep, gi_keep):
    """Step 1 for one neuron of either population: (membrane, ge, gi) after it (the membrane held while refractory
    if clamp). Values in, values out: the loop over neurons stays vectorised."""
    if split:
        new = _membrane(v, ge, gi, v_rest, e_exc, e_inh, dt_tau)
    else:
        new = _euler(v, ge, gi, v_rest, e_exc, e_inh, dt_tau)
    if clamp and g - last < refractory:
        new = v
    return new, _decay(ge, ge_keep), _decay(gi, gi_keep)


@njit(inline="always", **_OPTIONS)
def _update(st, c, g, split):
    """Step 1 for every neuron: membranes, conductances, post traces (theta apart)."""
    for j in range(st.v_e.shape[0]):
        st.v_e[j], st.ge_e[j], st.gi_e[j] = _population(
            st.v_e[j], st.ge_e[j], st.gi_e[j], st.last_e[j], g, split, c.e_rest, c.e_exc, c.e_inh, c.e_dt_tau,
            c.e_clamp, c.e_refractory, c.e_ge_keep, c.e_gi_keep)
        st.v_i[j], st.ge_i[j], st.gi_i[j] = _population(
            st.v_i[j], st.ge_i[j], st.gi_i[j], st.last_i[j], g, split, c.i_rest, c.i_exc, c.i_inh, c.i_dt_tau,
            c.i_clamp, c.i_refractory, c.i_ge_keep, c.i_gi_keep)
        st.post1[j] = _decay(st.post1[j], c.post1_keep)
        st.post2[j] = _decay(st.post2[j], c.post2_keep)


@njit(**_OPTIONS)
def present(st, c, ev_step, ev_index, n_events, learn, counts, record_e, record_i):
    """One presentation and its rest. Input spikes: events (step, input) in step order, `n_events` of them, each
    arriving at excitatory neuron j after its synapse's delay (`delay_order`, `delay_start`). Adds each excitatory
    neuron's spikes during the presentation (not the rest) to `counts`; record_e[n, j] and record_i[n, j] = 1 for
    the spikes of step n, for the steps they have rows for (none: shape (0, 0))."""
    n_e = st.v_e.shape[0]
    n_in = st.w.shape[0]
    max_delay = st.delay_start.shape[1] - 2
    fired_e = np.empty(n_e, np.int64)
    fired_i = np.empty(n_e, np.int64)
    g0 = st.clock[0]
    lo = 0  # events from lo to hi may still be in flight
    hi = 0
    for n in range(c.present_steps + c.rest_steps):
        g = g0 + n
        # 1. state update (every derivative from the state at the start of the step); the split membrane step
        # only in the rare steps that need it, so the usual loop stays a vectorised one
        if _needs_split(st, c):
            _update(st, c, g, True)
        else:
            _update(st, c, g, False)
        if learn:
            for j in range(n_e):
                st.theta[j] *= c.theta_keep
        # 2. thresholds
        ne = 0
        ni = 0
        for j in range(n_e):
            if st.v_e[j] > st.theta[j] - c.offset + c.e_thresh and g - st.last_e[j] >= c.e_refractory:
                fired_e[ne] = j
                ne += 1
            if st.v_i[j] > c.i_thresh and g - st.last_i[j] >= c.i_refractory:
                fired_i[ni] = j
                ni += 1
        # 3. synapses: potentiation by the pre traces of the arrivals before this step, then this step's
        # arrivals (depression by post1 as it was before this step's spikes), then the post traces set to 1
        if learn:
            for k in range(ne):
                j = fired_e[k]
                gain = c.nu_post * st.post2[j]
                for i in range(n_in):
                    pre = np.exp(-(g - st.last_arrival[i, j]) * c.dt / c.tau_pre)
                    st.w[i, j] = min(max(st.w[i, j] + gain * pre, 0.0), c.wmax)
        # input spikes arriving now: at each target, the weight into ge, the trace, depression by post1
        while hi < n_events and ev_step[hi] <= n:
            hi += 1
        while lo < hi and ev_step[lo] < n - max_delay:
            lo += 1
        for e in range(lo, hi):
            i = ev_index[e]
            age = n - ev_step[e]
            row = st.w[i]
            arrived = st.last_arrival[i]
            order = st.delay_order[i]
            for a in range(st.delay_start[i, age], st.delay_start[i, age + 1]):
                j = order[a]
                st.ge_e[j] += row[j]
                arrived[j] = g
                if learn:
                    row[j] = min(max(row[j] - c.nu_pre * st.post1[j], 0.0), c.wmax)
        for k in range(ne):
            j = fired_e[k]
            st.post1[j] = 1.0
            st.post2[j] = 1.0
            st.ge_i[j] += c.w_ei
        for k in range(ni):
            partner = fired_i[k]
            for j in range(n_e):
                if j != partner:
                    st.gi_e[j] += c.w_ie
        # 4. resets
        for k in range(ne):
            j = fired_e[k]
            st.v_e[j] = c.e_reset
            st.last_e[j] = g
            if learn:
                st.theta[j] += c.theta_plus
            if n < c.present_steps:
                counts[j] += 1
            if n < record_e.shape[0]:
                record_e[n, j] = 1
        for k in range(ni):
            j = fired_i[k]
            st.v_i[j] = c.i_reset
            st.last_i[j] = g
            if n < record_i.shape[0]:
                record_i[n, j] = 1
    st.clock[0] = g0 + c.present_steps + c.rest_steps


@njit(**_OPTIONS)
def normalize(w, total):
    """Scale each excitatory neuron's input weights (a column) to sum to `total` (a silent column stays 0)."""
    n_in, n_e = w.shape
    sums = np.zeros(n_e)
    for i in range(n_in):
        for j in range(n_e):
            sums[j] += w[i, j]
    for j in range(n_e):
        sums[j] = total / sums[j] if sums[j] > 0 else 0.0
    for i in range(n_in):
        for j in range(n_e):
            w[i, j] *= sums[j]


@njit(**_OPTIONS)
def poisson_events(pixels, rate_hz, dt, steps, ev_step, ev_index):
    """Input spikes of one presentation in step order (by input within a step): input i fires at each step with
    probability p_i = pixels[i]/255 * rate_hz * dt (dt in ms), as Brian's PoissonGroup draws them (rand < p_i
    every step). Drawn as the gaps between spikes (geometric with parameter p_i, the same process): a few
    thousand draws a digit instead of one per input and step. Returns their number."""
    active = np.nonzero(pixels)[0]
    scale = rate_hz / 255.0 * dt / 1000.0
    bucket = np.zeros(steps + 1, np.int64)
    m = 0
    for a in range(active.shape[0]):  # unsorted, into the tail of the buffers
        p = min(pixels[active[a]] * scale, 1.0)
        t = np.random.geometric(p) - 1
        while t < steps:
            ev_step[ev_step.shape[0] - 1 - m] = t
            ev_index[ev_index.shape[0] - 1 - m] = active[a]
            bucket[t + 1] += 1
            m += 1
            t += np.random.geometric(p)
    for t in range(steps):
        bucket[t + 1] += bucket[t]
    top = ev_step.shape[0] - 1
    for k in range(m):  # a stable counting sort on the step: by input within a step, as drawn
        t = ev_step[top - k]
        i = ev_index[top - k]
        ev_step[bucket[t]] = t
        ev_index[bucket[t]] = i
        bucket[t] += 1
    return m


@njit(**_OPTIONS)
def present_recorded(st, c, image, seed, counts, record_e, record_i, ev_step, ev_index):
    """One presentation of one image by the frozen network, its spikes recorded (record_e, record_i: steps x
    neurons); the input spikes are left in ev_step, ev_index. Returns their number."""
    np.random.seed(seed)
    m = poisson_events(image, c.max_rate_hz, c.dt, c.present_steps, ev_step, ev_index)
    present(st, c, ev_step, ev_index, m, False, counts, record_e, record_i)
    return m


@njit(**_OPTIONS)
def run_images(st, c, images, learn, seed, counts, presentations):
    """Present each image (a row of `images`, uint8 pixels) in turn, again at a higher rate while it draws fewer
    than c.min_spikes excitatory spikes (at most c.max_presentations times). counts[k]: each excitatory neuron's
    spikes in image k's last presentation; presentations[k]: how many it took. Seeded: the same state, images
    and seed give the same result."""
    np.random.seed(seed)
    n_in = st.w.shape[0]
    ev_step = np.empty(2 * c.present_steps * n_in, np.int64)  # at most one spike per input and step, and as
    ev_index = np.empty(2 * c.present_steps * n_in, np.int64)  # much room again to draw them in (poisson_events)
    no_record = np.zeros((0, 0), np.uint8)
    for k in range(images.shape[0]):
        tries = 0
        while True:
            if learn:
                normalize(st.w, c.weight_total)
            m = poisson_events(images[k], c.max_rate_hz + tries * c.rate_step_hz, c.dt, c.present_steps, ev_step,
                               ev_index)
            counts[k, :] = 0
            present(st, c, ev_step, ev_index, m, learn, counts[k], no_record, no_record)
            tries += 1
            if counts[k].sum() >= c.min_spikes or tries >= c.max_presentations:
                break
        presentations[k] = tries
