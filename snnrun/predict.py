"""`predict`: a trained run's classes and output spikes for single images (PNG, JPEG, or IDX files).

Images are made to look like MNIST before they reach the network: grey levels, 28 x 28, a light digit on a
dark ground (an image whose border is mostly light, such as a digit drawn in black on white paper, is
inverted), as uint8. Each such decision is reported with the prediction, never made silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from snnrun.config import ImageFileError
from snnrun.data import DataError, read_idx

SIDE = 28


@dataclass
class Image:
    name: str  # the file, with the index of the image inside an IDX file
    pixels: np.ndarray  # (28, 28) uint8, light digit on dark
    notes: list[str] = field(default_factory=list)  # what was done to make it look like MNIST


def read_images(paths: list[Path]) -> list[Image]:
    """Every image in the files given: a picture file is one image, an IDX file (..-idx3-ubyte) many."""
    images = []
    for path in paths:
        if not path.is_file():
            raise ImageFileError("no such image file", source=str(path))
        if "idx" in path.name or path.suffix == ".ubyte":
            try:
                array = read_idx(path).numpy()
            except DataError as error:
                raise ImageFileError(str(error), source=str(path)) from None
            if array.ndim == 2:
                array = array[None]
            if array.ndim != 3:
                raise ImageFileError(f"an IDX file of images holds (count, rows, columns) bytes, not "
                                     f"{array.shape}", source=str(path))
            images += [_as_mnist(a, f"{path.name}[{i}]") for i, a in enumerate(array)]
        else:
            images.append(_as_mnist(_read_picture(path), path.name))
    return images


def _read_picture(path: Path) -> np.ndarray:
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        with PILImage.open(path) as picture:
            return np.asarray(picture.convert("L"))
    except (UnidentifiedImageError, OSError) as error:
        raise ImageFileError(f"not an image file PIL can read ({error})", source=str(path)) from None


def _as_mnist(array: np.ndarray, name: str) -> Image:
    notes = []
    if array.shape != (SIDE, SIDE):
        from PIL import Image as PILImage

        notes.append(f"resized from {array.shape[1]}x{array.shape[0]}")
        array = np.asarray(PILImage.fromarray(array.astype(np.uint8)).resize((SIDE, SIDE), PILImage.BILINEAR))
    border = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])
    if border.mean() > 127:
        notes.append("inverted (dark digit on a light ground)")
        array = 255 - array
    return Image(name, array.astype(np.uint8), notes)


@torch.no_grad()
def predict(model, cfg, images: list[Image], device) -> list[dict]:
    """Class, readout (the values the class is the largest of: spike counts, summed membrane, or mean current)
    and output spikes per class, for each image; seeded as evaluation is, so a rate-coded prediction repeats."""
    from snnrun.training import encode

    model.eval()
    pixels = torch.as_tensor(np.stack([image.pixels for image in images]), device=device)
    generator = torch.Generator(device=device).manual_seed(cfg.train.seed + 1)
    out = model(encode(pixels, cfg, generator))
    spikes = out.spikes.sum(dim=0).cpu() if out.spikes is not None else None
    results = []
    for k, image in enumerate(images):
        results.append({"image": image.name, "class": int(out.logits[k].argmax()),
                        "readout": [float(v) for v in out.logits[k].cpu()],  # what the class is the largest of
                        "output_spikes": None if spikes is None else [int(v) for v in spikes[k]],
                        "notes": image.notes})
    return results
