"""Feedforward LIF networks in multi-step form: tensors shaped (time, batch, features).

Linear -> LIF -> ... -> Linear -> LIF (or a mean-current readout). Each Linear runs once
over all time steps (and only once in total when the input is constant over time), and
over spike input it gathers instead of multiplying where that is faster (`snnrun.sparse`);
the only loop over time is the neuron recurrence, one autograd node with a hand-written
backward (`snnrun.recurrence`; a learned threshold goes through the step functions of
`snnrun.neurons`). Neuron state lives in local variables, so `state_dict` holds
parameters only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
from torch import nn

from snnrun import neurons
from snnrun.config import ConfigError, choice, field, integer, number, parse
from snnrun.recurrence import run_sequence
from snnrun.sparse import spike_linear
from snnrun.surrogate import KINDS as SURROGATES
from snnrun.surrogate import Surrogate

READOUTS = ("rate", "membrane", "mean_current")


@dataclass(frozen=True)
class NeuronSpec:
    """The neuron of a layer (`model.neuron`, with per-layer overrides in `model.hidden` and `model.output`)."""

    model: str = choice("leaky", ["leaky", "synaptic"], "neuron model of the layer")
    beta: float | None = number(None, "membrane decay per step (default 0.9; or tau and dt)", minimum=0, maximum=1,
                                nullable=True)
    tau: float | None = number(None, "membrane time constant; beta = exp(-dt/tau)", minimum=0,
                               exclusive_minimum=True, nullable=True)
    dt: float | None = number(None, "step length, same unit as tau", minimum=0, exclusive_minimum=True,
                              nullable=True)
    alpha: float = number(0.8, "synaptic current decay per step (synaptic model)", minimum=0, maximum=1)
    threshold: float = number(1.0, "firing threshold", minimum=0, exclusive_minimum=True)
    reset: str = choice("subtract", neurons.RESETS, "reset mechanism after a spike")
    reset_delay: bool = field(True, "bool", "true: a spike resets the membrane at the next step (snnTorch); "
                              "false: at once, in the step that fires (Norse, SpikingJelly)")
    learn_beta: bool = field(False, "bool", "learn one decay per neuron")
    learn_threshold: bool = field(False, "bool", "learn one threshold per neuron")

    def validate(self, path, source):
        if self.beta is not None and (self.tau is not None or self.dt is not None):
            raise ConfigError("give beta, or tau and dt, not both", source=source, key=f"{path}.beta",
                              related=(f"{path}.tau", f"{path}.dt"))
        if (self.tau is None) != (self.dt is None):
            missing, given = ("dt", "tau") if self.dt is None else ("tau", "dt")
            raise ConfigError("tau and dt go together (beta = exp(-dt/tau))", source=source,
                              key=f"{path}.{missing}", related=(f"{path}.{given}",))

    @property
    def decay(self) -> float:
        if self.beta is not None:
            return self.beta
        if self.tau is not None:
            return math.exp(-self.dt / self.tau)
        return 0.9


@dataclass(frozen=True)
class SurrogateSpec:
    kind: str = choice("fast_sigmoid", SURROGATES, "surrogate gradient of the spike")
    slope: float = number(25.0, "steepness of the surrogate", minimum=0, exclusive_minimum=True)


@dataclass(frozen=True)
class LayerSpec:
    """One hidden layer: its size, dropout on its spikes, and neuron overrides."""

    size: int = integer(128, "neurons in the layer", minimum=1)
    dropout: float | None = number(None, "dropout on the layer's spikes (null: model.dropout)", minimum=0,
                                   maximum=0.95, nullable=True)
    neuron: NeuronSpec | None = field(None, "any", "neuron overrides of this layer", nullable=True)


@dataclass(frozen=True)
class ModelConfig:
    input_size: int = integer(784, "input features (28 x 28 pixels)", minimum=1)
    hidden: list = field([1000], "list", "hidden layers: sizes, or dicts {size, dropout, and neuron keys}",
                         item_kind="integer")
    outputs: int = integer(10, "output neurons (classes)", minimum=2)
    neuron: NeuronSpec = None  # type: ignore[assignment]
    output: dict | None = field(None, "any", "neuron overrides for the output layer (e.g. {reset: none})",
                                nullable=True)
    surrogate: SurrogateSpec = None  # type: ignore[assignment]
    readout: str = choice("rate", READOUTS, "rate: output spike counts; membrane: output membrane over time; "
                          "mean_current: mean over time of the last Linear (no output neurons)")
    membrane_reduce: str = choice("sum", ["sum", "max"], "how the membrane readout reduces over time")
    dropout: float = number(0.0, "dropout on hidden spikes", minimum=0, maximum=0.95)

    def dropouts(self) -> list[float]:
        """The dropout of each hidden layer (its own, or model.dropout)."""
        return [self.dropout if layer.dropout is None else layer.dropout for layer in self.hidden]


def parse_model(data, key: str, source: str | None) -> ModelConfig:
    """The model section: hidden layers may be sizes or dicts, each with neuron overrides."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping", source=source, key=key)
    base = parse(NeuronSpec, data.get("neuron"), path=f"{key}.neuron", source=source)
    surrogate = parse(SurrogateSpec, data.get("surrogate"), path=f"{key}.surrogate", source=source)
    hidden_raw = data.get("hidden", [1000])
    if not isinstance(hidden_raw, list):
        raise ConfigError(f"{hidden_raw!r} is not allowed; expected a list of layer sizes or layer dicts",
                          source=source, key=f"{key}.hidden")
    layers = []
    for i, item in enumerate(hidden_raw):
        path = f"{key}.hidden[{i}]"
        if isinstance(item, dict):
            own = {k: v for k, v in item.items() if k in ("size", "dropout")}
            spec = parse(LayerSpec, own, path=path, source=source)
            overrides = {k: v for k, v in item.items() if k not in ("size", "dropout")}
        else:
            spec = parse(LayerSpec, {"size": item}, path=path, source=source)
            overrides = {}
        neuron = _override(base, overrides, path, source)
        layers.append(replace(spec, neuron=neuron))
    output = _override(base, data.get("output") or {}, f"{key}.output", source)
    rest = {k: v for k, v in data.items() if k not in ("neuron", "surrogate", "hidden", "output")}
    cfg = parse(ModelConfig, rest, path=key, source=source,
                sections={"neuron": lambda *_: base, "surrogate": lambda *_: surrogate})
    return replace(cfg, hidden=layers, output=output)


