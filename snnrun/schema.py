"""The config schema of every command: sections as frozen dataclasses whose fields carry their rules.

`simulate`: `SimulationConfig` (its `neuron` section is the model's own, from `snnrun.neurons`, plus the
membrane to start from; its `stimulus` from `snnrun.stimulus`). `train`: `TrainConfig` with data, model
(layers, each with a trainable neuron model's section plus what is learned), encoding and train settings.
The engines (`simulation`, `network`, `training`) take these and hold no schema of their own.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields, replace

from snnrun import encoding as encodings
from snnrun.config import (
    ConfigError,
    KindKey,
    choice,
    field,
    integer,
    number,
    parse,
    per_neuron_values,
    rule_of,
    to_dict,
)
from snnrun.data import DATASETS
from snnrun.event_data import EVENT_SETS
from snnrun.neurons import ENGINES, MODELS, LapicqueConfig, LeakyConfig, LIFConfig, SynapticConfig
from snnrun.neurons.conductance import ExcitatoryConfig, InhibitoryConfig
from snnrun.stimulus import parse_stimulus
from snnrun.surrogate import KINDS as SURROGATES

DTYPES = ("float32", "float64")
LEARNING = ("bptt", "stdp")
READOUTS = ("rate", "membrane", "mean_current")


def section(cls: type):
    """A nested section, built from its defaults when the file does not give it."""
    return dataclasses.field(default_factory=cls)


# =========================================================================== simulate

INITIAL_MEMBRANE = "membrane at step 0"


@dataclass(frozen=True)
class SimulatedLeaky(LeakyConfig):
    initial_membrane: float | list = number(0.0, INITIAL_MEMBRANE, per_neuron=True)


@dataclass(frozen=True)
class SimulatedSynaptic(SynapticConfig):
    initial_membrane: float | list = number(0.0, INITIAL_MEMBRANE, per_neuron=True)


@dataclass(frozen=True)
class SimulatedLapicque(LapicqueConfig):
    initial_membrane: float | list = number(0.0, INITIAL_MEMBRANE, per_neuron=True)


@dataclass(frozen=True)
class SimulatedLIF(LIFConfig):
    initial_membrane: float | list | None = number(None, f"{INITIAL_MEMBRANE} in mV (null: v_rest_mv)",
                                                   per_neuron=True, nullable=True)


NEURONS = {"leaky": SimulatedLeaky, "lapicque": SimulatedLapicque, "synaptic": SimulatedSynaptic,
           "lif": SimulatedLIF}


def parse_neuron(data, key, source):
    """A simulation's `neuron` section, its class chosen by `model`."""
    return _parse_kind(NEURONS, data, key, source)


def _parse_kind(classes: dict, data, key, source):
    """A neuron section of the class its `model` names (leaky when it names none)."""
    data = {} if data is None else data
    model = data.get("model", "leaky") if isinstance(data, dict) else None
    if not isinstance(model, str) or model not in classes:
        untrained = isinstance(model, str) and model in MODELS
        where = f" ({model} neurons run in snnrun simulate only, for now)" if untrained else ""
        raise ConfigError(f"{model!r} is not allowed; expected one of {', '.join(classes)}{where}", source=source,
                          key=f"{key}.model")
    return parse(classes[model], data, path=key, source=source)


@dataclass(frozen=True)
class SimulationConfig:
    name: str = field("simulation", "string", "suffix of the run folder")
    time_steps: int = integer(200, "number of steps to simulate", minimum=1)
    neurons: int = integer(1, "population size", minimum=1)
    seed: int = integer(0, "seed for random stimuli")
    device: str = field("cpu", "string", "cpu, cuda, cuda:N, mps or auto")
    dtype: str = choice("float32", DTYPES, "floating-point precision")
    record_neurons: int = integer(1000, "neurons whose traces are saved and plotted (metrics cover all)", minimum=1)
    engine: str = choice("auto", ENGINES, "numba: the compiled kernels (CPU, one value per parameter); torch: the "
                         "step functions; auto: numba from 1e8 neuron-steps (lif: 1e9), where loading it pays")
    neuron: SimulatedLeaky | SimulatedLapicque | SimulatedSynaptic | SimulatedLIF = section(SimulatedLeaky)
    stimulus: object = None  # parsed by parse_simulation (its class depends on stimulus.kind)

    other_command = ("train", frozenset({"data", "model", "encoding", "train"}))

    def validate(self, path, source):
        for section_name in ("neuron", "stimulus"):
            section = getattr(self, section_name)
            for name, values in per_neuron_values(section).items():
                if len(values) != self.neurons:
                    raise ConfigError(
                        f"a list of {len(values)} values is not allowed; expected one number, or a list of "
                        f"{self.neurons} (one per neuron, see `neurons`)", source=source, key=f"{section_name}.{name}",
                        related=("neurons",))
        steps = getattr(self.stimulus, "steps", None)
        if steps is not None and max(steps) >= self.time_steps:
            raise ConfigError(f"{max(steps)} is not allowed; expected pulse steps below time_steps "
                              f"({self.time_steps})", source=source, key="stimulus.steps", related=("time_steps",))


SIMULATION_KINDS = (KindKey("neuron", "model", "leaky"), KindKey("stimulus", "kind", "step"))


