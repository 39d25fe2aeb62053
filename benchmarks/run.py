"""snnrun against its peers on the same work, in one process run: `make bench` or `python benchmarks/run.py`.

Rows:
- roofline: float32 GEMM GFLOP/s of this machine;
- train/snntorch: snnTorch tutorial 5 (784-1000-10 Leaky beta 0.95, Bernoulli rate input, 25 steps, batch 128,
  membrane cross-entropy summed over steps, Adam 5e-4) in snnTorch's own idiom and in snnrun, from the same
  initial weights and the same input spikes; the first-batch losses must agree within 1e-4 before timing;
- simulate/brian2: `lif` with 10,000 and 100,000 neurons for 2,000 steps against Brian2 (its default code
  generation target; its first, compiling run reported apart), with equal spike counts required.

Timings are medians after warm-up, with a fixed number of torch threads (`--threads`, default 2), and never
two benchmarks at once. Results go to benchmarks/results/<hostname>-<date>.json and a rich table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import socket
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from snnrun.network import Network, parse_model
from snnrun.simulation import parse_simulation, simulate
from snnrun.training import TrainSettings, loss_of

RESULTS = Path(__file__).resolve().parent / "results"
console = Console()


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --------------------------------------------------------------------------- roofline


def roofline(size: int = 2048) -> dict:
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = median_seconds(lambda: a @ b, repeats=10)
    return {"gflops": 2 * size**3 / seconds / 1e9, "size": size}


# --------------------------------------------------------------------------- training: snnTorch tutorial 5


TUTORIAL5 = {"hidden": [1000], "neuron": {"model": "leaky", "beta": 0.95}, "surrogate": {"kind": "atan", "slope": 2.0},
             "readout": "rate"}
STEPS, BATCH = 25, 128


def tutorial5_snntorch():
    import snntorch as snn
    from torch import nn

    class Net(nn.Module):  # as written in snnTorch's tutorial 5
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(784, 1000)
            self.lif1 = snn.Leaky(beta=0.95)
            self.fc2 = nn.Linear(1000, 10)
            self.lif2 = snn.Leaky(beta=0.95)

        def forward(self, x):
            mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
            spk2_rec, mem2_rec = [], []
            for step in range(x.shape[0]):
                cur1 = self.fc1(x[step])
                spk1, mem1 = self.lif1(cur1, mem1)
                cur2 = self.fc2(spk1)
                spk2, mem2 = self.lif2(cur2, mem2)
                spk2_rec.append(spk2)
                mem2_rec.append(mem2)
            return torch.stack(spk2_rec), torch.stack(mem2_rec)

    return Net()


def snntorch_step(net, optimizer, x, y):
    _, mem = net(x)
    loss = torch.zeros(())
    for step in range(x.shape[0]):
        loss = loss + torch.nn.functional.cross_entropy(mem[step], y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def snnrun_step(net, optimizer, x, y, settings):
    loss = loss_of(net(x), y, settings, STEPS)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def mnist_batch(batch: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """The first training digits as pixel intensities in [0, 1], and their labels (`make data` provides them)."""
    from snnrun.data import load_mnist

    train, _ = load_mnist("data")
    return train.images[:batch].reshape(batch, -1).float() / 255, train.labels[:batch]


def train_vs_snntorch(repeats: int) -> dict:
    try:
        import snntorch  # noqa: F401
    except ImportError:
        return {"skipped": "snntorch is not installed (pip install -e '.[peers]')"}
    torch.manual_seed(0)
    theirs = tutorial5_snntorch()
    ours = Network(parse_model(TUTORIAL5, "model", "bench"), STEPS)
    with torch.no_grad():  # the same initial weights
        ours.linears[0].weight.copy_(theirs.fc1.weight)
        ours.linears[0].bias.copy_(theirs.fc1.bias)
        ours.readout.weight.copy_(theirs.fc2.weight)
        ours.readout.bias.copy_(theirs.fc2.bias)
    pixels, y = mnist_batch()
    x = (torch.rand(STEPS, BATCH, 784) < pixels).float()  # the same Bernoulli input spikes
    settings = TrainSettings(loss="ce_membrane")
    opt_theirs = torch.optim.Adam(theirs.parameters(), lr=5e-4)
    opt_ours = torch.optim.Adam(ours.parameters(), lr=5e-4)
    first_theirs = float(snntorch_step(theirs, opt_theirs, x, y).detach())
    first_ours = float(snnrun_step(ours, opt_ours, x, y, settings).detach())
    if abs(first_theirs - first_ours) > 1e-4:
        raise SystemExit(f"first-batch losses differ: snnTorch {first_theirs} vs snnrun {first_ours}")
    t_theirs = median_seconds(lambda: snntorch_step(theirs, opt_theirs, x, y), repeats)
    t_ours = median_seconds(lambda: snnrun_step(ours, opt_ours, x, y, settings), repeats)
    return {"first_loss": first_ours, "peer_samples_per_s": BATCH / t_theirs, "snnrun_samples_per_s": BATCH / t_ours,
            "ratio": t_theirs / t_ours}


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


def snnrun_lif(neurons: int, steps: int) -> tuple[float, int]:
    cfg = parse_simulation({"neurons": neurons, "time_steps": steps, "record_neurons": 1,
                            "neuron": {"model": "lif", "v_reset_mv": -70.0},
                            "stimulus": {"kind": "step", "amplitude": 2.0, "onset": 0}}, "bench")
    simulate(cfg)  # warm-up
    runs = [simulate(cfg) for _ in range(3)]
    return statistics.median(r.seconds for r in runs), runs[0].metrics["population"]["total_spikes"]


def simulate_vs_brian2(neurons: int, steps: int = 2000) -> dict:
    try:
        import brian2  # noqa: F401
    except ImportError:
        return {"skipped": "brian2 is not installed (pip install -e '.[peers]')"}
    ours, our_spikes = snnrun_lif(neurons, steps)
    cold, warm, their_spikes = brian2_lif(neurons, steps)
    if our_spikes != their_spikes:
        raise SystemExit(f"spike counts differ at {neurons} neurons: snnrun {our_spikes}, Brian2 {their_spikes}")
    return {"neurons": neurons, "steps": steps, "spikes": our_spikes, "snnrun_s": ours, "peer_warm_s": warm,
            "peer_cold_s": cold, "ratio": warm / ours}


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10, help="timed batches per training row")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results = {"machine": {"hostname": socket.gethostname(), "platform": platform.platform(),
                           "processor": platform.processor(), "threads": args.threads, "torch": torch.__version__},
               "date": dt.date.today().isoformat()}
    with console.status("roofline"):
        results["roofline"] = roofline()
    with console.status("training: snnTorch tutorial 5"):
        results["train_snntorch"] = train_vs_snntorch(args.repeats)
    for n in (10_000, 100_000):
        with console.status(f"simulate: {n} lif neurons vs Brian2"):
            results[f"simulate_brian2_{n}"] = simulate_vs_brian2(n)

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{results['machine']['hostname']}-{results['date']}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    console.print(table(results))
    console.print(f"written to {path}")


def table(results: dict) -> Table:
    t = Table(title=f"snnrun vs peers on {results['machine']['hostname']} ({results['machine']['threads']} threads, "
                    f"GEMM {results['roofline']['gflops']:.0f} GFLOP/s)")
    for column in ("work", "peer", "peer", "snnrun", "speed-up"):
        t.add_column(column, justify="right" if column != "work" else "left")
    train = results["train_snntorch"]
    if "skipped" in train:
        t.add_row("train: tutorial 5", "snnTorch", train["skipped"], "", "")
    else:
        t.add_row("train: tutorial 5 (samples/s)", "snnTorch", f"{train['peer_samples_per_s']:.0f}",
                  f"{train['snnrun_samples_per_s']:.0f}", f"{train['ratio']:.2f}x")
    for key in ("simulate_brian2_10000", "simulate_brian2_100000"):
        row = results[key]
        if "skipped" in row:
            t.add_row(key, "Brian2", row["skipped"], "", "")
            continue
        t.add_row(f"simulate: {row['neurons']:,} lif x {row['steps']} steps (s)", "Brian2",
                  f"{row['peer_warm_s']:.2f} (first run {row['peer_cold_s']:.1f})", f"{row['snnrun_s']:.2f}",
                  f"{row['ratio']:.2f}x")
    return t


if __name__ == "__main__":
    main()
