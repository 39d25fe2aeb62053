"""NIR (Neural Intermediate Representation): a trained network to a `nir.NIRGraph` and back.

The graph is a chain  Input -> (Affine -> LIF|CubaLIF)* -> Affine -> [LIF|CubaLIF|LI|CubaLI] -> Output.
NIR states neurons as ODEs in seconds,  tau dv/dt = (v_leak - v) + r I  (CubaLIF: tau_syn dI/dt = -I + w_in S
first). We map our per-step neurons with forward Euler at an explicit step dt (in the graph's metadata), as
snnTorch, Norse and nirtorch do:

    beta  = 1 - dt/tau      tau     = dt / (1 - beta)        r = tau / dt  (each step adds the input unscaled)
    alpha = 1 - dt/tau_syn  tau_syn = dt / (1 - alpha)       w_in = tau_syn / dt

v_leak = 0, v_reset = 0. NIR's LIF resets to v_reset in the step that fires; our reset: subtract and snnTorch's
delayed reset (reset_delay: true) have no NIR field, so each neuron node carries them in its metadata
(`reset`, `reset_delay`): snnrun reads them back exactly, other tools see a zero reset. A membrane readout
whose output neurons never reset is exported as an LI (CubaLI) node; a mean-current readout ends at the
Affine (the mean over time is the reader's job). The encoding and number of steps go in the graph metadata.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from snnrun import __version__
from snnrun.config import NIRFileError, UserError
from snnrun.network import Network

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
    if cfg.convolutional:
        raise UserError("networks with convolutions cannot be exported to NIR yet (only linear layers)",
                        source="snnrun export")
    nodes = {"input": nir.Input(input_type={"input": np.array([cfg.input_size])})}
    chain = ["input"]
    layers = list(zip(model.linears, model.neurons, [layer.neuron for layer in cfg.hidden], strict=True))
    for i, (linear, lif, spec) in enumerate(layers, 1):
        nodes[f"fc{i}"] = _affine(nir, linear)
        nodes[f"lif{i}"] = _neuron(nir, lif, spec, dt, leaky_integrator=False)
        chain += [f"fc{i}", f"lif{i}"]
    nodes["fc_out"] = _affine(nir, model.readout)
    chain.append("fc_out")
    if model.output_neurons is not None:
        integrator = cfg.readout == "membrane" and cfg.output.reset == "none"
        nodes["lif_out"] = _neuron(nir, model.output_neurons, cfg.output, dt, leaky_integrator=integrator)
        chain.append("lif_out")
    nodes["output"] = nir.Output(output_type={"output": np.array([cfg.outputs])})
    chain.append("output")
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
    return nir.NIRGraph(nodes=nodes, edges=list(zip(chain[:-1], chain[1:], strict=True)), metadata=metadata)


def _affine(nir, linear: torch.nn.Linear):
    return nir.Affine(weight=linear.weight.detach().cpu().double().numpy(),
                      bias=linear.bias.detach().cpu().double().numpy())


def _neuron(nir, lif, spec, dt: float, leaky_integrator: bool):
    size = lif.size
    beta = np.broadcast_to(lif.beta.detach().clamp(0, 1).cpu().double().numpy(), (size,)).copy()
    threshold = np.broadcast_to(lif.threshold.detach().cpu().double().numpy(), (size,)).copy()
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

SUPPORTED = "Input -> (Affine|Linear -> LIF|CubaLIF)* -> Affine|Linear -> [LIF|CubaLIF|LI|CubaLI] -> Output"


def from_nir(graph, source: str, dt: float | None = None) -> tuple[dict, dict]:
    """(a train config dict, the network's state_dict) from a NIRGraph of the supported chain."""
    nir = require_nir()
    metadata = dict(graph.metadata or {})
    dt = float(dt if dt is not None else metadata.get("dt", DEFAULT_DT))
    chain = _chain(graph, source)
    kinds = [type(node).__name__ for _, node in chain]
    neurons = (nir.LIF, nir.CubaLIF)
    # Input, then pairs of (weights, neurons), then the readout's weights, an optional output neuron, Output
    body = chain[1:-1]
    last_is_neuron = bool(body) and isinstance(body[-1][1], (*neurons, nir.LI, nir.CubaLI))
    hidden_pairs, tail = (body[:-2], body[-2:]) if last_is_neuron else (body[:-1], body[-1:])
    shapes_ok = (isinstance(chain[0][1], nir.Input) and isinstance(chain[-1][1], nir.Output) and tail
                 and len(hidden_pairs) % 2 == 0
                 and all(isinstance(n, (nir.Affine, nir.Linear)) for _, n in hidden_pairs[0::2])
                 and all(isinstance(n, neurons) for _, n in hidden_pairs[1::2])
                 and isinstance(tail[0][1], (nir.Affine, nir.Linear)))
    if not shapes_ok:
        odd = next(((name, type(node).__name__) for name, node in chain
                    if not isinstance(node, (nir.Input, nir.Output, nir.Affine, nir.Linear, *neurons, nir.LI,
                                             nir.CubaLI))), None)
        detail = f"node {odd[0]!r} is a {odd[1]}, which snnrun does not support" if odd else \
            f"the chain {' -> '.join(kinds)} is not one snnrun builds"
        raise NIRFileError(f"{detail}; snnrun imports {SUPPORTED}", source=source)
    state, hidden, base = {}, [], None
    for i in range(0, len(hidden_pairs), 2):
        (_, weights), (nname, node) = hidden_pairs[i], hidden_pairs[i + 1]
        weight, bias = _weights(weights)
        spec, values, scale = _neuron_spec(nir, node, nname, dt, source, integrator=False)
        layer = i // 2
        state[f"linears.{layer}.weight"], state[f"linears.{layer}.bias"] = weight * scale[:, None], bias * scale
        state.update({f"neurons.{layer}.{k}": v for k, v in values.items()})
        hidden.append({"size": weight.shape[0], **spec})
        base = base or spec
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
    model = {"input_size": int(state.get("linears.0.weight", weight).shape[1]), "hidden": hidden,
             "outputs": int(weight.shape[0]), "readout": readout,
             "membrane_reduce": str(metadata.get("membrane_reduce", "sum"))}
    if base is not None:
        model["neuron"] = {k: v for k, v in base.items() if k not in ("learn_beta", "learn_threshold")}
    if output is not None:
        model["output"] = output
    if readout == "mean_current" or output is None:
        model.pop("output", None)
    config = {"model": model,
              "encoding": {"kind": str(metadata.get("encoding", "direct")),
                           "time_steps": int(metadata.get("time_steps", 25)),
                           "gain": float(metadata.get("encoding_gain", 1.0))},
              "train": {"loss": "ce"}}
    return config, {k: torch.tensor(np.asarray(v), dtype=torch.float32) for k, v in state.items()}


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


def _neuron_spec(nir, node, name: str, dt: float, source: str, integrator: bool) -> tuple[dict, dict, np.ndarray]:
    """(neuron config keys, per-neuron tensors for the state_dict, the factor folded into the incoming weights)."""
    synaptic = isinstance(node, (nir.CubaLIF, nir.CubaLI))
    tau = np.asarray(node.tau_mem if synaptic else node.tau, dtype=np.float64).ravel()
    size = tau.size
    leak = np.asarray(node.v_leak, dtype=np.float64)
    if not np.allclose(leak, 0):
        raise NIRFileError(f"node {name!r} has v_leak != 0, which snnrun's neurons do not have", source=source)
    beta = np.where(np.isinf(tau), 1.0, 1.0 - dt / tau)
    if np.any(beta < 0) or np.any(beta > 1):
        raise NIRFileError(f"node {name!r}: tau below dt = {dt:g} s gives a decay outside [0, 1]; pass a smaller "
                           "--dt", source=source)
    r = np.broadcast_to(np.asarray(node.r, dtype=np.float64), (size,))
    with np.errstate(invalid="ignore"):
        scale = np.where(np.isinf(tau), r * dt, r * dt / tau)  # what one step adds per unit of input
    meta = dict(getattr(node, "metadata", None) or {})
    spec = {"model": "synaptic" if synaptic else "leaky",
            "reset": "none" if integrator else str(meta.get("reset", "zero")),
            "reset_delay": bool(meta.get("reset_delay", False))}
    values = {}
    if synaptic:
        tau_syn = np.broadcast_to(np.asarray(node.tau_syn, dtype=np.float64), (size,))
        alpha = np.where(np.isinf(tau_syn), 1.0, 1.0 - dt / tau_syn)
        if np.unique(alpha).size != 1:
            raise NIRFileError(f"node {name!r} has one tau_syn per neuron; snnrun's synaptic model shares one",
                               source=source)
        spec["alpha"] = _short(alpha[0])
        w_in = np.broadcast_to(np.asarray(node.w_in, dtype=np.float64), (size,))
        scale = scale * np.where(np.isinf(tau_syn), w_in * dt, w_in * dt / tau_syn)
    if np.unique(beta).size == 1:
        spec["beta"] = _short(beta[0])
    else:
        spec.update(beta=None, learn_beta=True)
        values["beta"] = beta
    if integrator:
        spec["threshold"] = 1.0
    else:
        reset = np.asarray(node.v_reset if node.v_reset is not None else 0.0, dtype=np.float64)
        if not np.allclose(reset, 0):
            raise NIRFileError(f"node {name!r} has v_reset != 0, which snnrun's neurons do not have",
                               source=source)
        threshold = np.broadcast_to(np.asarray(node.v_threshold, dtype=np.float64), (size,))
        if np.unique(threshold).size == 1:
            spec["threshold"] = _short(threshold[0])
        else:
            spec["learn_threshold"] = True
            values["threshold"] = threshold
    if np.allclose(scale, 1.0, rtol=1e-12, atol=0):
        scale = np.ones(size)
    return spec, values, scale


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
