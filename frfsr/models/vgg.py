"""The VGG layer table, the trunks up to conv3_1 built from it, and the frozen VGG19
reference-feature extractor.

:data:`VGG_BLOCKS` describes torchvision's VGG16 and VGG19; :func:`vgg_layers` turns it into
the named layers of ``vgg{16,19}().features`` with their indices there (conv1_1 = 0,
relu1_1 = 1, ..., pool1 = 4, ...). Everything that builds a VGG, or maps torchvision's
``features.N`` keys to layer names, reads it from here.

VGG16 and VGG19 agree up to conv3_1 (conv1_1, conv1_2, pool1, conv2_1, conv2_2, pool2,
conv3_1), so one trunk class serves the texture encoder (two VGG16 trunks) and the
reference extractor (VGG19 relu1_1, relu2_1, relu3_1).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

#: the ImageNet normalisation torchvision's VGG weights were trained with (RGB in [0, 1])
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: torchvision's VGG configurations as blocks of (width, convs): every 3x3 conv (padding 1) is
#: followed by a ReLU and every block by a 2x2 max pool, in the order of ``vgg{depth}().features``
VGG_BLOCKS = {16: ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)),
              19: ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))}

TILE_HALO = 16              # input pixels around a tile: > the trunk's 10-pixel reach, on the 4-pixel pooling grid


class VGGLayer(NamedTuple):
    """One entry of ``vgg{depth}().features``."""

    index: int              # its position in torchvision's ``features``
    name: str               # conv{b}_{i}, relu{b}_{i} or pool{b}
    in_channels: int
    out_channels: int

    @property
    def is_conv(self) -> bool:
        return self.name.startswith("conv")

    def build(self) -> nn.Module:
        """The layer as torchvision builds it (conv weights at PyTorch's default init)."""
        if self.is_conv:
            return nn.Conv2d(self.in_channels, self.out_channels, kernel_size=3, padding=1)
        if self.name.startswith("relu"):
            return nn.ReLU(inplace=False)
        return nn.MaxPool2d(kernel_size=2, stride=2)


def vgg_layers(depth: int = 19, last: str | None = None, widths=()) -> tuple[VGGLayer, ...]:
    """The layers of torchvision's ``vgg{depth}().features`` in order, up to and including
    ``last`` (default: all). ``widths`` replaces the widths of the first ``len(widths)``
    blocks (a narrower trunk: the indices and names stay torchvision's)."""
    if depth not in VGG_BLOCKS:
        raise ValueError(f"VGG depth must be one of {sorted(VGG_BLOCKS)}; got {depth!r}")
    layers: list[VGGLayer] = []
    c_in = 3
    for b, (width, convs) in enumerate(VGG_BLOCKS[depth], 1):
        width = int(widths[b - 1]) if b <= len(widths) else width
        for i in range(1, convs + 1):
            layers.append(VGGLayer(len(layers), f"conv{b}_{i}", c_in, width))
            layers.append(VGGLayer(len(layers), f"relu{b}_{i}", width, width))
            c_in = width
        layers.append(VGGLayer(len(layers), f"pool{b}", width, width))
    if last is None:
        return tuple(layers)
    names = [layer.name for layer in layers]
    if last not in names:
        raise ValueError(f"VGG{depth} has no layer {last!r}; its layers: {', '.join(names)}")
    return tuple(layers[: names.index(last) + 1])


def last_conv_index(depth: int) -> int:
    """Index of the last conv in ``vgg{depth}().features`` (28 for VGG16, 34 for VGG19)."""
    return max(layer.index for layer in vgg_layers(depth) if layer.is_conv)


def imagenet_normalisation() -> tuple[torch.Tensor, torch.Tensor]:
    """:data:`IMAGENET_MEAN` and :data:`IMAGENET_STD` as (1, 3, 1, 1) tensors."""
    return torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


#: the trunk's convs (conv1_1 .. conv3_1, the same in VGG16 and VGG19) with their torchvision indices
TRUNK_CONVS = tuple(layer for layer in vgg_layers(19, "conv3_1") if layer.is_conv)


class VGGTrunk(nn.Module):
    """conv1_1 .. conv3_1 of VGG on ImageNet-normalised [0, 1] RGB input, built from
    :func:`vgg_layers` (the layers are sub-modules under their names: ``conv1_1``,
    ``relu1_1``, ..., ``pool2``, ``conv3_1``; only the convs hold parameters).

    ``forward`` returns ``(relu1_1, relu2_1, out3)`` where ``out3`` is relu3_1, or the
    pre-activation conv3_1 when ``final_relu=False`` (the texture encoder's output).
    """

    #: the names of the three outputs with ``final_relu=True``
    OUTPUTS = ("relu1_1", "relu2_1", "relu3_1")

    def __init__(self, widths=(64, 128, 256), final_relu: bool = True):
        super().__init__()
        self.final_relu = final_relu
        for layer in vgg_layers(19, "relu3_1" if final_relu else "conv3_1", widths):
            self.add_module(layer.name, layer.build())
        mean, std = imagenet_normalisation()
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, img: torch.Tensor):
        x = (img - self.mean.to(img.dtype)) / self.std.to(img.dtype)
        outs = []
        for name, layer in self.named_children():
            x = layer(x)
            if name in self.OUTPUTS[:2]:
                outs.append(x)
        return outs[0], outs[1], x


