"""Llama 4's image input without torchvision: tiles, pixel values and the prompt's image tokens.

transformers' ``Llama4ImageProcessor`` runs on torchvision, whose published builds need a CUDA torch; on the CPU
build of torch the transformers engine uses this instead (Pillow and numpy). It follows the same scheme: the image
is fitted, without distortion and upscaled at most to one tile, into the grid of ``tile`` px tiles (at most
``max_tiles`` of them) whose canvas needs the least scaling, padded, normalised and cut into tiles, plus one global
tile of the whole image when there are several; in the prompt each ``<|image|>`` becomes ``<|image_start|>``, the
tiles' ``<|patch|>`` tokens with their separators, ``<|image|>``, the global tile's patches and ``<|image_end|>``.
The grid choice is this module's own reading of that scheme: on the same image it may pick another grid than
transformers does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Llama4ImageSettings:
    tile: int = 336
    max_tiles: int = 16
    patch_size: int = 14
    pixel_shuffle_ratio: float = 0.5
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @property
    def patches_per_tile(self) -> int:
        downsample = round(1.0 / self.pixel_shuffle_ratio**2)
        return (self.tile // self.patch_size) ** 2 // downsample


def _grid(width: int, height: int, settings: Llama4ImageSettings) -> tuple[int, int]:
    """The (rows, columns) of tiles whose canvas fits the image with the least scaling (the least upscaling when
    one can hold it whole, else the least downscaling); ties go to the smaller canvas."""
    tile = settings.tile
    grids = [(r, c) for r in range(1, settings.max_tiles + 1) for c in range(1, settings.max_tiles + 1)
             if r * c <= settings.max_tiles]
    scale = {g: min(g[0] * tile / height, g[1] * tile / width) for g in grids}
    holding = [g for g in grids if scale[g] >= 1]
    if holding:
        return min(holding, key=lambda g: (scale[g], g[0] * g[1]))
    return max(grids, key=lambda g: (scale[g], -g[0] * g[1]))


def _normalised(image: Any, settings: Llama4ImageSettings) -> np.ndarray:
    array = np.asarray(image, dtype=np.float32) / 255.0
    return ((array - np.array(settings.mean, dtype=np.float32)) / np.array(settings.std, dtype=np.float32)
            ).transpose(2, 0, 1)


def pixel_tiles(image: Any, settings: Llama4ImageSettings) -> tuple[np.ndarray, tuple[int, int]]:
    """An RGB Pillow image as its tiles (n, 3, tile, tile), the global tile last when n > 1, and its grid."""
    from PIL import Image

    tile = settings.tile
    width, height = image.size
    rows, columns = _grid(width, height, settings)
    box_h = min(max(height, tile), rows * tile)
    box_w = min(max(width, tile), columns * tile)
    scale = min(box_h / height, box_w / width)
    new_w, new_h = max(1, min(box_w, int(width * scale))), max(1, min(box_h, int(height * scale)))
    canvas = Image.new("RGB", (columns * tile, rows * tile), (0, 0, 0))
    canvas.paste(image.resize((new_w, new_h), Image.Resampling.BILINEAR), (0, 0))
    full = _normalised(canvas, settings)
    tiles = [full[:, r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] for r in range(rows) for c in range(columns)]
    if rows * columns > 1:
        tiles.append(_normalised(image.resize((tile, tile), Image.Resampling.BILINEAR), settings))
    return np.stack(tiles), (rows, columns)


def image_tokens(grid: tuple[int, int], settings: Llama4ImageSettings) -> str:
    """The prompt text that stands for one image of ``grid`` tiles."""
    patches = "<|patch|>" * settings.patches_per_tile
    text = "<|image_start|>"
    rows, columns = grid
    if rows * columns > 1:
        for _ in range(rows):
            text += "<|tile_x_separator|>".join([patches] * columns) + "<|tile_y_separator|>"
    return text + "<|image|>" + patches + "<|image_end|>"