def parse_simulation(data: dict, source: str | None, notes: list[str] | None = None) -> SimulationConfig:
    """The simulation config; `notes` (if given) is told of stimulus defaults fitted to the neuron's units."""
    holder: dict = {}

    stimulus = data.get("stimulus") if isinstance(data, dict) else None
    no_input = isinstance(stimulus, dict) and stimulus.get("kind") == "none"

    def neuron_section(section, key, where):
        neuron = parse_neuron(section, key, where)
        if no_input and not (isinstance(section, dict) and "initial_membrane" in section):
            # with no input a membrane at rest shows a flat line: start it near threshold, to relax from there
            start = _relaxation_start(neuron)
            if notes is not None:
                notes.append(f"{key}.initial_membrane: {start} (no input: the membrane starts at 90 % of the way "
                             "from rest to threshold and relaxes)")
            neuron = parse_neuron({**(section or {}), "initial_membrane": start}, key, where)
        holder["neuron"] = neuron
        return neuron

    def stimulus_section(section, key, where):
        neuron = holder.get("neuron")
        if isinstance(neuron, LIFConfig) and (section is None or isinstance(section, dict)):
            section = section or {}
            fitted = {k: v for k, v in physical_stimulus_defaults(section.get("kind", "step"), neuron,
                                                                  section).items() if k not in section}
            if fitted and notes is not None:
                notes.append(f"{key}: defaults in nA fitted to the lif neuron (rheobase "
                             f"{neuron.rheobase:.3g} nA): " + ", ".join(f"{k} {v}" for k, v in fitted.items()))
            section = {**section, **fitted}
        return parse_stimulus(section, key, where)

    return parse(SimulationConfig, data, source=source,
                 sections={"neuron": neuron_section, "stimulus": stimulus_section})


def _relaxation_start(neuron) -> float | list:
    """90 % of the way from rest to threshold (0 is rest for the unitless models), per neuron where the
    threshold is."""
    rest, thresh = neuron.rest, neuron.firing_threshold
    if isinstance(rest, list) or isinstance(thresh, list):
        n = len(rest) if isinstance(rest, list) else len(thresh)
        at = lambda x, i: x[i] if isinstance(x, list) else x  # noqa: E731
        return [_round(at(rest, i) + 0.9 * (at(thresh, i) - at(rest, i))) for i in range(n)]
    return _round(rest + 0.9 * (thresh - rest))


def _first(value) -> float:
    return float(value[0] if isinstance(value, list) else value)


def physical_stimulus_defaults(kind: str, neuron: LIFConfig, given: dict) -> dict:
    """Stimulus amplitudes in nA that drive a `lif` neuron (its first neuron's parameters) as the unitless
    defaults drive the discrete models: a step above the rheobase, pulses that each cross the threshold, and
    so on. Timings stay in steps."""
    rheobase = neuron.rheobase
    if kind == "pulse":  # one pulse of `width` steps lifts the membrane 1.5x the threshold's distance from
        width = given.get("width", 1)  # rest or from reset, whichever is larger
        width = width if isinstance(width, int) and width >= 1 else 1
        rise = 1 - math.exp(-width * neuron.dt_ms / _first(neuron.tau_ms))
        gap = _first(neuron.v_thresh_mv) - min(_first(neuron.v_rest_mv), _first(neuron.v_reset_mv))
        return {"amplitude": _round(1.5 * gap / _first(neuron.r_mohm) / rise)}
    table = {
        "step": {"amplitude": 4 / 3 * rheobase},
        "ramp": {"amplitude": 2 * rheobase},
        "piecewise": {"values": [0.0, 0.5 * rheobase, rheobase * 4 / 3, 2 * rheobase]},
        "sine": {"bias": rheobase, "amplitude": 0.5 * rheobase},
        "poisson": {"amplitude": 2 * rheobase / _probability(given.get("p", 0.1))},
    }
    fitted = table.get(kind, {})
    return {k: [_round(x) for x in v] if isinstance(v, list) else _round(v) for k, v in fitted.items()}


def _probability(value) -> float:
    """The poisson section's p as a number for fitting the amplitude (the schema checks p itself later)."""
    try:
        p = _first(value)
    except (TypeError, ValueError, IndexError):
        return 0.1
    return p if 0 < p <= 1 else 0.1


def _round(x: float) -> float:
    return float(f"{x:.3g}")


# =========================================================================== train


def _trained(model: type) -> type:
    """A trainable model's section in `train`: its keys with one value each (a layer's neurons share them, or
    learn their own: learn_beta, learn_threshold), the trainable models to choose from, and what is learned."""
    own = []
    for f in dataclasses.fields(model):
        rule = rule_of(f)
        if f.name == "model":
            own.append((f.name, f.type, choice(f.default, TRAINABLE, "neuron model of the layer")))
        elif rule.per_neuron:
            own.append((f.name, f.type, dataclasses.field(default=f.default, metadata={
                "rule": dataclasses.replace(rule, per_neuron=False)})))
    fixed = " (lif: false only; its tau_ms and v_thresh_mv are physical constants)" if model is LIFConfig else ""
    own += [("learn_beta", bool, field(False, "bool", "learn one decay per neuron" + fixed)),
            ("learn_threshold", bool, field(False, "bool", "learn one threshold per neuron" + fixed))]
    name = "Trained" + model.__name__.removesuffix("Config")
    namespace = {"__module__": __name__}
    if model is LIFConfig:
        namespace["validate"] = _validate_trained_lif
    return dataclasses.make_dataclass(name, own, bases=(model,), frozen=True, namespace=namespace)


def _validate_trained_lif(self, path, source):
    LIFConfig.validate(self, path, source)
    for key in ("learn_beta", "learn_threshold"):
        if getattr(self, key):
            raise ConfigError(f"{key} is not allowed for lif neurons: their tau_ms and v_thresh_mv are physical "
                              "constants here; learn_beta and learn_threshold are for leaky and synaptic layers",
                              source=source, key=f"{path}.{key}", related=(f"{path}.model",))


