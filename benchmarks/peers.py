"""The peers' networks, each written in the peer's own idiom (as its tutorials and docs write them).

Every builder returns a module whose forward takes (time, batch, features) input and returns
(output spikes, output membranes) over time, so one loss serves all of them.
"""

from __future__ import annotations

import torch
from torch import nn


def snntorch_tutorial5(beta: float = 0.95) -> nn.Module:
    """snnTorch tutorial 5: 784-1000-10 Leaky, a Python loop over steps calling each layer."""
    import snntorch as snn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(784, 1000)
            self.lif1 = snn.Leaky(beta=beta)
            self.fc2 = nn.Linear(1000, 10)
            self.lif2 = snn.Leaky(beta=beta)

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


def snntorch_csnn(beta: float = 0.5) -> nn.Module:
    """snnTorch tutorial 6: 12C5-MP2-64C5-MP2-FC10 of Leaky neurons (fast sigmoid, slope 25), each convolution's
    output max-pooled before its neurons, every layer called once per step in a Python loop (the tutorial's
    `net(data)` per step, with the same static image each step)."""
    import snntorch as snn
    from snntorch import surrogate

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            grad = surrogate.fast_sigmoid(slope=25)
            self.conv1, self.conv2, self.fc = nn.Conv2d(1, 12, 5), nn.Conv2d(12, 64, 5), nn.Linear(64 * 4 * 4, 10)
            self.lif1, self.lif2, self.lif3 = (snn.Leaky(beta=beta, spike_grad=grad) for _ in range(3))

        def forward(self, x, steps: int):
            mem1, mem2, mem3 = self.lif1.init_leaky(), self.lif2.init_leaky(), self.lif3.init_leaky()
            spk_rec, mem_rec = [], []
            for _ in range(steps):
                spk1, mem1 = self.lif1(nn.functional.max_pool2d(self.conv1(x), 2), mem1)
                spk2, mem2 = self.lif2(nn.functional.max_pool2d(self.conv2(spk1), 2), mem2)
                spk3, mem3 = self.lif3(self.fc(spk2.flatten(1)), mem3)
                spk_rec.append(spk3)
                mem_rec.append(mem3)
            return torch.stack(spk_rec), torch.stack(mem_rec)

    return Net()


def spikingjelly_tutorial5(beta: float = 0.95) -> nn.Module:
    """The same network with SpikingJelly's multi-step layers: LIFNode with tau = 1/(1 - beta), no input decay,
    soft (subtract) reset, detached reset, ATan surrogate; the whole sequence through each layer at once."""
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    def lif(**kw):
        return neuron.LIFNode(tau=1 / (1 - beta), decay_input=False, v_reset=None, detach_reset=True,
                              surrogate_function=surrogate.ATan(alpha=2.0), step_mode="m", **kw)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = layer.Linear(784, 1000, step_mode="m")
            self.lif1 = lif()
            self.fc2 = layer.Linear(1000, 10, step_mode="m")
            self.lif2 = lif(store_v_seq=True)

        def forward(self, x):
            functional.reset_net(self)
            spikes = self.lif2(self.fc2(self.lif1(self.fc1(x))))
            return spikes, self.lif2.v_seq

    return Net()


def norse_tutorial(hidden: int = 128) -> nn.Module:
    """Norse's MNIST tutorial network: 784-128-10, LIFCell then a leaky-integrator readout (LICell), the first
    Linear recomputed on the same constant input at every step; returns (None, readout voltages)."""
    from norse.torch import LICell, LIFCell

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc_in = nn.Linear(784, hidden, bias=False)
            self.l1 = LIFCell()
            self.fc_out = nn.Linear(hidden, 10, bias=False)
            self.out = LICell()

        def forward(self, x):
            s1 = so = None
            voltages = []
            for step in range(x.shape[0]):
                z = self.fc_in(x[step])
                z, s1 = self.l1(z, s1)
                z = self.fc_out(z)
                vo, so = self.out(z, so)
                voltages.append(vo)
            return None, torch.stack(voltages)

    return Net()


# --------------------------------------------------------------------------- open-neuromorphic: Linear + LIF


def open_neuromorphic(peer: str, neurons: int) -> nn.Module:
    """One Linear(n, n) and one LIF layer over (time, batch, n), as the Open Neuromorphic benchmark writes each
    library's version; forward returns the output spikes (time, batch, n)."""
    if peer == "snnTorch":
        import snntorch

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(neurons, neurons)
                self.lif = snntorch.Leaky(beta=0.95)

            def forward(self, x):
                mem, out = self.lif.init_leaky(), []
                for inp in x:
                    spk, mem = self.lif(self.fc(inp), mem)
                    out.append(spk)
                return torch.stack(out)

        return Net()
    if peer == "SpikingJelly":
        from spikingjelly.activation_based import functional, layer, neuron, surrogate

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.model = nn.Sequential(layer.Linear(neurons, neurons, step_mode="m"),
                                           neuron.LIFNode(tau=5.0, surrogate_function=surrogate.ATan(),
                                                          step_mode="m"))

            def forward(self, x):
                functional.reset_net(self.model)
                return self.model(x)

        return Net()
    if peer == "Norse":
        from norse.torch import LIF, SequentialState

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.model = SequentialState(nn.Linear(neurons, neurons), LIF())

            def forward(self, x):
                return self.model(x)[0]

        return Net()
    raise ValueError(peer)
