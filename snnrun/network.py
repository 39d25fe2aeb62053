"""Feedforward LIF networks in multi-step form: tensors shaped (time, batch, features).

Linear -> LIF -> ... -> Linear -> LIF (or a mean-current readout), built from a `schema.ModelConfig`. Each
Linear runs once over all time steps (and only once in total when the input is constant over time), and
over spike input it gathers instead of multiplying where that is faster (`snnrun.sparse`); the only loop
over time is the neurons' own, `neurons.run` (a whole-sequence autograd node, or the step function where a
threshold is learned). Neuron state lives in local variables, so `state_dict` holds parameters only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from snnrun import neurons
from snnrun.schema import ConvSpec, ModelConfig, TrainedNeuron
from snnrun.sparse import spike_linear
from snnrun.surrogate import Surrogate

# --------------------------------------------------------------------------- modules


class LIFLayer(nn.Module):
    """A population of leaky or synaptic neurons run over a whole (time, batch, features) current."""

    def __init__(self, size: int | tuple[int, ...], spec: TrainedNeuron, spike_fn: Surrogate):
        """size: neurons, or the shape a learned beta or threshold takes (one per channel: (channels, 1, 1))."""
        super().__init__()
        self.size, self.model, self.spike_fn = size, spec.model, spike_fn
        if spec.model == "lif":  # physical units: fixed constants, nothing learned but the weights before them
            self.lif = spec.parameters()
            return
        self.reset, self.reset_delay = spec.reset, spec.reset_delay
        for name, value, learn in (("beta", spec.decay, spec.learn_beta),
                                   ("threshold", spec.threshold, spec.learn_threshold)):
            if learn:
                shape = size if isinstance(size, tuple) else (size,)
                setattr(self, name, nn.Parameter(torch.full(shape, float(value))))
            else:
                self.register_buffer(name, torch.tensor(float(value)))
        if spec.model == "synaptic":
            self.register_buffer("alpha", torch.tensor(float(spec.alpha)))

    def parameters_now(self):
        """The neurons' parameters for `neurons.run` (beta clamped to [0, 1] as it learns)."""
        if self.model == "lif":
            return self.lif
        beta = self.beta.clamp(0, 1)
        if self.model == "synaptic":
            return neurons.SynapticParameters(beta, self.threshold, self.reset, self.reset_delay, alpha=self.alpha)
        return neurons.LeakyParameters(beta, self.threshold, self.reset, self.reset_delay)

    def forward(self, current: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(spikes, membranes), both (time, batch, features)."""
        trace = neurons.run(self.model, self._in_units(current), self.parameters_now(), spike_fn=self.spike_fn)
        return trace.spikes, trace.membranes

    def span(self, current: torch.Tensor, state: tuple | None) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """(spikes, membranes, state after) of a span of steps from `state` (None: rest), through the step
        function: the form whose final state carries a gradient into the next span (`Network.time_chunk`)."""
        trace = neurons.run(self.model, self._in_units(current), self.parameters_now(), state, self.spike_fn,
                            path="step")
        return trace.spikes, trace.membranes, trace.state

    def _in_units(self, current: torch.Tensor) -> torch.Tensor:
        """The synapses' output as the neurons' current: for lif, in `LIFParameters.unit_current` (a weight w from
        one spike raises the membrane by w x |v_thresh - v_rest|, as a weight w raises a unitless neuron's membrane
        by w x its threshold), so the same initial weights and learning rates serve physical and unitless layers."""
        return current * self.lif.unit_current if self.model == "lif" else current

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self.model == "leaky":  # checkpoints written before the neuron home kept an unused alpha
            state_dict.pop(prefix + "alpha", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def spike_dropout(spikes: torch.Tensor, p: float) -> torch.Tensor:
    """Drop each neuron of each sample for all time steps at once (as SpikingJelly's multi-step Dropout):
    a silenced neuron stays silent for the whole image, and one draw per neuron is 8-25x fewer than per step."""
    return spikes * spike_dropout_mask(spikes.shape[1:], p, spikes.device, spikes.dtype)


def spike_dropout_mask(shape, p: float, device, dtype=torch.float32) -> torch.Tensor:
    """The factor of `spike_dropout`: 0 for a dropped neuron of a sample, 1/(1 - p) for a kept one."""
    keep = (torch.rand(shape, device=device) >= p).to(dtype)
    return keep / (1 - p)


@dataclass
class NetworkOutput:
    logits: torch.Tensor  # (batch, outputs): what the readout predicts from
    spikes: torch.Tensor | None  # output spikes (time, batch, outputs); None for mean_current
    membrane: torch.Tensor | None  # output membrane (time, batch, outputs)
    spike_counts: torch.Tensor  # total spikes per layer in this batch (hidden..., output), no gradient
    recorded: list[torch.Tensor] | None = None  # spikes of every layer (input first) when record=True
    recorded_membranes: list[torch.Tensor] | None = None  # membranes of every neuron layer when record=True


class Network(nn.Module):
    """The hidden layers (linear, or convolutions first), each feeding its neurons, then the readout."""

    def __init__(self, cfg: ModelConfig, time_steps: int, time_chunk: int | None = None):
        """time_chunk: in training, run the steps in chunks of this many and recompute each chunk's forward in the
        backward pass (gradient checkpointing), so the tensors kept for the backward cover one chunk, not all
        steps; the neurons' state is carried from chunk to chunk with its gradient."""
        super().__init__()
        self.cfg, self.time_steps, self.time_chunk = cfg, time_steps, time_chunk
        spike_fn = Surrogate(cfg.surrogate.kind, cfg.surrogate.slope)
        self.in_shapes = [cfg.in_shape, *cfg.shapes[:-1]] if cfg.hidden else []
        # (named `linears` for the checkpoints' keys; a convolutional layer's synapses are an nn.Conv2d)
        self.linears = nn.ModuleList(_synapses(layer, shape) for layer, shape in zip(cfg.hidden, self.in_shapes,
                                                                                      strict=True))
        self.neurons = nn.ModuleList(
            LIFLayer((layer.conv, 1, 1) if isinstance(layer, ConvSpec) else layer.size, layer.neuron, spike_fn)
            for layer in cfg.hidden)
        self.dropouts = cfg.dropouts()
        last = math.prod(cfg.shapes[-1]) if cfg.hidden else cfg.input_size
        self.readout = nn.Linear(last, cfg.outputs)
        self.output_neurons = None if cfg.readout == "mean_current" else LIFLayer(cfg.outputs, cfg.output, spike_fn)

    @property
    def layer_names(self) -> list[str]:
        return self.cfg.layer_names

    @property
    def layer_sizes(self) -> list[int]:
        return self.cfg.layer_sizes

    def forward(self, x: torch.Tensor, record: bool = False) -> NetworkOutput:
        """x: (batch, features) constant input, or (time, batch, features) spikes."""
        steps = self.time_steps
        if self.time_chunk and self.time_chunk < steps and self.training and torch.is_grad_enabled() and not record:
            return self._forward_in_chunks(x)
        over_time = x.dim() == 3  # spikes (time first); else a constant input, each layer before the first
        recorded = [x.expand(steps, *x.shape) if not over_time else x] if record else None  # neurons runs once
        membranes = [] if record else None
        counts = []
        for synapses, layer, shape, lif, p in zip(self.linears, self.cfg.hidden, self.in_shapes, self.neurons,
                                                  self.dropouts, strict=True):
            if isinstance(layer, ConvSpec):
                current = _convolved(synapses, layer, x, shape, steps, over_time)
            elif not over_time:  # constant over time: one matmul, then a view repeated over the steps
                current = synapses(x).expand(steps, -1, -1)
            else:  # all steps at once, over the spikes (flattened after convolutions)
                current = spike_linear(x.flatten(2), synapses.weight, synapses.bias)
            x, membrane = lif(current)
            over_time = True
            counts.append(x.detach().sum())
            if record:
                recorded.append(x.detach().flatten(2))
                membranes.append(membrane.detach().flatten(2))
            if p > 0 and self.training:
                x = spike_dropout(x, p)
        if over_time:
            x = x.flatten(2)
        if self.output_neurons is None:  # the mean over time of a linear map is the map of the mean: one matmul
            logits = self.readout(x.mean(dim=0) if over_time else x)
            counts.append(torch.zeros((), device=logits.device))
            return NetworkOutput(logits, None, None, torch.stack(counts), recorded, membranes)
        if over_time:
            current = spike_linear(x, self.readout.weight, self.readout.bias)
        else:
            current = self.readout(x).expand(steps, -1, -1)
        spikes, membrane = self.output_neurons(current)
        counts.append(spikes.detach().sum())
        if record:
            recorded.append(spikes.detach())
            membranes.append(membrane.detach())
        return NetworkOutput(self._logits(spikes, membrane), spikes, membrane, torch.stack(counts), recorded,
                             membranes)

    def _logits(self, spikes: torch.Tensor, membrane: torch.Tensor) -> torch.Tensor:
        """What the output neurons' readout predicts from: spike counts, or the membrane summed (or maxed) over
        time."""
        if self.cfg.readout == "rate":
            return spikes.sum(dim=0)
        if self.cfg.membrane_reduce == "max":
            return membrane.max(dim=0).values
        return membrane.sum(dim=0)

    def _forward_in_chunks(self, x: torch.Tensor) -> NetworkOutput:
        """`forward` over spans of `time_chunk` steps, each under torch.utils.checkpoint: only a span's input, the
        neurons' state between spans and the output layer's spikes and membranes are kept for the backward pass,
        which runs each span's forward again. The same numbers as `forward` (to float rounding: the neurons run
        their step function, not the whole-sequence node); dropout masks are drawn once for all spans."""
        from torch.utils.checkpoint import checkpoint

        steps, batch = self.time_steps, x.shape[1] if x.dim() == 3 else x.shape[0]
        masks = tuple(spike_dropout_mask((batch, *shape), p, x.device) if p > 0 else None
                      for shape, p in zip(self.cfg.shapes, self.dropouts, strict=True))
        states: tuple = (None,) * (len(self.neurons) + 1)
        spikes, membranes, hidden_sum, counts = [], [], 0.0, 0.0
        for start in range(0, steps, self.time_chunk):
            length = min(self.time_chunk, steps - start)
            span_input = x[start:start + length] if x.dim() == 3 else x
            out_spikes, out_membrane, last, states, span_counts = checkpoint(
                self._span, span_input, length, states, masks, use_reentrant=False)
            counts = counts + span_counts
            if out_spikes is None:
                hidden_sum = hidden_sum + last
            else:
                spikes.append(out_spikes)
                membranes.append(out_membrane)
        if self.output_neurons is None:
            logits = self.readout(hidden_sum / steps)
            return NetworkOutput(logits, None, None, counts, None, None)
        spikes, membrane = torch.cat(spikes), torch.cat(membranes)
        return NetworkOutput(self._logits(spikes, membrane), spikes, membrane, counts, None, None)

    def _span(self, x: torch.Tensor, length: int, states: tuple, masks: tuple):
        """One span of `length` steps through every layer from the given states: (output spikes, output
        membranes, the last hidden layer's spikes summed over the span (mean-current readout), the states after
        the span, spikes per layer)."""
        over_time = x.dim() == 3
        after, counts = [], []
        for synapses, layer, shape, lif, mask, state in zip(self.linears, self.cfg.hidden, self.in_shapes,
                                                            self.neurons, masks, states, strict=False):
            if isinstance(layer, ConvSpec):
                current = _convolved(synapses, layer, x, shape, length, over_time)
            elif not over_time:
                current = synapses(x).expand(length, -1, -1)
            else:
                current = spike_linear(x.flatten(2), synapses.weight, synapses.bias)
            x, _, state = lif.span(current, state)
            after.append(state)
            counts.append(x.detach().sum())
            if mask is not None:
                x = x * mask
            over_time = True
        if over_time:
            x = x.flatten(2)
        if self.output_neurons is None:
            counts.append(torch.zeros((), device=x.device))
            return None, None, (x.sum(dim=0) if over_time else x * length), (*after, None), torch.stack(counts)
        current = spike_linear(x, self.readout.weight, self.readout.bias) if over_time else \
            self.readout(x).expand(length, -1, -1)
        spikes, membrane, state = self.output_neurons.span(current, states[-1])
        counts.append(spikes.detach().sum())
        return spikes, membrane, None, (*after, state), torch.stack(counts)


def _synapses(layer, shape: tuple[int, ...]) -> nn.Module:
    if isinstance(layer, ConvSpec):
        # channels-last weights and inputs: oneDNN's convolution works in that layout and returns it, so NCHW
        # inputs and weights cost reorders each call (the tutorial-6 CSNN's batch: 0.86 -> 0.54 s on 2 cores)
        conv = nn.Conv2d(shape[0], layer.conv, layer.kernel, layer.stride, layer.padding)
        return conv.to(memory_format=torch.channels_last)
    return nn.Linear(math.prod(shape), layer.size)


def _convolved(conv: nn.Conv2d, layer: ConvSpec, x: torch.Tensor, shape: tuple[int, ...], steps: int,
               over_time: bool) -> torch.Tensor:
    """The current a convolution layer's neurons get, (time, batch, channels, height, width): the convolution
    (and pooling) runs once over all steps as one (time x batch) batch, or once in all for a constant input."""
    if not over_time:
        current = _pooled(conv(_channels_last(x.reshape(x.shape[0], *shape))), layer)
        return current.expand(steps, *current.shape)
    time, batch = x.shape[:2]
    current = _pooled(conv(_channels_last(x.reshape(time * batch, *shape))), layer)
    # (a view: the neurons keep the layout, so their spikes reach the next convolution channels-last too)
    return current.reshape(time, batch, *current.shape[1:])


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def _pooled(current: torch.Tensor, layer: ConvSpec) -> torch.Tensor:
    if not layer.pool:
        return current
    pool = F.max_pool2d if layer.pool_kind == "max" else F.avg_pool2d
    return pool(current, layer.pool)
