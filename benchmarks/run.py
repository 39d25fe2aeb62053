"""snnrun against its peers on the same work, in one process run: `make bench` or `python benchmarks/run.py`.

Rows (each peer's network is written in its own idiom in benchmarks/peers.py):
- roofline: float32 GEMM GFLOP/s of this machine;
- train: snnTorch's tutorial 5 (784-1000-10 Leaky beta 0.95, Bernoulli rate input from real MNIST digits,
  25 steps, batch 128, membrane cross-entropy summed over steps, Adam 5e-4) against snnrun, and the same network
  with SpikingJelly's multi-step LIFNode against snnrun with `reset_delay: false`; same initial weights, same
  input spikes, first-batch losses checked within 1e-4 before timing. Norse's tutorial network (784-128-10,
  10 steps, constant input recomputed through the first layer every step, batch 32) against
  configs/norse_tutorial.yaml's network (timed only: the neuron dynamics differ, see the README);
- conv: snnTorch's tutorial-6 CSNN (12C5-MP2-64C5-MP2-FC10, 50 steps, batch 128, ce_rate_loss, Adam 1e-2) against
  configs/snntorch_csnn.yaml's network, same initial weights and digits, first-batch losses checked within 1e-4;
- crossover: the first layer's forward + weight gradient, dense GEMM against snnrun's gather over spikes, by
  input spike density;
- open-neuromorphic: one Linear + LIF layer, batch 16, 500 steps, forward + backward of output.sum(), for
  snnrun and each installed peer (16,384 neurons on a GPU; 4,096 on a CPU, where 16,384 takes minutes a pass);
- simulate: `lif` with 10,000 and 100,000 neurons for 2,000 steps against Brian2 (its default code generation
  target; its first, compiling run reported apart), with equal spike counts required, on snnrun's numba engine
  (the compiled kernel) and its torch engine; beside them the roofline (the time to read and write the neurons'
  state once a step and write each spike as a byte, at the bandwidth measured for a buffer of the state's size)
  and the first simulate() of a fresh process on either engine (numba imported and the kernel loaded from the
  cache: what a CLI run pays);
- stdp: Diehl & Cook's network with 400 excitatory neurons learning online from MNIST digits, samples/s: BindsNET's
  DiehlAndCook2015 (its eth_mnist example's network, here at dt 0.5 ms for 350 ms a digit: 700 steps, state reset
  between digits) against `snnrun train configs/stdp_mnist.yaml` with 400 neurons run as a user runs it (a fresh
  `snnrun` process; its training samples/s from metrics.jsonl: 700 steps of input and 300 of rest a digit, retries
  included), and the compiled loop's first call in a fresh process (the kernel loaded from numba's cache);
- startup: wall time of the `snnrun` command in a fresh process, against its goal: `snnrun --help` (0.5 s), the
  default `snnrun simulate` (one neuron, 200 steps; 2 s), and a 6-member simulate sweep (each member after the
  first should cost less than a fresh `snnrun simulate`: no process start-up per member). Each runs in a new
  temporary folder holding a copy of configs/, with OMP_NUM_THREADS set to --threads.

Timings are medians after warm-up (a training row times the peer's and snnrun's batches in turns of a quarter
second, so a slow spell of the machine slows both), with a fixed number of torch threads (`--threads`, default
2), and never two benchmarks at once. glibc's malloc keeps freed memory for every peer alike, as the snnrun
command sets it (`snnrun.memory`; `--default-malloc` leaves it as it is). Results go to
benchmarks/results/<hostname>-<date>[-cuda].json and a rich table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import peers
import torch
from rich.console import Console
from rich.table import Table

from snnrun.memory import keep_freed_memory
from snnrun.network import LIFLayer, Network
from snnrun.schema import TrainedLeaky, parse_model, parse_simulation
from snnrun.simulation import simulate
from snnrun.sparse import _SpikeLinear, spike_linear
from snnrun.surrogate import Surrogate
from snnrun.training import TrainSettings, loss_of, make_optimizer, small_network_threads, using_threads

RESULTS = Path(__file__).resolve().parent / "results"
console = Console(width=None if sys.stdout.isatty() else 150)  # a log file gets the table unwrapped
DEVICE = torch.device("cpu")


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(fn) -> float:
    """Seconds one call of fn takes (the device synchronised before and after)."""
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn) for _ in range(repeats))


def paired_median_seconds(fn_a, fn_b, repeats: int, warmup: int = 2, min_seconds: float = 3.0,
                          turn_seconds: float = 0.25) -> tuple[float, float]:
    """Medians of fn_a and fn_b timed in turns of about `turn_seconds` each (a a a, b b b, a a a, ...), so
    that a slow spell of a shared machine slows both alike while each runs back to back as in training: at
    least `repeats` calls of each, and more until the turns took `min_seconds` (short steps)."""
    fns = (fn_a, fn_b)
    times: tuple[list, list] = ([], [])
    per_turn = []
    for fn in fns:
        last = [timed(fn) for _ in range(warmup)][-1]
        per_turn.append(max(1, round(turn_seconds / max(last, 1e-6))))
    while min(len(t) for t in times) < repeats or sum(map(sum, times)) < min_seconds:
        for fn, record, calls in zip(fns, times, per_turn, strict=True):
            record.extend(timed(fn) for _ in range(calls))
    return statistics.median(times[0]), statistics.median(times[1])


def installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- roofline


def roofline(size: int = 2048) -> dict:
    if DEVICE.type == "cuda":
        size = 8192
    a, b = torch.randn(size, size, device=DEVICE), torch.randn(size, size, device=DEVICE)
    seconds = median_seconds(lambda: a @ b, repeats=10)
    return {"gflops": 2 * size**3 / seconds / 1e9, "size": size}


# --------------------------------------------------------------------------- training


TUTORIAL5 = {"hidden": [1000], "neuron": {"model": "leaky", "beta": 0.95}, "surrogate": {"kind": "atan", "slope": 2.0},
             "readout": "rate"}
NORSE = {"hidden": [128], "neuron": {"model": "synaptic", "alpha": 0.8, "beta": 0.9, "reset": "zero"},
         "surrogate": {"kind": "fast_sigmoid", "slope": 100.0}, "readout": "mean_current"}
STEPS, BATCH = 25, 128


def mnist_batch(batch: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """The first training digits as pixel intensities in [0, 1], and their labels (`make data` provides them)."""
    from snnrun.data import load_mnist

    train, _ = load_mnist("data")
    return train.images[:batch].reshape(batch, -1).float() / 255, train.labels[:batch]


def on_threads(fn, threads: int):
    """fn run with `threads` torch threads (and the earlier count restored after each call)."""
    def run():
        with using_threads(threads):
            return fn()
    return run


def step_of(model, optimizer, loss_fn, x, y):
    def step():
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss
    return step


def membrane_ce(output, y):
    """snnTorch tutorial 5's loss: cross-entropy of the output membrane at every step, summed over steps."""
    _, mem = output
    return sum(torch.nn.functional.cross_entropy(m, y) for m in mem)


