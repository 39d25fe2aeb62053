"""`eval`: score a trained run on a split: accuracy, per-class accuracy, confusion, spikes, synaptic operations."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from snnrun.config import RunFolderError, load_yaml
from snnrun.data import Split
from snnrun.network import Network
from snnrun.schema import TrainConfig, parse_train
from snnrun.training import CheckpointError, evaluate, read_checkpoint


@dataclass
class TrainedRun:
    folder: Path
    config: TrainConfig
    checkpoint: Path


def locate(path: Path) -> TrainedRun:
    """A run folder (its best checkpoint) or a checkpoint file inside a run folder's checkpoints/."""
    path = Path(path)
    if path.is_dir():
        folder, checkpoint = path, path / "checkpoints" / "best.pt"
    elif path.is_file():
        folder, checkpoint = path.parent.parent, path
    else:
        raise RunFolderError("no such run folder or checkpoint", source=str(path))
    takes = "eval takes a training run folder (outputs/train/<run>) or one of its checkpoints/*.pt"
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        raise RunFolderError(f"a config file, not a run; {takes} (train it first: snnrun train {path})",
                             source=str(path))
    if not (folder / "config.yaml").is_file():
        raise RunFolderError(f"not a run folder (no config.yaml); {takes}", source=str(folder))
    if (folder / "traces.npz").is_file() or (folder / "sweep.json").is_file():
        kind = "a simulate run" if (folder / "traces.npz").is_file() else "a sweep folder"
        raise RunFolderError(f"{kind}, which has no trained network; {takes}", source=str(folder))
    if not checkpoint.is_file():
        raise RunFolderError("the run has no checkpoint yet (checkpoints/best.pt is written after the first epoch)",
                             source=str(folder))
    config = parse_train(load_yaml(folder / "config.yaml"), str(folder / "config.yaml"))
    return TrainedRun(folder, config, checkpoint)


def load_network(run: TrainedRun, device) -> Network:
    """The network of a run with its trained weights; a corrupt or foreign checkpoint is a clear error."""
    model = Network(run.config.model, run.config.encoding.time_steps).to(device)
    try:
        model.load_state_dict(read_checkpoint(run.checkpoint, device)["model"])
    except CheckpointError as error:
        raise RunFolderError(str(error), source=str(run.checkpoint)) from None
    except (RuntimeError, TypeError, AttributeError) as error:  # tensors of other shapes or names
        reason = str(error).strip().splitlines()[0]
        raise RunFolderError(f"not a checkpoint of this run's network ({reason[:200]})",
                             source=str(run.checkpoint)) from None
    return model


def evaluate_run(run: TrainedRun, model: Network, data: Split, split: str = "test") -> dict:
    """The report of `eval`: the run's network (`load_network`) scored on a split (`training.load_splits`)."""
    cfg = run.config
    result = evaluate(model, data, cfg, with_predictions=True)
    labels = data.labels.cpu()
    predictions = result.pop("predictions")
    classes = cfg.model.outputs
    confusion = torch.bincount(labels * classes + predictions, minlength=classes * classes).reshape(classes, classes)
    per_class = (confusion.diag().double() / confusion.sum(dim=1).clamp(min=1)).tolist()
    return {
        "split": split,
        "images": len(data),
        "accuracy": result["accuracy"],
        "loss": result["loss"],
        "per_class_accuracy": per_class,
        "confusion": confusion.tolist(),
        "spikes_per_sample": dict(zip(model.layer_names, result["spikes_per_sample"], strict=True)),
        "spikes_per_neuron_step": dict(zip(model.layer_names, result["spikes_per_neuron_step"], strict=True)),
        "input_spikes_per_sample": result["input_spikes_per_sample"],
        "synaptic_operations_per_inference": synaptic_operations(model, cfg, result),
        "checkpoint": str(run.checkpoint),
    }


def synaptic_operations(model: Network, cfg: TrainConfig, result: dict) -> dict:
    """Synaptic events per image: each spike costs one operation per synapse it drives (`ModelConfig.fan_outs`:
    a Linear layer's outputs, a convolution's out_channels x kernel² / stride²).

    A direct (non-spiking) input costs dense multiply-accumulates instead, computed once per image.
    """
    fan_out = cfg.model.fan_outs
    if cfg.encoding.kind == "direct":
        input_ops = {"input_dense_macs": cfg.model.dense_input_macs}
    else:
        input_ops = {"input_synops": result["input_spikes_per_sample"] * fan_out[0]}
    hidden = sum(spikes * fan_out[i + 1] for i, spikes in enumerate(result["spikes_per_sample"][:-1]))
    total = hidden + input_ops.get("input_synops", 0.0)
    return {**input_ops, "hidden_synops": hidden, "total_synops": total}