TRAINABLE = tuple(name for name, m in MODELS.items() if m.trainable)
TrainedLeaky = _trained(LeakyConfig)
TrainedSynaptic = _trained(SynapticConfig)
TrainedLIF = _trained(LIFConfig)
TRAINED = {"leaky": TrainedLeaky, "synaptic": TrainedSynaptic, "lif": TrainedLIF}
TrainedNeuron = TrainedLeaky | TrainedSynaptic | TrainedLIF


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
    neuron: TrainedNeuron | None = field(None, "any", "neuron overrides of this layer", nullable=True)


@dataclass(frozen=True)
class ConvSpec:
    """A spiking convolution layer: Conv2d of the layer's input (its current pooled first when `pool` is given,
    as snnTorch's tutorial 6 pools before its neurons), then one neuron per output position and channel."""

    conv: int = integer(12, "output channels", minimum=1)
    kernel: int = integer(5, "kernel size (square)", minimum=1)
    stride: int = integer(1, "stride", minimum=1)
    padding: int = integer(0, "zero padding on each side", minimum=0)
    pool: int | None = integer(None, "pool the convolution's output by this size before the neurons (null: none)",
                               minimum=1, nullable=True)
    pool_kind: str = choice("max", ["max", "avg"], "max or average pooling")
    dropout: float | None = number(None, "dropout on the layer's spikes (null: model.dropout)", minimum=0,
                                   maximum=0.95, nullable=True)
    neuron: TrainedNeuron | None = field(None, "any", "neuron overrides of this layer", nullable=True)

    def shape_after(self, shape: tuple[int, int, int]) -> tuple[int, int, int] | None:
        """(channels, height, width) out of this layer for an input of `shape`; None where the kernel or the
        pooling does not fit."""
        _, height, width = shape
        sides = [(side + 2 * self.padding - self.kernel) // self.stride + 1 for side in (height, width)]
        if self.pool:
            sides = [side // self.pool for side in sides]
        return (self.conv, *sides) if min(sides) >= 1 else None


def _fan_out(layer, outputs: int) -> float:
    if layer is None:
        return float(outputs)
    if isinstance(layer, ConvSpec):
        return layer.conv * layer.kernel ** 2 / layer.stride ** 2
    return float(layer.size)


IMAGE_SHAPE = (1, 28, 28)  # (channels, height, width) of the MNIST family


@dataclass(frozen=True)
class ModelConfig:
    input_size: int | None = integer(None, "input features per step (null: those of input_shape)", minimum=1,
                                     nullable=True)
    input_shape: list | None = field(None, "list", "input per step: [channels, height, width] or [features] (null: "
                                     "the data set's: [1, 28, 28] for the MNIST family, [2, 34, 34] for N-MNIST, "
                                     "[700] for SHD)", item_kind="integer", nullable=True)
    hidden: list = field([1000], "list", "hidden layers: sizes, or dicts {size, dropout, and neuron keys} (the "
                         "short form of `layers` for a network of linear layers)", item_kind="integer")
    layers: list | None = field(None, "any", "instead of hidden: the layers in order, each {conv: channels, kernel, "
                                "stride, padding, pool, pool_kind} or {linear: size}, with dropout and neuron keys; "
                                "a flatten before the first linear layer is implied", nullable=True)
    outputs: int = integer(10, "output neurons (classes)", minimum=2)
    neuron: TrainedNeuron = section(TrainedLeaky)
    output: dict | None = field(None, "any", "neuron overrides for the output layer (e.g. {reset: none})",
                                nullable=True)
    surrogate: SurrogateSpec = section(SurrogateSpec)
    readout: str = choice("rate", READOUTS, "rate: output spike counts; membrane: output membrane over time; "
                          "mean_current: mean over time of the last Linear (no output neurons)")
    membrane_reduce: str = choice("sum", ["sum", "max"], "how the membrane readout reduces over time")
    dropout: float = number(0.0, "dropout on hidden spikes", minimum=0, maximum=0.95)

    @property
    def layer_names(self) -> list[str]:
        """The one name of each neuron layer, in order (the output last, even for a mean_current readout, whose
        spike counts are zero): in metrics, eval.json, TensorBoard tags and plots."""
        return [f"hidden{i + 1}" for i in range(len(self.hidden))] + ["output"]

    @property
    def convolutional(self) -> bool:
        return any(isinstance(layer, ConvSpec) for layer in self.hidden)

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """The shape of each hidden layer's spikes per sample: (channels, height, width) after a convolution,
        (size,) after a linear layer (the checks of `parse_model` guarantee that every layer fits)."""
        shape: tuple[int, ...] = self.in_shape
        shapes = []
        for layer in self.hidden:
            shape = layer.shape_after(shape) if isinstance(layer, ConvSpec) else (layer.size,)
            shapes.append(shape)
        return shapes

    @property
    def layer_sizes(self) -> list[int]:
        """Neurons of each layer (hidden..., output)."""
        return [math.prod(shape) for shape in self.shapes] + [self.outputs]

    @property
    def fan_outs(self) -> list[float]:
        """Synapses that one spike of the input and of each hidden layer drives in the layer after it: a linear
        layer's size, a convolution's out_channels x kernel² / stride² (borders aside), the readout's outputs."""
        after = [*self.hidden[1:], None] if self.hidden else [None]
        first = self.hidden[0] if self.hidden else None
        return [_fan_out(layer, self.outputs) for layer in [first, *after]]

    @property
    def dense_input_macs(self) -> int:
        """Multiply-accumulates of the first synaptic layer for one constant (direct) input."""
        if not self.hidden:
            return self.input_size * self.outputs
        layer = self.hidden[0]
        if isinstance(layer, LayerSpec):
            return self.input_size * layer.size
        unpooled = replace(layer, pool=None).shape_after(self.in_shape)
        return math.prod(unpooled) * self.in_shape[0] * layer.kernel ** 2

    @property
    def in_shape(self) -> tuple[int, ...]:
        """What the first layer takes per sample and step: the input's shape for a convolution, else its features
        flattened."""
        return tuple(self.input_shape) if self.convolutional else (self.input_size,)

    def dropouts(self) -> list[float]:
        """The dropout of each hidden layer (its own, or model.dropout)."""
        return [self.dropout if layer.dropout is None else layer.dropout for layer in self.hidden]


def parse_model(data, key: str, source: str | None, data_shape: tuple[int, ...] = IMAGE_SHAPE) -> ModelConfig:
    """The model section: hidden layers as sizes or dicts (linear layers), or `layers` (convolutions and linear
    layers), each with neuron overrides; every layer checked to fit the one before it. `data_shape`: the data
    set's input per step, which input_shape and input_size default to."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping", source=source, key=key)
    base = _parse_kind(TRAINED, _before_neuron_home(data.get("neuron")), f"{key}.neuron", source)
    surrogate = parse(SurrogateSpec, data.get("surrogate"), path=f"{key}.surrogate", source=source)
    if data.get("layers") is not None:
        if data.get("hidden") is not None:
            raise ConfigError("give hidden (linear layer sizes) or layers, not both", source=source,
                              key=f"{key}.layers", related=(f"{key}.hidden",))
        layers = _parse_layers(data["layers"], base, f"{key}.layers", source)
    else:
        layers = _parse_hidden(data.get("hidden", [1000]), base, f"{key}.hidden", source)
    output = _override(base, _before_neuron_home(data.get("output") or {}), f"{key}.output", source)
    rest = {k: v for k, v in data.items() if k not in ("neuron", "surrogate", "hidden", "layers", "output")}
    cfg = parse(ModelConfig, rest, path=key, source=source,
                sections={"neuron": lambda *_: base, "surrogate": lambda *_: surrogate})
    shape = tuple(cfg.input_shape) if cfg.input_shape is not None else tuple(data_shape)
    size = math.prod(shape) if cfg.input_size is None else cfg.input_size
    if size != math.prod(shape):
        given = f"input_shape {list(shape)}" if cfg.input_shape is not None else f"the data's input {list(shape)}"
        raise ConfigError(f"{size} is not allowed; {given} has {math.prod(shape)} features", source=source,
                          key=f"{key}.input_size", related=(f"{key}.input_shape",) if cfg.input_shape else ())
    cfg = replace(cfg, hidden=layers, output=output, input_shape=list(shape), input_size=size)
    if cfg.convolutional and len(shape) != 3:
        raise ConfigError(f"a convolution needs images (channels x height x width); the input is {list(shape)}",
                          source=source, key=f"{key}.layers[0]", related=(f"{key}.input_shape",))
    _check_shapes(cfg, key, source, "layers" if data.get("layers") is not None else "hidden")
    return cfg


def _parse_hidden(hidden_raw, base, key: str, source) -> list:
    if not isinstance(hidden_raw, list):
        raise ConfigError(f"{hidden_raw!r} is not allowed; expected a list of layer sizes or layer dicts",
                          source=source, key=key)
    layers = []
    for i, item in enumerate(hidden_raw):
        path = f"{key}[{i}]"
        if isinstance(item, dict):
            own = {k: v for k, v in item.items() if k in ("size", "dropout")}
            spec = parse(LayerSpec, own, path=path, source=source)
            overrides = {k: v for k, v in item.items() if k not in ("size", "dropout")}
        else:
            spec = parse(LayerSpec, {"size": item}, path=path, source=source)
            overrides = {}
        neuron = _override(base, _before_neuron_home(overrides), path, source)
        layers.append(replace(spec, neuron=neuron))
    return layers


LAYER_KEYS = {"conv": ("conv", "kernel", "stride", "padding", "pool", "pool_kind", "dropout"),
              "linear": ("linear", "dropout")}


def _parse_layers(items, base, key: str, source) -> list:
    """`model.layers`: {conv: channels, ...} and {linear: size, ...} items (and an optional `flatten`
    between the two kinds), each with its neuron keys."""
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{items!r} is not allowed; expected a list of layers such as {{conv: 12, kernel: 5, "
                          "pool: 2}} or {linear: 128}", source=source, key=key)
    layers, flat = [], False
    for i, item in enumerate(items):
        path = f"{key}[{i}]"
        if item == "flatten":
            flat = True
            continue
        kinds = [kind for kind in LAYER_KEYS if isinstance(item, dict) and kind in item]
        if len(kinds) != 1:
            raise ConfigError(f"{item!r} is not allowed; expected a layer with one of conv (channels) or linear "
                              "(size), or flatten", source=source, key=path)
        kind = kinds[0]
        own = {k: v for k, v in item.items() if k in LAYER_KEYS[kind]}
        overrides = {k: v for k, v in item.items() if k not in LAYER_KEYS[kind]}
        neuron_keys = {f.name for cls in TRAINED.values() for f in dataclasses.fields(cls)}
        unknown = [k for k in overrides if k not in neuron_keys]
        if unknown:
            raise ConfigError(f"unknown key; allowed here: {', '.join(LAYER_KEYS[kind])}, and the neuron keys "
                              f"({', '.join(f.name for f in dataclasses.fields(TrainedSynaptic))})",
                              source=source, key=f"{path}.{unknown[0]}")
        if kind == "conv":
            if flat or any(isinstance(layer, LayerSpec) for layer in layers):
                raise ConfigError("a convolution after a linear layer (or flatten) is not allowed: convolutions "
                                  "come first", source=source, key=path)
            spec = parse(ConvSpec, own, path=path, source=source)
        else:
            spec = parse(LayerSpec, {"size": own.pop("linear"), **own}, path=path, source=source)
        layers.append(replace(spec, neuron=_override(base, _before_neuron_home(overrides), path, source)))
    return layers


def _check_shapes(cfg: ModelConfig, key: str, source, given: str) -> None:
    """Every convolution must fit the shape it gets: a ConfigError naming the layer and both shapes."""
    shape: tuple[int, ...] = cfg.in_shape
    for i, layer in enumerate(cfg.hidden):
        if isinstance(layer, ConvSpec):
            after = layer.shape_after(shape)
            if after is None:
                pooled = f" then a {layer.pool}x{layer.pool} pool" if layer.pool else ""
                raise ConfigError(
                    f"a {layer.kernel}x{layer.kernel} kernel (stride {layer.stride}, padding {layer.padding}){pooled} "
                    f"does not fit its input of {' x '.join(map(str, shape))} (channels x height x width); use a "
                    "smaller kernel or pool, or padding", source=source, key=f"{key}.{given}[{i}]")
            shape = after
        else:
            shape = (layer.size,)


def _override(base: TrainedNeuron, overrides, path: str, source) -> TrainedNeuron:
    """A layer's neuron: the shared one with the layer's keys on top (a layer of another model keeps the
    shared keys that model has)."""
    if not isinstance(overrides, dict):
        raise ConfigError("expected a mapping of neuron keys", source=source, key=path)
    model = overrides.get("model", base.model)
    target = TRAINED.get(model) if isinstance(model, str) else None
    names = {f.name for f in fields(target)} if target is not None else set()
    merged = {f.name: getattr(base, f.name) for f in fields(base) if f.name in names or target is None}
    if "beta" in overrides or "tau" in overrides:  # a layer's own decay replaces the shared one
        merged.update(beta=None, tau=None, dt=None)
    merged.update(overrides)
    return _parse_kind(TRAINED, merged, path, source)


def _before_neuron_home(section):
    """A neuron section as run folders resolved it before each model had its own keys: those wrote every
    key of both models, so a leaky layer carried an unused `alpha`. Dropped here, so old runs still evaluate
    and resume; a config that gives `alpha` to a leaky neuron itself is told it is unknown."""
    if isinstance(section, dict) and section.get("model", "leaky") == "leaky" and "alpha" in section \
            and "learn_beta" in section and "learn_threshold" in section and "reset_delay" in section:
        return {k: v for k, v in section.items() if k != "alpha"}
    return section


def model_to_dict(cfg: ModelConfig) -> dict:
    """The model section as it would be written in YAML: hidden layers as dicts, or `layers` for a network
    with convolutions."""
    out = to_dict(cfg)
    if not cfg.convolutional:
        out["hidden"] = [{"size": layer.size, "dropout": layer.dropout, **to_dict(layer.neuron)}
                         for layer in cfg.hidden]
        del out["layers"]
        return out
    out["hidden"], out["layers"] = None, []
    for layer in cfg.hidden:
        own = to_dict(layer)
        neuron = own.pop("neuron")
        if isinstance(layer, LayerSpec):
            own = {"linear": own.pop("size"), **own}
        out["layers"].append({**own, **neuron})
    return out


@dataclass(frozen=True)
class DataConfig:
    dataset: str = choice("mnist", [*DATASETS, *EVENT_SETS], "mnist, fashion_mnist or kmnist: 28 x 28 grey images "
                          "of 10 classes; nmnist (N-MNIST, 2 x 34 x 34 camera events, 10 classes), dvs_gesture (DVS128 "
                          "Gesture, 2 x 128 x 128 camera events, 11 classes) or shd (Spiking Heidelberg Digits, 700 "
                          "channels of audio events, 20 classes): events binned into encoding.time_steps frames")
    root: str = field("data", "string", "folder holding MNIST/raw/*-ubyte (FashionMNIST/raw, KMNIST/raw: "
                      "torchvision's layout; NMNIST/Train, DVSGesture/ibmGesture*, SHD/shd_*.h5: tonic's)")
    download: bool = field(False, "bool", "let torchvision (tonic for event data) download the data set when it is "
                           "missing")
    val_size: int = integer(5000, "training images held out to choose the best epoch", minimum=0, maximum=30000)
    duration_ms: float | None = number(None, "event data: the span of each recording (from its start) binned into "
                                       "encoding.time_steps frames; later events are dropped (null: N-MNIST 300, "
                                       "DVS128 Gesture 6000, SHD 1000)", minimum=0, exclusive_minimum=True,
                                       nullable=True)
    denoise_us: float | None = number(None, "camera events (nmnist, dvs_gesture): drop events with no neighbour "
                                      "event within this many microseconds (tonic's Denoise; null: keep all)",
                                      minimum=0, exclusive_minimum=True, nullable=True)
    downsample: int = integer(1, "camera events: pool the sensor's pixels by this factor in each direction "
                              "(tonic's Downsample; dvs_gesture 4: 2 x 32 x 32)", minimum=1, maximum=64)

    @property
    def events(self) -> bool:
        return self.dataset in EVENT_SETS

    @property
    def shape(self) -> tuple[int, ...]:
        """One sample's input per step."""
        return EVENT_SETS[self.dataset].shape_at(self.downsample) if self.events else IMAGE_SHAPE

    @property
    def classes(self) -> int:
        return EVENT_SETS[self.dataset].classes if self.events else 10

    def validate(self, path, source):
        if self.events:
            camera = EVENT_SETS[self.dataset].camera
            for name, given in (("denoise_us", self.denoise_us is not None), ("downsample", self.downsample != 1)):
                if given and not camera:
                    raise ConfigError(f"{name} applies to camera events, not {EVENT_SETS[self.dataset].name}",
                                      source=source, key=f"{path}.{name}", related=(f"{path}.dataset",))
            return
        given = [name for name in ("duration_ms", "denoise_us") if getattr(self, name) is not None]
        given += ["downsample"] if self.downsample != 1 else []
        if given:
            raise ConfigError(f"{given[0]} applies to event data sets ({', '.join(EVENT_SETS)}), not "
                              f"{self.dataset}", source=source, key=f"{path}.{given[0]}", related=(f"{path}.dataset",))


@dataclass(frozen=True)
class EncodingConfig:
    kind: str = choice("direct", encodings.KINDS, "direct: image as constant current; rate: Bernoulli spikes; "
                       "latency: one spike per pixel, earlier when brighter; events: an event data set's frames "
                       "(its only encoding); current: one lif neuron per pixel (model.neuron) driven by pixel*gain "
                       "nA, its spikes the input; poisson: spikes at pixel*gain Hz")
    time_steps: int = integer(25, "simulation steps per image (event data: frames per recording; with "
                              "duration_ms: duration_ms / the lif neurons' dt_ms)", minimum=1, maximum=10000)
    gain: float = number(1.0, "direct: current = pixel*gain; rate: p = pixel*gain; events: input = events per "
                         "frame*gain; current: nA at a full pixel; poisson: Hz at a full pixel", minimum=0,
                         exclusive_minimum=True)
    duration_ms: float | None = number(None, "each image's presentation in ms, for lif neurons: time_steps follows "
                                       "as duration_ms / model.neuron.dt_ms (null: time_steps)", minimum=0,
                                       exclusive_minimum=True, nullable=True)


@dataclass(frozen=True)
class SubsetConfig:
    train: int | None = integer(None, "use only the first N training images (null: all); the validation images "
                                "stay data.val_size", minimum=1, nullable=True)
    test: int | None = integer(None, "use only the first M test images (null: all)", minimum=1, nullable=True)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = integer(10, "passes over the training images", minimum=1)
    batch_size: int = integer(128, "images per optimizer step", minimum=1)
    optimizer: str = choice("adam", ["adam", "adamw", "sgd"], "optimizer")
    lr: float = number(1e-3, "learning rate", minimum=0, exclusive_minimum=True)
    momentum: float = number(0.9, "sgd momentum", minimum=0, maximum=1)
    weight_decay: float = number(0.0, "weight decay", minimum=0)
    schedule: str = choice("none", ["cosine", "step", "none"], "learning-rate schedule, stepped per batch (cosine) "
                           "or per epoch (step)")
    step_size: int = integer(1, "step schedule: epochs between decays", minimum=1)
    gamma: float = number(0.1, "step schedule: decay factor", minimum=0, maximum=1, exclusive_minimum=True)
    loss: str = choice("ce", ["ce", "ce_rate", "ce_rate_steps", "ce_membrane", "mse_count"],
                       "ce: cross-entropy of the readout; ce_rate: of output spike counts; ce_rate_steps: of each "
                       "step's output spikes, averaged over steps (snnTorch's ce_rate_loss); ce_membrane: summed "
                       "over steps of the output membrane; mse_count: spike counts against target rates")
    correct_rate: float = number(0.8, "mse_count: target firing rate of the right class", minimum=0, maximum=1)
    incorrect_rate: float = number(0.2, "mse_count: target firing rate of the others", minimum=0, maximum=1)
    grad_clip: float | None = number(None, "clip the gradient norm (null: no clipping)", minimum=0,
                                     exclusive_minimum=True, nullable=True)
    augment_shift: int = integer(0, "random translation of training images by up to N pixels", minimum=0, maximum=8)
    time_chunk: int | None = integer(None, "run the forward pass in chunks of this many steps and recompute each in "
                                     "the backward pass (gradient checkpointing): memory grows with the chunk, "
                                     "not with encoding.time_steps, for a slower step (null: off)", minimum=1,
                                     nullable=True)
    seed: int = integer(0, "seed of weights, shuffling, augmentation, encoding and dropout")
    subset: SubsetConfig = section(SubsetConfig)
    checkpoint_every: int = integer(1, "epochs between checkpoints (last.pt; best.pt whenever val improves)",
                                    minimum=1)
    eval_batch_size: int = integer(1000, "images per batch when scoring", minimum=1)
    init_from: str | None = field(None, "string", "fine-tune: start from the weights of this run folder (its "
                                  "best.pt) or checkpoint file, with a new optimizer (null: random weights)",
                                  nullable=True)


@dataclass(frozen=True)
class TrainConfig:
    name: str = field("mnist", "string", "suffix of the run folder")
    learning: str = choice("bptt", LEARNING, "bptt: surrogate-gradient backpropagation through time (the sections "
                           "below); stdp: Diehl & Cook's unsupervised network (its own sections: see configs/"
                           "stdp_mnist.yaml)")
    device: str = field("auto", "string", "auto, cpu, cuda, cuda:N or mps")
    threads: int | None = integer(None, "CPU threads for torch (null: one for a small network, else torch's "
                                  "default or OMP_NUM_THREADS)", minimum=1, nullable=True)
    tensorboard: bool = field(False, "bool", "write TensorBoard logs into the run folder's tb/ (scalars, weight "
                              "and membrane histograms, raster per epoch; needs the tensorboard extra)")
    data: DataConfig = section(DataConfig)
    model: ModelConfig = section(lambda: parse_model(None, "model", None))
    encoding: EncodingConfig = section(EncodingConfig)
    train: TrainSettings = section(TrainSettings)

    other_command = ("simulate", frozenset({"neuron", "neurons", "stimulus", "time_steps", "record_neurons"}))

    def validate(self, path, source):
        needs_neurons = self.train.loss in ("ce_rate", "ce_rate_steps", "ce_membrane", "mse_count")
        if needs_neurons and self.model.readout == "mean_current":
            raise ConfigError(f"{self.train.loss} is not allowed with model.readout: mean_current (it has no output "
                              "neurons); use loss: ce", source=source, key="train.loss", related=("model.readout",))
        if tuple(self.model.input_shape) != self.data.shape:
            raise ConfigError(f"{self.model.input_shape} is not allowed; data.dataset {self.data.dataset} gives "
                              f"{list(self.data.shape)}", source=source, key="model.input_shape",
                              related=("data.dataset",))
        if self.model.outputs < self.data.classes:
            raise ConfigError(f"{self.model.outputs} is not allowed; data.dataset {self.data.dataset} has "
                              f"{self.data.classes} classes", source=source, key="model.outputs",
                              related=("data.dataset",))
        if self.data.events != (self.encoding.kind == "events"):
            if self.data.events:
                raise ConfigError(f"{self.encoding.kind} is not allowed for event data ({self.data.dataset} gives "
                                  "spikes over time already); use encoding.kind: events", source=source,
                                  key="encoding.kind", related=("data.dataset",))
            raise ConfigError(f"events is not allowed for {self.data.dataset} (images); use direct, rate or "
                              "latency", source=source, key="encoding.kind", related=("data.dataset",))
        self._check_physical_units(source)
        if self.data.events and self.train.augment_shift:
            raise ConfigError("augment_shift translates images; it does not apply to event data", source=source,
                              key="train.augment_shift", related=("data.dataset",))


    def _check_physical_units(self, source) -> None:
        """Encodings and presentations in nA, Hz and ms need lif neurons, whose dt_ms is the one clock."""
        e, neuron = self.encoding, self.model.neuron
        lif = neuron.model == "lif"
        if not lif and (e.kind in encodings.PHYSICAL or e.duration_ms is not None):
            key = "encoding.duration_ms" if e.kind not in encodings.PHYSICAL else "encoding.kind"
            raise ConfigError(f"{key.split('.')[1]} {getattr(e, key.split('.')[1])} is in physical units and needs "
                              f"model.neuron.model: lif (whose dt_ms is the step), not {neuron.model}",
                              source=source, key=key, related=("model.neuron.model",))
        if not lif:
            return
        layers = [("model.hidden" if not self.model.convolutional else "model.layers", layer.neuron)
                  for layer in self.model.hidden] + [("model.output", self.model.output)]
        for i, (key, layer) in enumerate(layers):
            if layer.model == "lif" and layer.dt_ms != neuron.dt_ms:
                where = key if key == "model.output" else f"{key}[{i}]"
                raise ConfigError(f"{layer.dt_ms} is not allowed; every lif layer steps at model.neuron.dt_ms "
                                  f"({neuron.dt_ms})", source=source, key=f"{where}.dt_ms",
                                  related=("model.neuron.dt_ms",))
        if e.duration_ms is not None:
            steps = e.duration_ms / neuron.dt_ms
            if abs(steps - round(steps)) > 1e-6 * max(1.0, steps):
                raise ConfigError(f"{e.duration_ms} is not allowed; it must be a whole number of model.neuron.dt_ms "
                                  f"({neuron.dt_ms} ms) steps", source=source, key="encoding.duration_ms",
                                  related=("model.neuron.dt_ms",))
            if round(steps) != e.time_steps:
                raise ConfigError(f"{e.time_steps} conflicts with encoding.duration_ms {e.duration_ms} at "
                                  f"model.neuron.dt_ms {neuron.dt_ms} ({round(steps)} steps); give one of the two",
                                  source=source, key="encoding.time_steps", related=("encoding.duration_ms",))


def _time_steps_from_duration(data: dict) -> dict:
    """The config with encoding.time_steps = duration_ms / model.neuron.dt_ms where duration_ms is given and
    time_steps is not (a wrong or conflicting value is left for TrainConfig.validate to name)."""
    encoding = data.get("encoding")
    model = data.get("model")
    if not isinstance(encoding, dict) or "time_steps" in encoding or not isinstance(model, dict):
        return data
    neuron = model.get("neuron")
    duration = encoding.get("duration_ms")
    if not isinstance(neuron, dict) or neuron.get("model") != "lif" or isinstance(duration, bool) \
            or not isinstance(duration, (int, float)):
        return data
    dt = neuron.get("dt_ms", LIFConfig.dt_ms)
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or dt <= 0 or duration <= 0:
        return data
    return {**data, "encoding": {**encoding, "time_steps": max(1, round(duration / dt))}}


TRAIN_KINDS = (KindKey("encoding", "kind", "direct", keeps=("time_steps",)),)


def parse_train(data: dict, source: str | None) -> TrainConfig | STDPConfig:
    if isinstance(data, dict) and data.get("learning") == "stdp":
        return parse(STDPConfig, data, source=source)
    section = data.get("data") if isinstance(data, dict) else None
    dataset = section.get("dataset") if isinstance(section, dict) else None
    factor = section.get("downsample", 1) if isinstance(section, dict) else 1
    factor = factor if isinstance(factor, int) and factor >= 1 else 1  # (a wrong value: data's error)
    shape = EVENT_SETS[dataset].shape_at(factor) if dataset in EVENT_SETS else IMAGE_SHAPE

    def model(model_data, key, where):
        return parse_model(model_data, key, where, data_shape=shape)

    if isinstance(data, dict):
        data = _time_steps_from_duration(data)
    return parse(TrainConfig, data, source=source, sections={"model": model})


def config_to_dict(cfg: TrainConfig | STDPConfig) -> dict:
    out = to_dict(cfg)
    if isinstance(cfg, STDPConfig):
        return out
    out["model"] = model_to_dict(cfg.model)
    return out




# --------------------------------------------------------------------------- train with learning: stdp


@dataclass(frozen=True)
class STDPData:
    dataset: str = choice("mnist", list(DATASETS), "28 x 28 grey images of 10 classes, in torchvision's layout")
    root: str = field("data", "string", "folder holding MNIST/raw/*-ubyte (FashionMNIST/raw, KMNIST/raw)")
    download: bool = field(False, "bool", "let torchvision download the data set when it is missing")


@dataclass(frozen=True)
class STDPInput:
    dt_ms: float = number(0.5, "integration step (ms)", minimum=0, exclusive_minimum=True)
    duration_ms: float = number(350.0, "each image's presentation (ms)", minimum=0, exclusive_minimum=True)
    rest_ms: float = number(150.0, "rest after each presentation, no input, the network running on (ms)", minimum=0)
    max_rate_hz: float = number(63.75, "Poisson rate of a full (255) pixel (Hz; the original: pixel / 8 * 2)",
                                minimum=0, exclusive_minimum=True)
    rate_step_hz: float = number(31.875, "added to max_rate_hz each time an image is shown again (Hz; the "
                                 "original: input_intensity += 1)", minimum=0)
    min_spikes: int = integer(5, "an image drawing fewer excitatory spikes than this is shown again, at a higher "
                              "rate", minimum=0)
    max_presentations: int = integer(20, "the most times one image is shown (the original has no limit)", minimum=1)

    def validate(self, path, source):
        for name in ("duration_ms", "rest_ms"):
            steps = getattr(self, name) / self.dt_ms
            if abs(steps - round(steps)) > 1e-6 * max(1.0, steps):
                raise ConfigError(f"{getattr(self, name)} is not allowed; it must be a whole number of {path}.dt_ms "
                                  f"({self.dt_ms} ms) steps", source=source, key=f"{path}.{name}",
                                  related=(f"{path}.dt_ms",))


@dataclass(frozen=True)
class STDPPlasticity:
    """The original code's rule (the paper's "triplet" variant): traces pre (per synapse), post1 and post2."""

    nu_pre: float = number(1e-4, "depression at each input spike's arrival: w -= nu_pre * post1", minimum=0)
    nu_post: float = number(1e-2, "potentiation at each excitatory spike: w += nu_post * pre * post2", minimum=0)
    tau_pre_ms: float = number(20.0, "decay of the input spike trace pre (ms)", minimum=0, exclusive_minimum=True)
    tau_post1_ms: float = number(20.0, "decay of the excitatory trace post1 (ms)", minimum=0, exclusive_minimum=True)
    tau_post2_ms: float = number(40.0, "decay of the excitatory trace post2 (ms)", minimum=0, exclusive_minimum=True)
    wmax: float = number(1.0, "weights are clipped to [0, wmax]", minimum=0, exclusive_minimum=True)


@dataclass(frozen=True)
class STDPNetwork:
    excitatory_neurons: int = integer(100, "excitatory neurons (and as many inhibitory partners)", minimum=1,
                                      maximum=100_000)
    w_input_scale: float = number(0.3, "initial input weights: (U[0, 1) + 0.01) * this", minimum=0,
                                  exclusive_minimum=True)
    weight_total: float = number(78.0, "the input weights into each excitatory neuron are scaled to sum to this "
                                 "before each presentation", minimum=0, exclusive_minimum=True)
    w_exc_inh: float = number(10.4, "excitatory -> its inhibitory partner (one to one)", minimum=0)
    w_inh_exc: float = number(17.0, "inhibitory -> every other excitatory neuron", minimum=0)
    input_delay_ms: float = number(10.0, "each input -> excitatory synapse delays its spikes by U[0, this) ms, cut to "
                                   "whole steps (the original's delay['ee_input']; 0: none)", minimum=0)
    excitatory: ExcitatoryConfig = section(ExcitatoryConfig)
    inhibitory: InhibitoryConfig = section(InhibitoryConfig)
    input: STDPInput = section(STDPInput)
    plasticity: STDPPlasticity = section(STDPPlasticity)


@dataclass(frozen=True)
class STDPTrain:
    epochs: int = integer(1, "passes over the training images, in the data set's order", minimum=1)
    seed: int = integer(0, "seed of the initial weights and the input spikes")
    label_images: int = integer(60000, "training images shown to the trained, frozen network to assign each "
                                "neuron its class (at most the training images)", minimum=1)
    window: int = integer(10000, "accuracy over training: each block of images classified with assignments from "
                          "the responses to this many images before it", minimum=100)
    checkpoint_every: int = integer(5000, "images between checkpoints (last.pt)", minimum=250)
    subset: SubsetConfig = section(SubsetConfig)


@dataclass(frozen=True)
class STDPConfig:
    name: str = field("stdp_mnist", "string", "suffix of the run folder")
    learning: str = choice("stdp", LEARNING, "stdp: Diehl & Cook (2015), unsupervised learning by STDP")
    device: str = choice("cpu", ["auto", "cpu"], "the network runs as a compiled loop on the CPU (numba)")
    data: STDPData = section(STDPData)
    stdp: STDPNetwork = section(STDPNetwork)
    train: STDPTrain = section(STDPTrain)
