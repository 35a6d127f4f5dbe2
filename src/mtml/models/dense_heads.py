"""Heads for pixel-label tasks, and the label compressor of the attention modulator.

Every head maps the flattened backbone embedding [B, C*h*w] to its output, so the inner
loop adapts any head the same way (`inner_loop.adapt` on the head alone, as in ANIL).

- `ConvDecoder`: four blocks of (2x2 stride-2 conv-transpose, 3x3 conv) with 8, 8, 4, 4
  filters (Lekkala & Itti use 4 and 8), upsampling the backbone's h x w map by 16 back to
  the image size (bilinear resize when the sizes differ, e.g. 84 -> 5 -> 80).
- `LabelCompressor`: three blocks of (3x3 conv with 4 filters, activation, 2x2 max-pool)
  that turn a dense label map into a short vector the attention modulator can read.

Activations are leaky ReLUs: with so few filters, plain ReLUs of a whole decoder die
within a few hundred updates, and a dead decoder passes no gradient to the backbone or the
modulator (its predictions freeze at the mean label).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

DECODER_FILTERS = (8, 8, 4, 4)
LEAK = 0.1


class ConvDecoder(nn.Module):
    def __init__(self, feature_shape: tuple[int, int, int], out_channels: int, out_size: tuple[int, int],
                 filters: tuple[int, ...] = DECODER_FILTERS):
        super().__init__()
        self.feature_shape = tuple(feature_shape)
        self.out_size = tuple(out_size)
        layers: list[nn.Module] = []
        cin = feature_shape[0]
        for i, f in enumerate(filters):
            last = i == len(filters) - 1
            layers += [nn.ConvTranspose2d(cin, f, 2, stride=2), nn.LeakyReLU(LEAK),
                       nn.Conv2d(f, out_channels if last else f, 3, padding=1)]
            if not last:
                layers.append(nn.LeakyReLU(LEAK))
            cin = f
        self.blocks = nn.Sequential(*layers)

    def forward(self, embedding: Tensor) -> Tensor:
        x = self.blocks(embedding.view(-1, *self.feature_shape))
        if tuple(x.shape[-2:]) != self.out_size:
            x = nn.functional.interpolate(x, size=self.out_size, mode="bilinear", align_corners=False)
        return x


class LabelCompressor(nn.Module):
    def __init__(self, in_channels: int, size: tuple[int, int], filters: int = 4, blocks: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for _ in range(blocks):
            layers += [nn.Conv2d(cin, filters, 3, padding=1), nn.LeakyReLU(LEAK), nn.MaxPool2d(2)]
            cin = filters
        self.net = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            self.out_dim = int(self.net(torch.zeros(1, in_channels, *size)).shape[1])

    def forward(self, labels: Tensor) -> Tensor:
        return self.net(labels)