def copy_weights(ours: Network, first: torch.nn.Linear, last: torch.nn.Linear) -> None:
    with torch.no_grad():
        ours.linears[0].weight.copy_(first.weight)
        ours.readout.weight.copy_(last.weight)
        for mine, theirs in ((ours.linears[0], first), (ours.readout, last)):
            if theirs.bias is None:
                mine.bias.zero_()
            else:
                mine.bias.copy_(theirs.bias)


def train_row(peer: str, repeats: int) -> dict:
    module = {"snnTorch": "snntorch", "SpikingJelly": "spikingjelly", "Norse": "norse"}[peer]
    if not installed(module):
        return {"peer": peer, "skipped": f"{module} is not installed (make bench installs it)"}
    torch.manual_seed(0)
    if peer == "Norse":
        theirs, spec, steps, batch = peers.norse_tutorial(), NORSE, 10, 32
    else:
        theirs = peers.snntorch_tutorial5() if peer == "snnTorch" else peers.spikingjelly_tutorial5()
        spec, steps, batch = TUTORIAL5, STEPS, BATCH
        if peer == "SpikingJelly":
            spec = {**spec, "neuron": {**spec["neuron"], "reset_delay": False}}
    ours = Network(parse_model(spec, "model", "bench"), steps)
    first, last = (theirs.fc_in, theirs.fc_out) if peer == "Norse" else (theirs.fc1, theirs.fc2)
    copy_weights(ours, first, last)
    theirs, ours = theirs.to(DEVICE), ours.to(DEVICE)
    pixels, y = (t.to(DEVICE) for t in mnist_batch(batch))
    lr = 5e-4 if peer != "Norse" else 2e-3
    opt_theirs = torch.optim.Adam(theirs.parameters(), lr=lr)
    opt_ours = make_optimizer(ours, TrainSettings(optimizer="adam", lr=lr))  # snnrun's own: fused Adam
    if peer == "Norse":  # constant current, x32 as Norse's tutorial scales it; ours runs the first layer once
        x_theirs, x_ours = (32 * pixels).expand(steps, -1, -1), 3.2 * pixels

        def loss_theirs(output, y):  # Norse's decoder: max over time, log-softmax, NLL
            voltages = output[1]
            return torch.nn.functional.nll_loss(torch.log_softmax(voltages.max(0).values, 1), y)

        def loss_ours(output, y):
            return loss_of(output, y, TrainSettings(loss="ce"), steps)
    else:
        x_theirs = x_ours = (torch.rand(steps, batch, 784, device=DEVICE) < pixels).float()  # the same spikes
        loss_theirs = membrane_ce

        def loss_ours(output, y):
            return loss_of(output, y, TrainSettings(loss="ce_membrane"), steps)
    step_theirs = step_of(theirs, opt_theirs, loss_theirs, x_theirs, y)
    step_ours = step_of(ours, opt_ours, loss_ours, x_ours, y)
    threads = small_network_threads(ours.cfg, batch) if DEVICE.type == "cpu" else None  # as `snnrun train`
    if threads:
        step_ours = on_threads(step_ours, threads)
    first_theirs, first_ours = float(step_theirs().detach()), float(step_ours().detach())
    same = peer != "Norse"
    if same and abs(first_theirs - first_ours) > 1e-4:
        raise SystemExit(f"{peer}: first-batch losses differ: {first_theirs} vs snnrun {first_ours}")
    t_theirs, t_ours = paired_median_seconds(step_theirs, step_ours, repeats)
    return {"peer": peer, "network": "norse tutorial 784-128-10, 10 steps, batch 32" if peer == "Norse" else
            "tutorial 5, 784-1000-10, 25 steps, batch 128", "same_numbers": same,
            "first_loss_peer": first_theirs, "first_loss_snnrun": first_ours,
            "peer_samples_per_s": batch / t_theirs, "snnrun_samples_per_s": batch / t_ours, "ratio": t_theirs / t_ours,
            "snnrun_threads": threads or torch.get_num_threads()}


