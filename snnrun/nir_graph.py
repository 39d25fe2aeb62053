"""NIR (Neural Intermediate Representation): a trained network to a `nir.NIRGraph` and back.

The graph is a chain  Input -> (Conv2d -> [AvgPool2d] -> LIF|CubaLIF)* -> [Flatten] -> (Affine -> LIF|CubaLIF)*
-> Affine -> [LIF|CubaLIF|LI|CubaLI] -> Output. Shapes are per sample, without the batch: a convolution's
neurons are (channels, height, width) arrays, and Flatten(start_dim=0) turns them into the features of the first
dense layer, as NIR's own shape inference reads it. Pooling acts on the convolution's current before the neurons
(as snnTorch's tutorial 6 pools); NIR 1.0 has AvgPool2d and SumPool2d but no max pooling, so a max-pooled
network is refused at export with the layer named (a SumPool2d is read back as average pooling with its k²
folded into the convolution's weights).

NIR states neurons as ODEs in seconds,  tau dv/dt = (v_leak - v) + r I  (CubaLIF: tau_syn dI/dt = -I + w_in S
first). We map our per-step neurons with forward Euler at an explicit step dt (in the graph's metadata), as
snnTorch, Norse and nirtorch do:

    beta  = 1 - dt/tau      tau     = dt / (1 - beta)        r = tau / dt  (each step adds the input unscaled)
    alpha = 1 - dt/tau_syn  tau_syn = dt / (1 - alpha)       w_in = tau_syn / dt

v_leak = 0, v_reset = 0. NIR's LIF resets to v_reset in the step that fires; our reset: subtract and snnTorch's
delayed reset (reset_delay: true) have no NIR field, so each neuron node carries them in its metadata
(`reset`, `reset_delay`): snnrun reads them back exactly, other tools see a zero reset. A membrane readout
whose output neurons never reset is exported as an LI (CubaLI) node; a mean-current readout ends at the
Affine (the mean over time is the reader's job). The encoding, the number of steps and the data set go in the
graph metadata.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from snnrun import __version__
from snnrun.config import NIRFileError, UserError
from snnrun.network import Network
from snnrun.schema import ConvSpec

DEFAULT_DT = 1e-4  # seconds; snnTorch's import assumes exactly this step


def require_nir():
    try:
        import nir
    except ImportError:
        raise UserError("the nir package is not installed: pip install 'snnrun[nir]' (or pip install nir)",
                        source="--format nir") from None
    return nir


# --------------------------------------------------------------------------- export


def to_nir(model: Network, train_config: dict, dt: float = DEFAULT_DT):
    """The network as a NIRGraph (float64 arrays; see the module docstring for the mapping)."""
    nir = require_nir()
    cfg = model.cfg
    physical = [name for name, lif in zip(cfg.layer_names, [*model.neurons, model.output_neurons], strict=False)
                if lif is not None and lif.model == "lif"]
    if physical:
        raise UserError(f"layer {physical[0]} has lif neurons (physical units with a refractory period), and NIR's "
                        "LIF node has no refractory period: only networks of leaky and synaptic neurons export",
                        source="snnrun export")
    nodes = {"input": nir.Input(input_type={"input": np.array(cfg.in_shape)})}
    chain = ["input"]

    def add(name: str, node) -> None:
        nodes[name] = node
        chain.append(name)

    shape = cfg.in_shape
    for i, (synapses, layer, lif, after) in enumerate(zip(model.linears, cfg.hidden, model.neurons, cfg.shapes,
                                                          strict=True), 1):
        if isinstance(layer, ConvSpec):
            add(f"conv{i}", _conv(nir, synapses, shape))
            if layer.pool:
                add(f"pool{i}", _pool(nir, layer, i))
        else:
            if len(shape) > 1:
                add("flatten", _flatten(nir, shape))
            add(f"fc{i}", _affine(nir, synapses))
        add(f"lif{i}", _neuron(nir, lif, layer.neuron, dt, False, after))
        shape = after
    if len(shape) > 1:
        add("flatten", _flatten(nir, shape))
    add("fc_out", _affine(nir, model.readout))
    if model.output_neurons is not None:
        integrator = cfg.readout == "membrane" and cfg.output.reset == "none"
        add("lif_out", _neuron(nir, model.output_neurons, cfg.output, dt, integrator, (cfg.outputs,)))
    add("output", nir.Output(output_type={"output": np.array([cfg.outputs])}))
    encoding = train_config["encoding"]
    metadata = {
        "producer": f"snnrun {__version__}",
        "dt": float(dt),
        "discretization": "forward Euler: beta = 1 - dt/tau, alpha = 1 - dt/tau_syn, r = tau/dt, w_in = tau_syn/dt",
        "time_steps": int(encoding["time_steps"]),
        "encoding": str(encoding["kind"]),
        "encoding_gain": float(encoding["gain"]),
        "readout": str(cfg.readout),
        "membrane_reduce": str(cfg.membrane_reduce),
    }
    if "dataset" in train_config.get("data", {}):
        metadata["dataset"] = str(train_config["data"]["dataset"])
    return nir.NIRGraph(nodes=nodes, edges=list(zip(chain[:-1], chain[1:], strict=True)), metadata=metadata)


def _conv(nir, conv: torch.nn.Conv2d, shape: tuple[int, ...]):
    return nir.Conv2d(input_shape=tuple(int(side) for side in shape[1:]),
                      weight=conv.weight.detach().cpu().double().numpy(), stride=conv.stride, padding=conv.padding,
                      dilation=conv.dilation, groups=conv.groups, bias=conv.bias.detach().cpu().double().numpy())


def _pool(nir, layer: ConvSpec, index: int):
    if layer.pool_kind == "max":
        raise UserError(f"layer {index} max-pools its current, and NIR has no max-pooling node (only AvgPool2d and "
                        "SumPool2d): a network whose convolutions pool with pool_kind: avg, or not at all, exports",
                        source="snnrun export")
    size = np.array([layer.pool, layer.pool])
    return nir.AvgPool2d(kernel_size=size, stride=size.copy(), padding=np.zeros(2, dtype=int))


def _flatten(nir, shape: tuple[int, ...]):
    return nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1)


def _affine(nir, linear: torch.nn.Linear):
    return nir.Affine(weight=linear.weight.detach().cpu().double().numpy(),
                      bias=linear.bias.detach().cpu().double().numpy())


def _neuron(nir, lif, spec, dt: float, leaky_integrator: bool, shape: tuple[int, ...]):
    """The neuron node of a layer whose neurons have `shape` (a convolution's per-channel values repeated over
    its positions)."""
    size = shape
    beta = np.broadcast_to(lif.beta.detach().clamp(0, 1).cpu().double().numpy(), size).copy()
    threshold = np.broadcast_to(lif.threshold.detach().cpu().double().numpy(), size).copy()
    with np.errstate(divide="ignore"):
        tau = dt / (1.0 - beta)  # beta = 1 (no leak): tau = inf
    zeros = np.zeros(size)
    meta = {"reset": spec.reset, "reset_delay": bool(spec.reset_delay)}
    if lif.model == "synaptic":
        alpha = float(lif.alpha)
        tau_syn = np.full(size, dt / (1.0 - alpha) if alpha < 1 else np.inf)
        w_in = tau_syn / dt
        if leaky_integrator:
            return nir.CubaLI(tau_syn=tau_syn, tau_mem=tau, r=tau / dt, v_leak=zeros, w_in=w_in, metadata=meta)
        return nir.CubaLIF(tau_syn=tau_syn, tau_mem=tau, r=tau / dt, v_leak=zeros, v_threshold=threshold,
                           v_reset=zeros.copy(), w_in=w_in, metadata=meta)
    if leaky_integrator:
        return nir.LI(tau=tau, r=tau / dt, v_leak=zeros, metadata=meta)
    return nir.LIF(tau=tau, r=tau / dt, v_leak=zeros, v_threshold=threshold, v_reset=zeros.copy(), metadata=meta)


# --------------------------------------------------------------------------- import

SUPPORTED = ("Input -> (Conv2d -> [AvgPool2d|SumPool2d] -> LIF|CubaLIF)* -> [Flatten] -> "
             "(Affine|Linear -> LIF|CubaLIF)* -> Affine|Linear -> [LIF|CubaLIF|LI|CubaLI] -> Output")


def from_nir(graph, source: str, dt: float | None = None) -> tuple[dict, dict]:
    """(a train config dict, the network's state_dict) from a NIRGraph of the supported chain."""
    nir = require_nir()
    metadata = dict(graph.metadata or {})
    dt = float(dt if dt is not None else metadata.get("dt", DEFAULT_DT))
    chain = _chain(graph, source)
    spiking, weights = (nir.LIF, nir.CubaLIF), (nir.Affine, nir.Linear)
    known = (nir.Input, nir.Output, nir.Conv2d, nir.AvgPool2d, nir.SumPool2d, nir.Flatten, *weights, *spiking,
             nir.LI, nir.CubaLI)
    odd = next(((name, type(node).__name__) for name, node in chain if not isinstance(node, known)), None)
    if odd:
        raise NIRFileError(f"node {odd[0]!r} is a {odd[1]}, which snnrun does not support; snnrun imports "
                           f"{SUPPORTED}", source=source)
    broken = NIRFileError(f"the chain {' -> '.join(type(node).__name__ for _, node in chain)} is not one snnrun "
                          f"builds; snnrun imports {SUPPORTED}", source=source)
    if not (isinstance(chain[0][1], nir.Input) and isinstance(chain[-1][1], nir.Output)):
        raise broken
    body, state, layers, base = chain[1:-1], {}, [], None

    def at(j: int, kinds) -> bool:
        return j < len(body) and isinstance(body[j][1], kinds)

    def spiking_layer(j: int, item: dict, weight: np.ndarray, bias: np.ndarray, channels: int | None) -> None:
        """The neurons at body[j] after the synapses `weight`, as layer `item` (its neuron keys added)."""
        nonlocal base
        name, node = body[j]
        spec, values, scale = _neuron_spec(nir, node, name, dt, source, integrator=False, channels=channels)
        layer = len(layers)
        factor = scale.reshape(-1, *[1] * (weight.ndim - 1))
        state[f"linears.{layer}.weight"], state[f"linears.{layer}.bias"] = weight * factor, bias * scale
        state.update({f"neurons.{layer}.{k}": v.reshape(-1, 1, 1) if channels else v for k, v in values.items()})
        layers.append({**item, **spec})
        base = base or spec

    i = 0
    while at(i, nir.Conv2d):
        item, weight, bias = _conv_layer(*body[i], source)
        i += 1
        if at(i, (nir.AvgPool2d, nir.SumPool2d)):
            item["pool"], item["pool_kind"], factor = _pool_of(*body[i], source)
            weight, bias, i = weight * factor, bias * factor, i + 1
        if not at(i, spiking):
            raise broken
        spiking_layer(i, item, weight, bias, channels=weight.shape[0])
        i += 1
    convolutional = bool(layers)
    if at(i, nir.Flatten):
        i += 1
    while at(i, weights) and at(i + 1, spiking) and i + 2 < len(body):  # a hidden dense layer, not the readout
        weight, bias = _weights(body[i][1])
        spiking_layer(i + 1, {"linear" if convolutional else "size": weight.shape[0]}, weight, bias, channels=None)
        i += 2
    tail = body[i:]
    if not (tail and isinstance(tail[0][1], weights) and len(tail) <= 2
            and (len(tail) == 1 or isinstance(tail[1][1], (*spiking, nir.LI, nir.CubaLI)))):
        raise broken
    weight, bias = _weights(tail[0][1])
    readout, output = "mean_current", None
    if len(tail) == 2:
        name, node = tail[1]
        integrator = isinstance(node, (nir.LI, nir.CubaLI))
        output, values, scale = _neuron_spec(nir, node, name, dt, source, integrator=integrator)
        weight, bias = weight * scale[:, None], bias * scale
        state.update({f"output_neurons.{k}": v for k, v in values.items()})
        readout = "membrane" if integrator else str(metadata.get("readout", "rate"))
        if readout == "mean_current":
            readout = "rate"
    state["readout.weight"], state["readout.bias"] = weight, bias
    model = {"outputs": int(weight.shape[0]), "readout": readout,
             "membrane_reduce": str(metadata.get("membrane_reduce", "sum"))}
    if convolutional:
        model.update(input_shape=[int(side) for side in np.asarray(chain[0][1].input_type["input"]).ravel()],
                     layers=layers)
    else:
        model.update(input_size=int(state.get("linears.0.weight", weight).shape[1]), hidden=layers)
    if base is not None:
        model["neuron"] = {k: v for k, v in base.items() if k not in ("learn_beta", "learn_threshold")}
    if output is not None and readout != "mean_current":
        model["output"] = output
    config = {"model": model,
              "encoding": {"kind": str(metadata.get("encoding", "direct")),
                           "time_steps": int(metadata.get("time_steps", 25)),
                           "gain": float(metadata.get("encoding_gain", 1.0))},
              "train": {"loss": "ce"}}
    if "dataset" in metadata:
        config["data"] = {"dataset": str(metadata["dataset"])}
    return config, {k: torch.tensor(np.asarray(v), dtype=torch.float32) for k, v in state.items()}


def _conv_layer(name: str, node, source: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """A Conv2d node as a model.layers item {conv, kernel, stride, padding}, its weight and its bias."""
    weight = np.asarray(node.weight, dtype=np.float64)
    bias = np.zeros(weight.shape[0]) if node.bias is None else np.asarray(node.bias, dtype=np.float64)
    kernel = weight.shape[2:]
    padding = node.padding
    same = isinstance(padding, str) and padding == "same"
    if isinstance(padding, str):  # 'valid', or 'same' (odd kernel, stride 1)
        padding = (0, 0) if padding == "valid" else tuple(side // 2 for side in kernel)
    stride, dilation = (tuple(np.broadcast_to(np.asarray(v), (2,)).tolist()) for v in (node.stride, node.dilation))
    padding = tuple(np.broadcast_to(np.asarray(padding), (2,)).tolist())
    square = kernel[0] == kernel[1] and stride[0] == stride[1] and padding[0] == padding[1]
    if not square or dilation != (1, 1) or int(node.groups) != 1 or (same and (stride != (1, 1) or kernel[0] % 2 == 0)):
        raise NIRFileError(f"node {name!r}: kernel {tuple(kernel)}, stride {stride}, padding {node.padding}, "
                           f"dilation {dilation}, groups {node.groups}; snnrun builds square kernels, strides and "
                           "paddings, without dilation or groups", source=source)
    item = {"conv": int(weight.shape[0]), "kernel": int(kernel[0]), "stride": int(stride[0]),
            "padding": int(padding[0])}
    return item, weight, bias


def _pool_of(name: str, node, source: str) -> tuple[int, str, float]:
    """(pool size, pool_kind, the factor folded into the convolution) of an AvgPool2d or SumPool2d node: a sum
    over k x k is k² times their average, and pooling is linear in the convolution's output."""
    size, stride, padding = (np.broadcast_to(np.asarray(v), (2,)) for v in (node.kernel_size, node.stride,
                                                                             node.padding))
    if size[0] != size[1] or not np.array_equal(stride, size) or np.any(padding != 0):
        raise NIRFileError(f"node {name!r}: pooling {size.tolist()} with stride {stride.tolist()} and padding "
                           f"{padding.tolist()}; snnrun pools k x k windows with stride k and no padding",
                           source=source)
    factor = float(size[0] * size[1]) if type(node).__name__ == "SumPool2d" else 1.0
    return int(size[0]), "avg", factor


def _chain(graph, source: str) -> list[tuple[str, object]]:
    """The nodes from the input to the output, refusing branches and cycles."""
    successors: dict[str, list[str]] = {}
    for a, b in graph.edges:
        successors.setdefault(a, []).append(b)
    inputs = [name for name, node in graph.nodes.items() if type(node).__name__ == "Input"]
    if len(inputs) != 1:
        raise NIRFileError(f"expected one Input node, found {len(inputs)}; snnrun imports {SUPPORTED}", source=source)
    chain, name = [], inputs[0]
    while True:
        chain.append((name, graph.nodes[name]))
        after = successors.get(name, [])
        if len(after) > 1 or len(chain) > len(graph.nodes):
            raise NIRFileError(f"node {name!r} branches or loops; snnrun imports a chain {SUPPORTED}", source=source)
        if not after:
            return chain
        name = after[0]
        if name not in graph.nodes:
            raise NIRFileError(f"an edge leads to {name!r}, which is not a node of the graph", source=source)


def _weights(node) -> tuple[np.ndarray, np.ndarray]:
    weight = np.asarray(node.weight, dtype=np.float64)
    bias = np.asarray(getattr(node, "bias", None) if getattr(node, "bias", None) is not None
                      else np.zeros(weight.shape[0]), dtype=np.float64)
    if weight.ndim != 2:
        raise NIRFileError(f"a weight of shape {weight.shape} is not a dense layer", source="nir")
    return weight, bias


def _short(value: float) -> float:
    """The shortest decimal that is the same float32 (0.9, not 0.8999999761581421, for a float32 0.9)."""
    return float(str(np.float32(value)))


def _neuron_spec(nir, node, name: str, dt: float, source: str, integrator: bool,
                 channels: int | None = None) -> tuple[dict, dict, np.ndarray]:
    """(neuron config keys, per-neuron tensors for the state_dict, the factor folded into the incoming weights).
    channels: the neurons of a convolution, whose values must be the same at every position of a channel; the
    tensors and the factor are then one per channel."""
    synaptic = isinstance(node, (nir.CubaLIF, nir.CubaLI))

    def field_of(field: str) -> np.ndarray:
        return _per_channel(getattr(node, field), channels, name, field, source)

    tau = field_of("tau_mem" if synaptic else "tau")
    size = tau.size
    leak = field_of("v_leak")
    if not np.allclose(leak, 0):
        raise NIRFileError(f"node {name!r} has v_leak != 0, which snnrun's neurons do not have", source=source)
    beta = np.where(np.isinf(tau), 1.0, 1.0 - dt / tau)
    if np.any(beta < 0) or np.any(beta > 1):
        raise NIRFileError(f"node {name!r}: tau below dt = {dt:g} s gives a decay outside [0, 1]; pass a smaller "
                           "--dt", source=source)
    r = np.broadcast_to(field_of("r"), (size,))
    with np.errstate(invalid="ignore"):
        scale = np.where(np.isinf(tau), r * dt, r * dt / tau)  # what one step adds per unit of input
    meta = dict(getattr(node, "metadata", None) or {})
    spec = {"model": "synaptic" if synaptic else "leaky",
            "reset": "none" if integrator else str(meta.get("reset", "zero")),
            "reset_delay": bool(meta.get("reset_delay", False))}
    values = {}
    if synaptic:
        tau_syn = np.broadcast_to(field_of("tau_syn"), (size,))
        alpha = np.where(np.isinf(tau_syn), 1.0, 1.0 - dt / tau_syn)
        if np.unique(alpha).size != 1:
            raise NIRFileError(f"node {name!r} has one tau_syn per neuron; snnrun's synaptic model shares one",
                               source=source)
        spec["alpha"] = _short(alpha[0])
        w_in = np.broadcast_to(field_of("w_in"), (size,))
        scale = scale * np.where(np.isinf(tau_syn), w_in * dt, w_in * dt / tau_syn)
    if np.unique(beta).size == 1:
        spec["beta"] = _short(beta[0])
    else:
        spec.update(beta=None, learn_beta=True)
        values["beta"] = beta
    if integrator:
        spec["threshold"] = 1.0
    else:
        reset = field_of("v_reset") if node.v_reset is not None else np.zeros(1)
        if not np.allclose(reset, 0):
            raise NIRFileError(f"node {name!r} has v_reset != 0, which snnrun's neurons do not have",
                               source=source)
        threshold = np.broadcast_to(field_of("v_threshold"), (size,))
        if np.unique(threshold).size == 1:
            spec["threshold"] = _short(threshold[0])
        else:
            spec["learn_threshold"] = True
            values["threshold"] = threshold
    if np.allclose(scale, 1.0, rtol=1e-12, atol=0):
        scale = np.ones(size)
    return spec, values, scale


def _per_channel(value, channels: int | None, name: str, field: str, source: str) -> np.ndarray:
    """A neuron node's field as a flat array: every neuron's value, or with `channels`, one value per channel
    (NIR gives a convolution's neurons as (channels, height, width) arrays)."""
    array = np.asarray(value, dtype=np.float64)
    if channels is None or array.size == 1:
        return array.ravel()
    if array.shape[0] != channels:
        raise NIRFileError(f"node {name!r}: {field} has shape {array.shape}, not one value per neuron of "
                           f"{channels} channels", source=source)
    per = array.reshape(channels, -1)
    if not np.all(per == per[:, :1]):
        raise NIRFileError(f"node {name!r}: {field} differs between the positions of a channel; snnrun's "
                           "convolution neurons have one value per channel", source=source)
    return per[:, 0].copy()


def read(path: Path):
    nir = require_nir()
    try:
        return nir.read(path)
    except FileNotFoundError:
        raise NIRFileError("no such file", source=str(path)) from None
    except Exception as error:  # h5py raises OSError/KeyError/ValueError for foreign or damaged files
        raise NIRFileError(f"not a NIR graph ({type(error).__name__}: {str(error)[:200]})", source=str(path)) from None


def write(graph, path: Path) -> None:
    nir = require_nir()
    nir.write(path, graph)
