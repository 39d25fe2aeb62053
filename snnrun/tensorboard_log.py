"""TensorBoard logging of a training run (`--tensorboard`, or `tensorboard: true` in the config).

Per epoch, into the run folder's tb/: the epoch record's scalars (losses, accuracies, learning rate, spikes per
neuron per step of each layer), histograms of every weight and of each layer's membrane potential on a batch of
validation digits, and the network raster of one digit as an image. The `tensorboard` package is an extra
(pip install 'snnrun[tensorboard]'); asking for it without the package is a clear error before training.
"""

from __future__ import annotations

from pathlib import Path

import torch

from snnrun import plots
from snnrun.config import UserError

EXTRA = "pip install 'snnrun[tensorboard]' (or pip install tensorboard)"


def require_tensorboard(source: str = "--tensorboard") -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise UserError(f"the tensorboard package is not installed: {EXTRA}", source=source) from None


class TensorBoardLog:
    """Writes one run's epochs to folder/tb (rank 0 only)."""

    def __init__(self, folder: Path, probe: tuple[torch.Tensor, torch.Tensor, int]):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder / "tb"))
        self.inputs, self.image, self.label = probe  # encoded validation digits, the first digit and its label

    def epoch(self, record: dict, model) -> None:
        step = record["epoch"]
        for key, value in record.items():
            if key == "epoch" or value is None:
                continue
            group = "train" if key.startswith("train_") else "val" if key.startswith("val_") else "run"
            if isinstance(value, list):
                for name, v in zip(model.layer_names, value, strict=True):
                    self.writer.add_scalar(f"{group}/{key}/{name}", v, step)
            else:
                self.writer.add_scalar(f"{group}/{key}", value, step)
        for name, parameter in model.named_parameters():
            self.writer.add_histogram(f"weights/{name}", parameter.detach().cpu(), step)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            out = model(self.inputs, record=True)
        model.train(was_training)
        names = model.layer_names[:len(out.recorded_membranes)]  # (no output neurons: no output membrane)
        for name, membrane in zip(names, out.recorded_membranes, strict=True):
            self.writer.add_histogram(f"membrane/{name}", membrane.cpu(), step)
        layers = [spikes[:, 0].cpu().numpy() for spikes in out.recorded]
        names = ["input", *names]
        figure = plots.network_raster_figure(layers, names, self.image, self.label, int(out.logits[0].argmax()))
        self.writer.add_figure("raster", figure, step)  # rendered to an image, then closed
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