def csnn_row(repeats: int) -> dict:
    """snnTorch's tutorial-6 CSNN against configs/snntorch_csnn.yaml's network: the same initial weights, the same
    digits as a static input for 50 steps, snnTorch's ce_rate_loss (snnrun's ce_rate_steps), Adam 1e-2."""
    if not installed("snntorch"):
        return {"peer": "snnTorch", "skipped": "snntorch is not installed (make bench installs it)"}
    from snntorch import functional as SF

    from snnrun.config import config_path, load_yaml
    from snnrun.schema import parse_train

    cfg = parse_train(load_yaml(config_path("snntorch_csnn")), "snntorch_csnn.yaml")
    steps, batch = cfg.encoding.time_steps, cfg.train.batch_size
    torch.manual_seed(0)
    theirs = peers.snntorch_csnn()
    ours = Network(cfg.model, steps)
    with torch.no_grad():
        for mine, their in zip([*ours.linears, ours.readout], [theirs.conv1, theirs.conv2, theirs.fc], strict=True):
            mine.weight.copy_(their.weight)
            mine.bias.copy_(their.bias)
    theirs, ours = theirs.to(DEVICE), ours.to(DEVICE)
    pixels, y = (t.to(DEVICE) for t in mnist_batch(batch))
    opt_theirs = torch.optim.Adam(theirs.parameters(), lr=cfg.train.lr, betas=(0.9, 0.999))
    opt_ours = make_optimizer(ours, cfg.train)
    ce_rate = SF.ce_rate_loss()
    step_theirs = step_of(lambda x: theirs(x, steps), opt_theirs, lambda out, y: ce_rate(out[0], y),
                          pixels.reshape(batch, 1, 28, 28), y)
    step_ours = step_of(ours, opt_ours, lambda out, y: loss_of(out, y, cfg.train, steps), pixels * cfg.encoding.gain,
                        y)
    threads = small_network_threads(ours.cfg, batch) if DEVICE.type == "cpu" else None
    if threads:
        step_ours = on_threads(step_ours, threads)
    first_theirs, first_ours = float(step_theirs().detach()), float(step_ours().detach())
    if abs(first_theirs - first_ours) > 1e-4:
        raise SystemExit(f"snnTorch CSNN: first-batch losses differ: {first_theirs} vs snnrun {first_ours}")
    t_theirs, t_ours = paired_median_seconds(step_theirs, step_ours, repeats, min_seconds=10.0)
    t_convs = convolutions_alone(ours, pixels, steps, repeats)
    return {"peer": "snnTorch", "network": f"tutorial 6 CSNN 12C5-MP2-64C5-MP2-FC10, {steps} steps, batch {batch}",
            "same_numbers": True, "first_loss_peer": first_theirs, "first_loss_snnrun": first_ours,
            "peer_samples_per_s": batch / t_theirs, "snnrun_samples_per_s": batch / t_ours, "ratio": t_theirs / t_ours,
            "snnrun_threads": threads or torch.get_num_threads(), "peer_batch_s": t_theirs, "snnrun_batch_s": t_ours,
            "convolutions_s": t_convs, "ceiling": t_theirs / t_convs}


