"""The current-based second-order neuron, snnTorch's `Synaptic`: its parameters, state, step and fast path.

    I_syn[t] = alpha*I_syn[t-1] + I[t]
    V[t] = beta*U[t-1] + I_syn[t]
    U[t] = V[t] - S[t-1]*threshold (subtract) | V[t]*(1 - S[t-1]) (zero) | V[t] (none)
    S[t] = H(U[t] - threshold)

The reset is delayed as in `leaky` (or immediate with `reset_delay: false`). Fast path: `sequence.run_sequence`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

from snnrun.config import number
from snnrun.neurons.common import Scalar, SpikeFn, Tensor, heaviside, model_key, reset_now, values
from snnrun.neurons.leaky import LeakyConfig, LeakyParameters

DEFAULT_ALPHA = 0.8


@dataclass(frozen=True)
class SynapticConfig(LeakyConfig):
    """The `neuron` section of a synaptic neuron, in `simulate` and `train` alike: leaky's keys and alpha."""

    model: str = model_key("synaptic")
    alpha: float | list = number(DEFAULT_ALPHA, "synaptic current decay per step", minimum=0, maximum=1,
                                 per_neuron=True)

    def parameters(self, device=None, dtype=None) -> SynapticParameters:
        return SynapticParameters(values(self.decay, device, dtype), values(self.threshold, device, dtype),
                                  self.reset, self.reset_delay, alpha=values(self.alpha, device, dtype))


class SynapticState(NamedTuple):
    synaptic_current: Tensor
    membrane: Tensor


@dataclass(frozen=True)
class SynapticParameters(LeakyParameters):
    """leaky's values and alpha (given by name)."""

    alpha: Scalar = dataclasses.field(kw_only=True)


def synaptic_step(current: Tensor, state: SynapticState, p: SynapticParameters,
                  spike_fn: SpikeFn = heaviside) -> tuple[Tensor, SynapticState]:
    """I_syn[t] = alpha*I_syn[t-1] + I[t]
       V[t] = beta*U[t-1] + I_syn[t]
       U[t] = V[t] - S[t-1]*threshold (subtract) | V[t]*(1 - S[t-1]) (zero) | V[t] (none)
    """
    u = state.membrane
    syn = p.alpha * state.synaptic_current + current
    v = p.beta * u + syn
    if not p.reset_delay:
        spikes = spike_fn(v - p.threshold)
        return spikes, SynapticState(syn, reset_now(v, spikes, p.threshold, p.reset))
    if p.reset == "subtract":
        v = v - heaviside(u - p.threshold) * p.threshold
    elif p.reset == "zero":
        v = v - heaviside(u - p.threshold) * v
    return spike_fn(v - p.threshold), SynapticState(syn, v)


def initial_state(membrane: Tensor) -> SynapticState:
    return SynapticState(membrane.new_zeros(membrane.shape), membrane)