def _override(base: NeuronSpec, overrides, path: str, source) -> NeuronSpec:
    if not isinstance(overrides, dict):
        raise ConfigError("expected a mapping of neuron keys", source=source, key=path)
    merged = {f.name: getattr(base, f.name) for f in fields(NeuronSpec)}
    if "beta" in overrides or "tau" in overrides:  # a layer's own decay replaces the shared one
        merged.update(beta=None, tau=None, dt=None)
    merged.update(overrides)
    return parse(NeuronSpec, merged, path=path, source=source)


def model_to_dict(cfg: ModelConfig) -> dict:
    """The model section as it would be written in YAML (hidden layers as dicts)."""
    from snnrun.config import to_dict

    out = to_dict(cfg)
    out["hidden"] = [{"size": layer.size, "dropout": layer.dropout, **to_dict(layer.neuron)} for layer in cfg.hidden]
    return out


# --------------------------------------------------------------------------- modules


class LIFLayer(nn.Module):
    """A population of leaky or synaptic neurons run over a whole (time, batch, features) current."""

    def __init__(self, size: int, spec: NeuronSpec, spike_fn: Surrogate):
        super().__init__()
        self.size = size
        self.model, self.reset, self.reset_delay, self.spike_fn = spec.model, spec.reset, spec.reset_delay, spike_fn
        beta = torch.full((size,), spec.decay) if spec.learn_beta else torch.tensor(spec.decay)
        threshold = torch.full((size,), spec.threshold) if spec.learn_threshold else torch.tensor(spec.threshold)
        alpha = torch.tensor(spec.alpha)
        for name, value, learn in (("beta", beta, spec.learn_beta), ("threshold", threshold, spec.learn_threshold)):
            if learn:
                setattr(self, name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)
        self.register_buffer("alpha", alpha)

    def forward(self, current: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(spikes, membranes), both (time, batch, features)."""
        beta = self.beta.clamp(0, 1)
        if not isinstance(self.threshold, nn.Parameter):  # the fast path: one node, hand-written backward
            return run_sequence(current, self.model, beta, float(self.alpha), float(self.threshold), self.reset,
                                self.spike_fn.kind, self.spike_fn.slope, self.reset_delay)
        zeros = torch.zeros_like(current[0])  # a learned threshold: autograd through the step functions
        if self.model == "synaptic":
            params = neurons.SynapticParameters(self.alpha, beta, self.threshold, self.reset, self.reset_delay)
            step, state = neurons.synaptic_step, neurons.SynapticState(zeros, zeros)
        else:
            params = neurons.LeakyParameters(beta, self.threshold, self.reset, self.reset_delay)
            step, state = neurons.leaky_step, neurons.LeakyState(zeros)
        spikes, membranes = [], []
        for t in range(current.shape[0]):
            s, state = step(current[t], state, params, self.spike_fn)
            spikes.append(s)
            membranes.append(state.membrane)
        return torch.stack(spikes), torch.stack(membranes)


def spike_dropout(spikes: torch.Tensor, p: float) -> torch.Tensor:
    """Drop each neuron of each sample for all time steps at once (as SpikingJelly's multi-step Dropout):
    a silenced neuron stays silent for the whole image, and one draw per neuron is 8-25x fewer than per step."""
    keep = (torch.rand(spikes.shape[1:], device=spikes.device) >= p).to(spikes.dtype)
    return spikes * (keep / (1 - p))


@dataclass
class NetworkOutput:
    logits: torch.Tensor  # (batch, outputs): what the readout predicts from
    spikes: torch.Tensor | None  # output spikes (time, batch, outputs); None for mean_current
    membrane: torch.Tensor | None  # output membrane (time, batch, outputs)
    spike_counts: torch.Tensor  # total spikes per layer in this batch (hidden..., output), no gradient
    recorded: list[torch.Tensor] | None = None  # spikes of every layer (input first) when record=True
    recorded_membranes: list[torch.Tensor] | None = None  # membranes of every neuron layer when record=True


class Network(nn.Module):
    def __init__(self, cfg: ModelConfig, time_steps: int):
        super().__init__()
        self.cfg, self.time_steps = cfg, time_steps
        spike_fn = Surrogate(cfg.surrogate.kind, cfg.surrogate.slope)
        sizes = [cfg.input_size] + [layer.size for layer in cfg.hidden]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.neurons = nn.ModuleList(LIFLayer(layer.size, layer.neuron, spike_fn) for layer in cfg.hidden)
        self.dropouts = cfg.dropouts()
        self.readout = nn.Linear(sizes[-1], cfg.outputs)
        self.output_neurons = None if cfg.readout == "mean_current" else LIFLayer(cfg.outputs, cfg.output, spike_fn)

    @property
    def layer_sizes(self) -> list[int]:
        return [layer.size for layer in self.cfg.hidden] + [self.cfg.outputs]

    def forward(self, x: torch.Tensor, record: bool = False) -> NetworkOutput:
        """x: (batch, features) constant input, or (time, batch, features) spikes."""
        steps = self.time_steps
        recorded = [x.expand(steps, *x.shape) if x.dim() == 2 else x] if record else None
        membranes = [] if record else None
        counts = []
        for linear, lif, p in zip(self.linears, self.neurons, self.dropouts, strict=True):
            if x.dim() == 2:  # constant over time: one matmul, then a view repeated over the steps
                current = linear(x).expand(steps, -1, -1)
            else:
                current = spike_linear(x, linear.weight, linear.bias)  # all steps at once, over the spikes
            x, membrane = lif(current)
            counts.append(x.detach().sum())
            if record:
                recorded.append(x.detach())
                membranes.append(membrane.detach())
            if p > 0 and self.training:
                x = spike_dropout(x, p)
        if self.output_neurons is None:  # the mean over time of a linear map is the map of the mean: one matmul
            logits = self.readout(x.mean(dim=0) if x.dim() == 3 else x)
            counts.append(torch.zeros((), device=logits.device))
            return NetworkOutput(logits, None, None, torch.stack(counts), recorded, membranes)
        if x.dim() == 3:
            current = spike_linear(x, self.readout.weight, self.readout.bias)
        else:
            current = self.readout(x).expand(steps, -1, -1)
        spikes, membrane = self.output_neurons(current)
        counts.append(spikes.detach().sum())
        if record:
            recorded.append(spikes.detach())
            membranes.append(membrane.detach())
        if self.cfg.readout == "rate":
            logits = spikes.sum(dim=0)
        elif self.cfg.membrane_reduce == "max":
            logits = membrane.max(dim=0).values
        else:
            logits = membrane.sum(dim=0)
        return NetworkOutput(logits, spikes, membrane, torch.stack(counts), recorded, membranes)