def convolutions_alone(ours: Network, pixels: torch.Tensor, steps: int, repeats: int) -> float:
    """Seconds a batch's convolutions alone take in snnrun's network (oneDNN, the library snnTorch's run uses too):
    the first on the images once (forward and weight gradient), the second on (steps x batch) spike maps
    (forward, input and weight gradients), in the layouts the network uses. snnTorch's batch time over this is
    the most any snnrun could gain over it, with everything else in its batch taking no time."""
    first, second = ours.linears[0], ours.linears[1]
    images = pixels.reshape(-1, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        shape = torch.nn.functional.max_pool2d(first(images), 2).shape
    g = torch.Generator(device=DEVICE).manual_seed(0)
    spikes = (torch.rand(steps * shape[0], *shape[1:], generator=g, device=DEVICE) < 0.1).float()
    spikes = spikes.contiguous(memory_format=torch.channels_last).requires_grad_()
    params = [p for conv in (first, second) for p in conv.parameters()]

    def both():
        out = first(images).sum() + second(spikes).sum()
        torch.autograd.grad(out, [spikes, *params])

    return median_seconds(both, repeats)


# --------------------------------------------------------------------------- sparse first layer: cross-over


def crossover(repeats: int) -> list[dict]:
    """Forward + weight gradient of the tutorial-5 first layer (3,200 rows x 784 -> 1,000), dense vs gathered."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(1000, 784, generator=g, requires_grad=True)
    upstream = torch.randn(STEPS * BATCH, 1000, generator=g)
    rows = []
    for density in (0.02, 0.05, 0.1, 0.13, 0.2, 0.3, 0.5):
        x = (torch.rand(STEPS * BATCH, 784, generator=g) < density).float()

        def dense(x=x):
            torch.nn.functional.linear(x, weight).backward(upstream)

        def gathered(x=x):
            _SpikeLinear.apply(x, weight, None, x, None).backward(upstream)

        rows.append({"density": density, "dense_ms": 1e3 * median_seconds(dense, repeats),
                     "gather_ms": 1e3 * median_seconds(gathered, repeats)})
    return rows


# --------------------------------------------------------------------------- open-neuromorphic


def open_neuromorphic(neurons: int, repeats: int, tf32: bool = False) -> list[dict]:
    steps, batch = 500, 16
    x = torch.randn(steps, batch, neurons, device=DEVICE)
    rows = []
    for peer in ("snnrun", "snnTorch", "SpikingJelly", "Norse"):
        module = {"snnrun": "snnrun", "snnTorch": "snntorch", "SpikingJelly": "spikingjelly", "Norse": "norse"}[peer]
        if not installed(module):
            rows.append({"peer": peer, "skipped": f"{module} is not installed"})
            continue
        torch.manual_seed(0)
        if peer == "snnrun":
            linear = torch.nn.Linear(neurons, neurons)
            lif = LIFLayer(neurons, TrainedLeaky(beta=0.95), Surrogate("atan", 2.0))
            model = torch.nn.Sequential(linear, lif).to(DEVICE)

            def forward(model=model, linear=linear, lif=lif):
                return lif(spike_linear(x, linear.weight, linear.bias))[0]
        else:
            model = peers.open_neuromorphic(peer, neurons).to(DEVICE)

            def forward(model=model):
                return model(x)
        state: dict = {}

        def run_forward(forward=forward, state=state):
            state["out"] = forward()

        def run_backward(state=state):
            state["out"].sum().backward(retain_graph=True)

        t_forward = median_seconds(run_forward, repeats, warmup=1)
        run_forward()
        t_backward = median_seconds(run_backward, repeats, warmup=1)
        rows.append({"peer": peer, "forward_s": t_forward, "backward_s": t_backward, "total_s": t_forward + t_backward})
        del state, model
    rows.append({"peer": "floor", **matrix_multiplies_alone(x, neurons, repeats)})
    return rows


def matrix_multiplies_alone(x: torch.Tensor, neurons: int, repeats: int) -> dict:
    """Seconds the layer's two dense matrix multiplies take alone: the forward x W^T and the weight gradient
    grad^T x (the input x is random floats, so no library can skip either), the floor every library's pass pays."""
    weight = torch.randn(neurons, neurons, device=DEVICE)
    flat = x.reshape(-1, neurons)
    grad = torch.randn_like(flat)
    t_forward = median_seconds(lambda: flat @ weight.t(), repeats, warmup=1)
    t_backward = median_seconds(lambda: grad.t() @ flat, repeats, warmup=1)
    return {"forward_s": t_forward, "backward_s": t_backward, "total_s": t_forward + t_backward}


# --------------------------------------------------------------------------- simulation: Brian2


def brian2_lif(neurons: int, steps: int) -> tuple[float, float, int]:
    """(first run seconds incl. code generation, warm run seconds, spike count) of Brian2's default target."""
    import brian2 as b2

    b2.defaultclock.dt = 0.1 * b2.ms

    def run_once():
        group = b2.NeuronGroup(neurons, "dv/dt = (v_rest - v)/tau + R*I/tau : volt (unless refractory)\nI : amp",
                               threshold="v > v_thresh", reset="v = v_reset", refractory=2 * b2.ms, method="exact",
                               namespace={"v_rest": -65 * b2.mV, "v_reset": -70 * b2.mV, "v_thresh": -50 * b2.mV,
                                          "tau": 10 * b2.ms, "R": 10 * b2.Mohm})
        group.v = -65 * b2.mV
        group.I = 2 * b2.nA
        monitor = b2.SpikeMonitor(group, record=False)
        net = b2.Network(group, monitor)
        start = time.perf_counter()
        net.run(steps * 0.1 * b2.ms)
        return time.perf_counter() - start, int(monitor.num_spikes)

    cold, spikes = run_once()
    warm = statistics.median(run_once()[0] for _ in range(3))
    return cold, warm, spikes


def bindsnet_modules():
    """BindsNET's network, model and encoding modules, without its package __init__ (which imports its data sets,
    environments and plotting: packages not installed, and not used by the network; the Makefile installs
    bindsnet with --no-deps)."""
    import importlib
    import importlib.util
    import types

    spec = importlib.util.find_spec("bindsnet")
    if spec is None or not spec.submodule_search_locations:
        return None
    if "bindsnet" not in sys.modules:
        package = types.ModuleType("bindsnet")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["bindsnet"] = package
    importlib.import_module("bindsnet.network")  # first: its topology and learning modules import each other
    encodings = importlib.import_module("bindsnet.encoding.encodings")
    models = importlib.import_module("bindsnet.models.models")

    return models, encodings


def stdp_row(digits: int = 24, neurons: int = 400) -> dict:
    """BindsNET's DiehlAndCook2015 against the snnrun command on the same MNIST digits (see the module doc)."""
    row: dict = {"neurons": neurons}
    images, _ = mnist_batch(max(digits, 1000))
    modules = bindsnet_modules()
    if modules is None:
        row["skipped"] = "bindsnet not installed (make bench installs it)"
    else:
        models, encodings = modules
        network = models.DiehlAndCook2015(n_inpt=784, n_neurons=neurons, exc=22.5, inh=120.0, dt=0.5, norm=78.4,
                                          theta_plus=0.05, inpt_shape=(1, 28, 28))

        def present(image):
            spikes = encodings.poisson(image.flatten() * 63.75, time=350, dt=0.5)  # 63.75 Hz at a full pixel
            network.run(inputs={"X": spikes.view(700, 1, 1, 28, 28)}, time=350)
            network.reset_state_variables()

        present(images[0])  # warm-up
        start = time.perf_counter()
        for image in images[1:digits + 1]:
            present(image)
        row["bindsnet_samples_per_s"] = digits / (time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as folder:
        shutil.copytree(Path(__file__).resolve().parents[1] / "configs", Path(folder) / "configs")
        os.symlink(Path("data").resolve(), Path(folder) / "data")
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        sets = [f"stdp.excitatory_neurons={neurons}", "train.subset.train=1000", "train.subset.test=250",
                "train.label_images=1000", "train.window=500"]
        args = [*snnrun_command(), "train", "configs/stdp_mnist.yaml", "--out", "runs",
                *[a for item in sets for a in ("--set", item)]]
        start = time.perf_counter()
        subprocess.run(args, cwd=folder, env=env, check=True, capture_output=True)
        row["command_s"] = time.perf_counter() - start
        run = next((Path(folder) / "runs").iterdir())
        history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        row["snnrun_samples_per_s"] = history[-1]["samples_per_s"]  # the epoch so far: all 1,000 digits
        row["presentations_per_digit"] = statistics.mean(r["presentations_per_image"] for r in history)
        code = ("import time, numpy as np; t = time.perf_counter(); from snnrun import stdp; "
                "from snnrun.schema import parse_train; "
                f"cfg = parse_train({{'learning': 'stdp', 'stdp': {{'excitatory_neurons': {neurons}}}}}, 'bench'); "
                f"w, d = stdp.initial_weights(cfg, 784); s = stdp.fresh_state(cfg, w, np.full({neurons}, 20.0), d); "
                "stdp.run_block(s, cfg, np.full((1, 784), 128, np.uint8), True, 0); print(time.perf_counter() - t)")
        out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
        row["first_call_s"] = float(out.stdout.strip())
    if "bindsnet_samples_per_s" in row:
        row["ratio"] = row["snnrun_samples_per_s"] / row["bindsnet_samples_per_s"]
    return row


def lif_config(neurons: int, steps: int, engine: str):
    return parse_simulation({"neurons": neurons, "time_steps": steps, "record_neurons": 1, "engine": engine,
                             "neuron": {"model": "lif", "v_reset_mv": -70.0},
                             "stimulus": {"kind": "step", "amplitude": 2.0, "onset": 0}}, "bench")


def snnrun_lif(neurons: int, steps: int, engine: str) -> tuple[float, int]:
    cfg = lif_config(neurons, steps, engine)
    simulate(cfg)  # warm-up (the numba engine loads its kernel here)
    runs = [simulate(cfg) for _ in range(3)]
    return statistics.median(r.seconds for r in runs), runs[0].metrics["population"]["total_spikes"]


FIRST_CALL = """
import sys, time
from benchmarks_run_lif import lif_config
from snnrun.simulation import simulate
start = time.perf_counter()
simulate(lif_config(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
print(time.perf_counter() - start)
"""


def first_call_seconds(neurons: int, steps: int, engine: str, threads: int) -> float:
    """The first simulate() of a fresh process, as the CLI makes it: numba and a cached kernel loaded, or torch's
    first calls; the median of three processes."""
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "benchmarks_run_lif.py").write_text(
            "from snnrun.schema import parse_simulation\n\n\n" + _source_of(lif_config))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": folder}
        times = []
        for _ in range(3):
            out = subprocess.run([sys.executable, "-c", FIRST_CALL, str(neurons), str(steps), engine], env=env,
                                 capture_output=True, text=True, check=True)
            times.append(float(out.stdout.split()[-1]))
    return statistics.median(times)


def _source_of(fn) -> str:
    import inspect

    return inspect.getsource(fn)


def state_bandwidth(nbytes: int) -> float:
    """Bytes/s of copying a buffer the size of the neurons' state (read once, written once), on the bench's threads:
    the cache's bandwidth where the state fits in it, the memory's where it does not."""
    n = max(nbytes // 4, 1024)
    a, b = torch.ones(n), torch.empty(n)
    reps = max(3, int(1e9 // (8 * n)))
    seconds = median_seconds(lambda: [b.copy_(a) for _ in range(reps)], repeats=5) / reps
    return 2 * 4 * n / seconds


LIF_STATE_BYTES = 8  # membrane and refractory timer, float32 each


def simulate_roofline(neurons: int, steps: int) -> dict:
    """The floor of a simulation that passes over the neurons' state once a step: the state read and written
    (2 x 8 B) and the spike written as a byte, per neuron and step, at the bandwidth measured for the state's size."""
    per_step = neurons * (2 * LIF_STATE_BYTES + 1)
    bandwidth = state_bandwidth(neurons * LIF_STATE_BYTES)
    return {"bytes_per_step": per_step, "bandwidth_gb_s": bandwidth / 1e9, "seconds": steps * per_step / bandwidth}


def simulate_vs_brian2(neurons: int, threads: int, steps: int = 2000) -> dict:
    try:
        import brian2  # noqa: F401
    except ImportError:
        return {"skipped": "brian2 is not installed (pip install -e '.[peers]')"}
    ours, our_spikes = snnrun_lif(neurons, steps, "numba")
    torch_s, torch_spikes = snnrun_lif(neurons, steps, "torch")
    cold, warm, their_spikes = brian2_lif(neurons, steps)
    if not our_spikes == torch_spikes == their_spikes:
        raise SystemExit(f"spike counts differ at {neurons} neurons: snnrun numba {our_spikes}, torch {torch_spikes}, "
                         f"Brian2 {their_spikes}")
    return {"neurons": neurons, "steps": steps, "spikes": our_spikes, "snnrun_s": ours, "snnrun_torch_s": torch_s,
            "peer_warm_s": warm, "peer_cold_s": cold, "ratio": warm / ours,
            "first_call_s": {e: first_call_seconds(neurons, steps, e, threads) for e in ("numba", "torch")},
            "roofline": simulate_roofline(neurons, steps)}


# --------------------------------------------------------------------------- start-up of the command


STARTUP_GOALS = {"help_s": 0.5, "simulate_s": 2.0}  # issue 14
SWEEP_MEMBERS = 6
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def snnrun_command() -> list[str]:
    """The `snnrun` console script next to this Python (as a user runs it), else `python -m snnrun`."""
    script = Path(sys.executable).with_name("snnrun")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "snnrun"]


def wall_seconds(args: list[str], threads: int) -> tuple[float, float]:
    """(wall, CPU) seconds of `snnrun ARGS` in a fresh process (CPU: user + system of it and the processes it
    waited for), run in a new temporary folder holding a copy of configs/ (so the default config is found and
    the run folders land there, removed after)."""
    with tempfile.TemporaryDirectory(prefix="snnrun-bench-") as folder:
        shutil.copytree(CONFIGS, Path(folder) / "configs")
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run([*snnrun_command(), *args], cwd=folder, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"snnrun {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def startup(threads: int, repeats: int = 5) -> dict:
    """Median wall times of `snnrun --help`, the default `snnrun simulate` and a 6-member simulate sweep, each
    after one untimed run (which warms the file cache and matplotlib's font cache)."""
    betas = [round(0.5 + 0.09 * i, 2) for i in range(SWEEP_MEMBERS)]
    commands = {"help_s": ["--help"], "simulate_s": ["simulate"],
            "sweep_s": ["sweep", "configs/step.yaml", "--grid", f"neuron.beta={betas}"]}
    result: dict = {"members": SWEEP_MEMBERS, "goals": STARTUP_GOALS, "command": " ".join(snnrun_command())}
    for key, args in commands.items():
        wall_seconds(args, threads)
        timings = [wall_seconds(args, threads) for _ in range(repeats if key != "sweep_s" else max(1, repeats // 2))]
        result[key] = statistics.median(wall for wall, _ in timings)
        result[key.replace("_s", "_runs_s")] = [wall for wall, _ in timings]
        result[key.replace("_s", "_cpu_s")] = statistics.median(cpu for _, cpu in timings)
    # what a member adds once the sweep and its worker have started; the goal: less than a fresh process's run
    result["sweep_per_member_s"] = (result["sweep_s"] - result["simulate_s"]) / (SWEEP_MEMBERS - 1)
    return result


# --------------------------------------------------------------------------- main


ROWS = ("train", "conv", "crossover", "open_neuromorphic", "simulate", "stdp", "startup")


def main() -> None:
    global DEVICE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10, help="timed batches per training row")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--neurons", type=int, default=None,
                        help="open-neuromorphic layer size (default 16,384 on a GPU, 4,096 on a CPU)")
    parser.add_argument("--only", nargs="+", choices=ROWS, default=list(ROWS), metavar="ROW",
                        help=f"run only these rows: {', '.join(ROWS)} (default: all)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc as it is (the snnrun command keeps freed memory: snnrun.memory)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kept = False if args.default_malloc else keep_freed_memory()  # as `snnrun` does; for every peer alike
    DEVICE = torch.device(args.device)
    cuda = DEVICE.type == "cuda"

    machine = {"hostname": socket.gethostname(), "platform": platform.platform(), "processor": platform.processor(),
               "threads": args.threads, "torch": torch.__version__, "device": args.device,
               "keep_freed_memory": kept}
    if cuda:
        machine["gpu"] = torch.cuda.get_device_name()
    results = {"machine": machine, "date": dt.date.today().isoformat()}
    with console.status("roofline"):
        results["roofline"] = roofline()
    results["train"] = []
    for peer in ("snnTorch", "SpikingJelly", "Norse") if "train" in args.only else ():
        with console.status(f"training: {peer}"):
            results["train"].append(train_row(peer, args.repeats))
    if "conv" in args.only:
        with console.status("training: snnTorch's tutorial-6 CSNN"):
            results["train"].append(csnn_row(max(3, args.repeats // 3)))
    if not cuda and "crossover" in args.only:
        with console.status("cross-over of the gathered first layer"):
            results["crossover"] = crossover(5)
    neurons = args.neurons or (16_384 if cuda else 4_096)
    if "open_neuromorphic" in args.only:
        with console.status(f"open-neuromorphic: {neurons} neurons"):
            results["open_neuromorphic"] = {"neurons": neurons, "rows": open_neuromorphic(neurons, 5 if cuda else 3)}
        if cuda:  # TF32 matrix multiplies: an opt-in that changes numbers, reported apart
            torch.backends.cuda.matmul.allow_tf32 = True
            with console.status("open-neuromorphic with TF32 matmuls"):
                results["open_neuromorphic_tf32"] = {"neurons": neurons, "rows": open_neuromorphic(neurons, 5)}
            torch.backends.cuda.matmul.allow_tf32 = False
    if not cuda and "simulate" in args.only:
        for n in (10_000, 100_000):
            with console.status(f"simulate: {n} lif neurons vs Brian2"):
                results[f"simulate_brian2_{n}"] = simulate_vs_brian2(n, args.threads)
    if "stdp" in args.only and not cuda:
        with console.status("stdp: Diehl & Cook, 400 neurons, BindsNET and snnrun"):
            results["stdp"] = stdp_row()
    if "startup" in args.only:
        with console.status("start-up: snnrun --help, snnrun simulate, a simulate sweep (fresh processes)"):
            results["startup"] = startup(args.threads)

    RESULTS.mkdir(exist_ok=True)
    suffix = ("-cuda" if cuda else "") + ("" if set(args.only) == set(ROWS) else "-" + "-".join(args.only))
    path = RESULTS / f"{machine['hostname']}-{results['date']}{suffix}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    console.print(table(results))
    console.print(f"written to {path}")


def table(results: dict) -> Table:
    m = results["machine"]
    where = m.get("gpu", f"{m['hostname']}, {m['threads']} threads")
    if not m.get("keep_freed_memory"):
        where += ", default malloc"
    t = Table(title=f"snnrun vs peers on {where} (float32 GEMM {results['roofline']['gflops']:.0f} GFLOP/s)")
    for column in ("work", "peer", "peer", "snnrun", "snnrun speed-up"):
        t.add_column(column, justify="left" if column == "work" else "right")
    for row in results["train"]:
        if "skipped" in row:
            t.add_row("train", row["peer"], row["skipped"], "", "")
            continue
        note = "" if row["same_numbers"] else " (dynamics differ)"
        if row.get("snnrun_threads", m["threads"]) != m["threads"]:
            note += f" (snnrun: {row['snnrun_threads']} thread)"
        t.add_row(f"train {row['network']} (samples/s){note}", row["peer"], f"{row['peer_samples_per_s']:.0f}",
                  f"{row['snnrun_samples_per_s']:.0f}", f"{row['ratio']:.2f}x")
        if "convolutions_s" in row:
            t.add_row("the CSNN's convolutions alone in snnrun's batch: the ceiling of the speed-up (ms per batch)",
                      "batch", f"{1e3 * row['peer_batch_s']:.0f}",
                      f"{1e3 * row['convolutions_s']:.0f} of {1e3 * row['snnrun_batch_s']:.0f}",
                      f"at most {row['ceiling']:.2f}x")
    for key, label in (("open_neuromorphic", "float32"), ("open_neuromorphic_tf32", "TF32")):
        if key not in results:
            continue
        bench = results[key]
        ours = next(r for r in bench["rows"] if r["peer"] == "snnrun")
        floor = next((r for r in bench["rows"] if r["peer"] == "floor"), None)
        for row in bench["rows"]:
            if row["peer"] == "floor":
                t.add_row(f"open-neuromorphic {bench['neurons']:,} neurons: its two matrix multiplies alone (s, "
                          f"{label})", "floor", f"{row['total_s']:.3f}", f"{ours['total_s']:.3f}",
                          f"{ours['total_s'] / row['total_s']:.2f}x the floor")
            if row["peer"] in ("snnrun", "floor"):
                continue
            work = f"open-neuromorphic {bench['neurons']:,} neurons, fwd+bwd (s, {label})"
            if "skipped" in row:
                t.add_row(work, row["peer"], row["skipped"], f"{ours['total_s']:.3f}", "")
            else:
                ceiling = f" (at most {row['total_s'] / floor['total_s']:.2f}x)" if floor else ""
                t.add_row(work, row["peer"], f"{row['total_s']:.3f}", f"{ours['total_s']:.3f}",
                          f"{row['total_s'] / ours['total_s']:.2f}x{ceiling}")
    for n in (10_000, 100_000):
        row = results.get(f"simulate_brian2_{n}")
        if row is None:
            continue
        if "skipped" in row:
            t.add_row(f"simulate {n:,} lif", "Brian2", row["skipped"], "", "")
            continue
        work = f"simulate {row['neurons']:,} lif x {row['steps']} steps"
        t.add_row(f"{work} (s; snnrun: numba engine)", "Brian2",
                  f"{row['peer_warm_s']:.3f} (first run {row['peer_cold_s']:.1f})", f"{row['snnrun_s']:.3f}",
                  f"{row['ratio']:.2f}x")
        t.add_row(f"{work} (s; snnrun: torch engine)", "Brian2", f"{row['peer_warm_s']:.3f}",
                  f"{row['snnrun_torch_s']:.3f}", f"{row['peer_warm_s'] / row['snnrun_torch_s']:.2f}x")
        roof = row["roofline"]
        t.add_row(f"{work}: roofline, state read+written once a step + spike byte ({roof['bytes_per_step'] / 1e6:.2f} "
                  f"MB/step at {roof['bandwidth_gb_s']:.0f} GB/s) (s)", "floor", f"{roof['seconds']:.3f}",
                  f"{row['snnrun_s']:.3f}", f"{row['snnrun_s'] / roof['seconds']:.2f}x the floor")
        first = row["first_call_s"]
        t.add_row(f"{work}: first call in a fresh process (s; kernel from the cache)", "torch engine",
                  f"{first['torch']:.2f}", f"{first['numba']:.2f}", f"{first['torch'] / first['numba']:.2f}x")
    for row in results.get("crossover", []):
        t.add_row(f"first layer fwd+wgrad at {row['density']:.0%} input spikes (ms)", "dense GEMM",
                  f"{row['dense_ms']:.1f}", f"{row['gather_ms']:.1f}", f"{row['dense_ms'] / row['gather_ms']:.2f}x")
    row = results.get("stdp")
    if row is not None:
        work = f"STDP learning, Diehl & Cook {row['neurons']} neurons (samples/s)"
        if "skipped" in row:
            t.add_row(work, "BindsNET", row["skipped"], f"{row['snnrun_samples_per_s']:.1f}", "")
        else:
            t.add_row(work, "BindsNET", f"{row['bindsnet_samples_per_s']:.1f}", f"{row['snnrun_samples_per_s']:.1f}",
                      f"{row['ratio']:.1f}x")
        t.add_row("STDP: first compiled call in a fresh process (s; kernel from the cache)", "", "",
                  f"{row['first_call_s']:.2f}", "")
    row = results.get("startup")
    if row is not None:  # the goal stands in the peer's columns; the last column says how far from it
        goals = row["goals"]
        for key, work in (("help_s", "start-up: snnrun --help, fresh process (s)"),
                          ("simulate_s", "start-up: default snnrun simulate, fresh process (s)")):
            t.add_row(work, "goal", f"{goals[key]:.2f}", f"{row[key]:.2f}", _against_goal(goals[key], row[key]))
        fresh = row["simulate_s"]
        t.add_row(f"start-up: {row['members']}-member simulate sweep (s); per member after the first", "goal",
                  f"< {fresh:.2f} a member (a fresh simulate)",
                  f"{row['sweep_s']:.2f}; {row['sweep_per_member_s']:.2f} a member",
                  _against_goal(fresh, row["sweep_per_member_s"]))
    return t


def _against_goal(goal: float, seconds: float) -> str:
    return f"met ({goal / seconds:.1f}x under)" if seconds <= goal else f"missed ({seconds / goal:.1f}x over)"


if __name__ == "__main__":
    main()
