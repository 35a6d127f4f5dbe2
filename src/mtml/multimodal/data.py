"""One image shape for every mode: convert each prepared dataset once, when a stage loads it.

Grayscale becomes RGB by repeating the channel (RGB to grayscale by ITU-R BT.601 luma);
sizes change with torch's area interpolation when shrinking (it averages, no aliasing) and
bilinear (antialiased) otherwise. The result stays uint8, so a mode's memory is that of its
converted images.
"""

from __future__ import annotations

import numpy as np
import torch

from mtml.errors import UserError

LUMA = torch.tensor([0.299, 0.587, 0.114])


def _convert_chunk(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    c, h, w = shape
    if x.shape[1] != c:
        x = x.repeat(1, c, 1, 1) if x.shape[1] == 1 else (x * LUMA[None, :, None, None]).sum(1, keepdim=True)
    if tuple(x.shape[2:]) != (h, w):
        if h <= x.shape[2] and w <= x.shape[3]:
            x = torch.nn.functional.interpolate(x, size=(h, w), mode="area")
        else:
            x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False,
                                                antialias=True)
    return x


def to_image_shape(images: np.ndarray, shape: tuple[int, int, int], where: str = "",
                   chunk: int = 1024) -> np.ndarray:
    """uint8 [N, C, H, W] -> uint8 [N, *shape]; unchanged (no copy) when already that shape."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise UserError(f"{where}: images must be [N, 1 or 3, H, W] to join a multimodal experiment; "
                        f"got {images.shape}")
    if tuple(images.shape[1:]) == tuple(shape):
        return images
    out = np.empty((images.shape[0], *shape), dtype=np.uint8)
    for lo in range(0, images.shape[0], chunk):
        x = torch.from_numpy(np.array(images[lo:lo + chunk])).float()  # a writable copy of the chunk
        out[lo:lo + chunk] = _convert_chunk(x, shape).round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out
