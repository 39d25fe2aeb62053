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
from snnrun.neurons import MODELS, LapicqueConfig, LeakyConfig, LIFConfig, SynapticConfig
from snnrun.stimulus import parse_stimulus
from snnrun.surrogate import KINDS as SURROGATES

DTYPES = ("float32", "float64")
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
    own += [("learn_beta", bool, field(False, "bool", "learn one decay per neuron")),
            ("learn_threshold", bool, field(False, "bool", "learn one threshold per neuron"))]
    name = "Trained" + model.__name__.removesuffix("Config")
    return dataclasses.make_dataclass(name, own, bases=(model,), frozen=True, namespace={"__module__": __name__})


TRAINABLE = tuple(name for name, m in MODELS.items() if m.trainable)
TrainedLeaky = _trained(LeakyConfig)
TrainedSynaptic = _trained(SynapticConfig)
TRAINED = {"leaky": TrainedLeaky, "synaptic": TrainedSynaptic}
TrainedNeuron = TrainedLeaky | TrainedSynaptic


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
class ModelConfig:
    input_size: int = integer(784, "input features (28 x 28 pixels)", minimum=1)
    hidden: list = field([1000], "list", "hidden layers: sizes, or dicts {size, dropout, and neuron keys}",
                         item_kind="integer")
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

    def dropouts(self) -> list[float]:
        """The dropout of each hidden layer (its own, or model.dropout)."""
        return [self.dropout if layer.dropout is None else layer.dropout for layer in self.hidden]


def parse_model(data, key: str, source: str | None) -> ModelConfig:
    """The model section: hidden layers may be sizes or dicts, each with neuron overrides."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping", source=source, key=key)
    base = _parse_kind(TRAINED, _before_neuron_home(data.get("neuron")), f"{key}.neuron", source)
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
        neuron = _override(base, _before_neuron_home(overrides), path, source)
        layers.append(replace(spec, neuron=neuron))
    output = _override(base, _before_neuron_home(data.get("output") or {}), f"{key}.output", source)
    rest = {k: v for k, v in data.items() if k not in ("neuron", "surrogate", "hidden", "output")}
    cfg = parse(ModelConfig, rest, path=key, source=source,
                sections={"neuron": lambda *_: base, "surrogate": lambda *_: surrogate})
    return replace(cfg, hidden=layers, output=output)


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
    """The model section as it would be written in YAML (hidden layers as dicts)."""
    out = to_dict(cfg)
    out["hidden"] = [{"size": layer.size, "dropout": layer.dropout, **to_dict(layer.neuron)} for layer in cfg.hidden]
    return out


@dataclass(frozen=True)
class DataConfig:
    root: str = field("data", "string", "folder holding MNIST/raw/*-ubyte (torchvision's layout)")
    download: bool = field(False, "bool", "let torchvision download MNIST when it is missing")
    val_size: int = integer(5000, "training images held out to choose the best epoch", minimum=0, maximum=30000)


@dataclass(frozen=True)
class EncodingConfig:
    kind: str = choice("direct", encodings.KINDS, "direct: image as constant current; rate: Bernoulli spikes; "
                       "latency: one spike per pixel, earlier when brighter")
    time_steps: int = integer(25, "simulation steps per image", minimum=1, maximum=10000)
    gain: float = number(1.0, "direct: current = pixel*gain; rate: p = pixel*gain", minimum=0,
                         exclusive_minimum=True)


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
    loss: str = choice("ce", ["ce", "ce_rate", "ce_membrane", "mse_count"],
                       "ce: cross-entropy of the readout; ce_rate: of output spike counts; ce_membrane: summed over "
                       "steps of the output membrane; mse_count: spike counts against target rates")
    correct_rate: float = number(0.8, "mse_count: target firing rate of the right class", minimum=0, maximum=1)
    incorrect_rate: float = number(0.2, "mse_count: target firing rate of the others", minimum=0, maximum=1)
    grad_clip: float | None = number(None, "clip the gradient norm (null: no clipping)", minimum=0,
                                     exclusive_minimum=True, nullable=True)
    augment_shift: int = integer(0, "random translation of training images by up to N pixels", minimum=0, maximum=8)
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
        needs_neurons = self.train.loss in ("ce_rate", "ce_membrane", "mse_count")
        if needs_neurons and self.model.readout == "mean_current":
            raise ConfigError(f"{self.train.loss} is not allowed with model.readout: mean_current (it has no output "
                              "neurons); use loss: ce", source=source, key="train.loss", related=("model.readout",))
        if self.model.input_size != 784:
            raise ConfigError(f"{self.model.input_size} is not allowed; MNIST images have 784 pixels",
                              source=source, key="model.input_size")


TRAIN_KINDS = (KindKey("encoding", "kind", "direct", keeps=("time_steps",)),)


def parse_train(data: dict, source: str | None) -> TrainConfig:
    return parse(TrainConfig, data, source=source, sections={"model": parse_model})


def config_to_dict(cfg: TrainConfig) -> dict:
    out = to_dict(cfg)
    out["model"] = model_to_dict(cfg.model)
    return out