class ReferenceFeatureExtractor(nn.Module):
    """Frozen VGG19 features of the Ref at three scales: relu1_1 (full size),
    relu2_1 (1/2) and relu3_1 (1/4). Used for texture transfer (paper eq. 10-13)."""

    def __init__(self, widths=(64, 128, 256)):
        super().__init__()
        self.vgg = VGGTrunk(widths, final_relu=True)
        self.requires_grad_(False)

    @property
    def channels(self) -> tuple[int, int, int]:
        return (self.vgg.conv1_1.out_channels, self.vgg.conv2_1.out_channels, self.vgg.conv3_1.out_channels)

    def forward(self, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.vgg(ref)


def extract_in_tiles(trunk, img: torch.Tensor, tile: int | None):
    """``trunk(img)`` (a :class:`VGGTrunk`, or a module calling one, returning the three
    maps at full, 1/2 and 1/4 size) computed in square tiles of ``tile`` pixels (a multiple
    of 4) with a margin of :data:`TILE_HALO` pixels, so that the intermediates are bounded
    by the tile while the outputs cover the whole image. Every output pixel sees the same
    inputs as in the whole-image call (the trunk reaches 10 pixels; tiles start on the
    pooling grid), so the results equal it up to float rounding. The trunk is called as a
    module, so a compiled trunk stays compiled."""
    h, w = img.shape[-2:]
    if tile is None or (h <= tile and w <= tile):
        return trunk(img)
    if tile < 4 * TILE_HALO or tile % 4:
        raise ValueError(f"tile must be a multiple of 4 and at least {4 * TILE_HALO}, got {tile}")
    outs = None
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            ya, xa = max(0, y0 - TILE_HALO), max(0, x0 - TILE_HALO)
            feats = trunk(img[..., ya: min(h, y1 + TILE_HALO), xa: min(w, x1 + TILE_HALO)])
            if outs is None:
                outs = [f.new_empty(*f.shape[:2], h // s, w // s) for f, s in zip(feats, (1, 2, 4))]
            for out, f, s in zip(outs, feats, (1, 2, 4)):
                ty, tx = y1 // s - y0 // s, x1 // s - x0 // s
                oy, ox = (y0 - ya) // s, (x0 - xa) // s
                out[..., y0 // s: y0 // s + ty, x0 // s: x0 // s + tx] = f[..., oy: oy + ty, ox: ox + tx]
            del feats
    return tuple(outs)
