"""Losses for training: VGG19 perceptual loss, image discriminator and WGAN-GP helpers.

Nothing here downloads weights. :class:`VGG19Features` starts from random weights; load a
torchvision ``vgg19`` state dict (``features.N.weight`` / ``features.N.bias`` keys, a dict or
a local ``.pth`` / ``.safetensors`` file) for a meaningful perceptual loss.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from frfsr.convert import load_checkpoint
from frfsr.metrics import LAPLACIAN, Y_WEIGHTS, lr_grid_spectrum
from frfsr.models.vgg import imagenet_normalisation, vgg_layers

__all__ = ["VGG19_LAYER_NAMES", "VGG19Features", "PerceptualLoss", "CRITERIA", "check_criterion", "feature_distance",
           "ImageDiscriminator", "BlurDown", "PatchCritic", "DISCRIMINATORS", "build_discriminator", "random_shift",
           "grid_excess", "detail_strength_gap", "wgan_generator_loss", "wgan_discriminator_loss", "gradient_penalty",
           "wgan_gp_losses"]

#: Names of ``VGG19Features.features[i]``, i = 0 .. 29 (conv1_1 ... relu5_1), as in torchvision.
VGG19_LAYER_NAMES: list[str] = [layer.name for layer in vgg_layers(19, "relu5_1")]


class VGG19Features(nn.Module):
    """Frozen VGG19 convolutional trunk up to ``relu5_1``.

    ``self.features`` is an ``nn.Sequential`` whose indices match torchvision's
    ``vgg19().features`` (conv1_1 = 0, relu1_1 = 1, ..., conv5_1 = 28, relu5_1 = 29), so
    torchvision state dicts load directly (:meth:`load_vgg_weights` drops the unused deeper
    layers and the classifier). Input is RGB in [0, 1], normalised with the ImageNet mean / std
    when ``normalize`` is True. Parameters never require grad and the module stays in eval mode;
    gradients still flow to the input.

    ``forward(x, layers=None)`` returns ``{name: feature}`` for ``layers`` (default: the
    ``layers`` given at construction), names from :data:`VGG19_LAYER_NAMES`.
    """

    def __init__(self, layers=("relu5_1",), weights=None, normalize: bool = True):
        super().__init__()
        self.layers = self._check_layers(layers)
        self.normalize = bool(normalize)
        self.features = nn.Sequential(*(layer.build() for layer in vgg_layers(19, "relu5_1")))
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        mean, std = imagenet_normalisation()
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.pretrained = False
        if weights is not None:
            self.load_vgg_weights(weights)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def _check_layers(layers) -> tuple[str, ...]:
        if isinstance(layers, str):
            layers = (layers,)
        layers = tuple(layers)
        unknown = [n for n in layers if n not in VGG19_LAYER_NAMES]
        if not layers or unknown:
            raise ValueError(f"unknown VGG19 layer(s) {unknown or layers!r}; accepted: {', '.join(VGG19_LAYER_NAMES)}")
        return layers

    def train(self, mode: bool = True):
        """Kept in eval mode (the trunk is frozen)."""
        return super().train(False)

    def load_vgg_weights(self, weights) -> "VGG19Features":
        """Load a torchvision ``vgg19`` state dict, or a local ``.pth`` / ``.pt`` / ``.safetensors`` file of one.

        Keys ``features.N.weight`` / ``features.N.bias`` are used (a ``module.`` prefix is
        stripped; bare ``N.weight`` keys of a ``vgg.features`` state dict are accepted); keys of
        layers past relu5_1 and of the classifier are ignored. Missing or mis-shaped keys raise
        ``ValueError`` naming them. Files are read with :func:`frfsr.convert.load_checkpoint`.
        """
        if isinstance(weights, (str, Path)):
            weights = load_checkpoint(weights)
        if not isinstance(weights, Mapping):
            raise TypeError(f"weights must be a state dict (mapping) or a file path; got {type(weights).__name__}")
        sd = {}
        for k, v in weights.items():
            k = k[len("module."):] if k.startswith("module.") else k
            if k[:1].isdigit():
                k = "features." + k
            sd[k] = v
        own = self.features.state_dict()
        missing, bad_shape, new = [], [], {}
        for k, ref in own.items():
            full = "features." + k
            if full not in sd:
                missing.append(full)
            elif tuple(sd[full].shape) != tuple(ref.shape):
                bad_shape.append(f"{full} {tuple(sd[full].shape)} != {tuple(ref.shape)}")
            else:
                new[k] = sd[full]
        if missing or bad_shape:
            raise ValueError("not a torchvision vgg19 state dict: "
                             + (f"missing {', '.join(missing)}" if missing else "")
                             + ("; " if missing and bad_shape else "")
                             + (f"wrong shapes {', '.join(bad_shape)}" if bad_shape else ""))
        self.features.load_state_dict(new)
        self.pretrained = True
        return self

    def forward(self, x: torch.Tensor, layers=None) -> dict[str, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"VGG19Features expects (B, 3, H, W) RGB input in [0, 1]; got shape {tuple(x.shape)}")
        wanted = self.layers if layers is None else self._check_layers(layers)
        last = max(VGG19_LAYER_NAMES.index(n) for n in wanted)
        if self.normalize:
            x = (x - self.mean) / self.std
        out = {}
        for i, m in enumerate(self.features):
            x = m(x)
            if VGG19_LAYER_NAMES[i] in wanted:
                out[VGG19_LAYER_NAMES[i]] = x
            if i == last:
                break
        return out


#: feature distances of the perceptual losses (see :func:`feature_distance`)
CRITERIA = ("fro", "l1", "l2")


def check_criterion(criterion: str) -> str:
    """``criterion`` if it is one of :data:`CRITERIA`, else ValueError."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be 'fro', 'l1' or 'l2'; got {criterion!r}")
    return criterion


def feature_distance(a: torch.Tensor, b: torch.Tensor, criterion: str) -> torch.Tensor:
    """``'fro'``: ``torch.norm(a - b, p='fro')`` over the whole tensor, batch included (BasicSR);
    ``'l1'`` / ``'l2'``: mean absolute / squared error."""
    if criterion == "fro":
        return torch.norm(a - b, p="fro")
    if criterion == "l1":
        return F.l1_loss(a, b)
    return F.mse_loss(a, b)


class PerceptualLoss(nn.Module):
    """VGG19 feature loss, BasicSR's ``PerceptualLoss`` with ``style_weight=0``.

    ``layer`` is one layer name (weight 1) or a mapping ``{name: layer_weight}``. For each
    layer the distance between the features of ``x`` and of ``gt`` (detached) is

    * ``'fro'``: ``torch.norm(fx - fgt, p='fro')``, the Frobenius norm over the *whole*
      feature tensor, batch included (not a per-sample mean);
    * ``'l1'`` / ``'l2'``: mean absolute / squared error;

    and the loss is ``weight * sum(layer_weight * distance)``. ``vgg`` shares an existing
    :class:`VGG19Features`; otherwise one is built and ``vgg_weights`` (state dict or path) is
    loaded into it. A trunk without loaded weights triggers a warning, since random VGG features
    make the loss meaningless for training.
    """

    def __init__(self, layer="relu5_1", weight: float = 1e-4, criterion: str = "fro",
                 vgg: VGG19Features | None = None, vgg_weights=None, normalize: bool = True):
        super().__init__()
        if isinstance(layer, str):
            layer = {layer: 1.0}
        if not isinstance(layer, Mapping) or not layer:
            raise ValueError(f"layer must be a VGG19 layer name or a non-empty {{name: weight}} mapping; got {layer!r}")
        self.layer_weights = {str(k): float(v) for k, v in layer.items()}
        VGG19Features._check_layers(tuple(self.layer_weights))
        self.criterion = check_criterion(criterion)
        self.weight = float(weight)
        if vgg is None:
            vgg = VGG19Features(layers=tuple(self.layer_weights), normalize=normalize)
        elif not isinstance(vgg, VGG19Features):
            raise TypeError(f"vgg must be a VGG19Features; got {type(vgg).__name__}")
        if vgg_weights is not None:
            vgg.load_vgg_weights(vgg_weights)
        if not vgg.pretrained:
            warnings.warn("PerceptualLoss uses a VGG19 with random weights; pass vgg_weights (a torchvision vgg19 "
                          "state dict or file) for a meaningful loss", UserWarning, stacklevel=2)
        self.vgg = vgg

    def forward(self, x: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        if x.shape != gt.shape:
            raise ValueError(f"x and gt must have the same shape; got {tuple(x.shape)} and {tuple(gt.shape)}")
        layers = tuple(self.layer_weights)
        fx = self.vgg(x, layers)
        fg = self.vgg(gt.detach(), layers)
        loss = sum(w * feature_distance(fx[k], fg[k], self.criterion) for k, w in self.layer_weights.items())
        return loss * self.weight


class ImageDiscriminator(nn.Module):
    """Image discriminator (TTSR / C2-Matching style).

    Five blocks ``conv3x3 s1 -> BN -> LeakyReLU(0.2) -> conv3x3 s2 -> BN -> LeakyReLU(0.2)``
    with ``ndf, 2ndf, 4ndf, 8ndf, 16ndf`` channels (each block halves the resolution), then
    ``AdaptiveAvgPool2d(1) -> conv1x1 (16ndf -> 1024) -> LeakyReLU(0.2) -> conv1x1 (1024 -> 1)
    -> Sigmoid``. Output: ``(B, 1)`` in (0, 1). Initialisation: conv weights N(0, 0.02), conv
    biases 0, BN weights N(1, 0.02), BN biases 0.
    """

    def __init__(self, in_ch: int = 3, ndf: int = 32):
        super().__init__()
        if in_ch < 1 or ndf < 1:
            raise ValueError(f"in_ch and ndf must be positive; got in_ch={in_ch}, ndf={ndf}")
        layers: list[nn.Module] = []
        prev = in_ch
        for mult in (1, 2, 4, 8, 16):
            ch = ndf * mult
            layers += [nn.Conv2d(prev, ch, 3, 1, 1), nn.BatchNorm2d(ch), nn.LeakyReLU(0.2, inplace=True),
                       nn.Conv2d(ch, ch, 3, 2, 1), nn.BatchNorm2d(ch), nn.LeakyReLU(0.2, inplace=True)]
            prev = ch
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(prev, 1024, 1), nn.LeakyReLU(0.2, inplace=True),
                                  nn.Conv2d(1024, 1, 1), nn.Sigmoid())
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"ImageDiscriminator expects (B, C, H, W); got shape {tuple(x.shape)}")
        return self.head(self.features(x)).flatten(1)


class BlurDown(nn.Module):
    """A fixed binomial low-pass ``[1, 2, 1] x [1, 2, 1] / 16`` per channel, then every second
    pixel (reflect padding): ``(B, C, H, W) -> (B, C, ceil(H / 2), ceil(W / 2))``. Downsampling
    without aliasing, so that a pattern finer than the new grid is damped instead of folded
    into a coarser one."""

    def __init__(self):
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", (k[:, None] * k[None, :] / 16.0)[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.kernel.to(x.dtype).expand(c, 1, 3, 3),
                        stride=2, groups=c)


class PatchCritic(nn.Module):
    """A WGAN-GP critic that scores every patch (``loss.disc: patch`` / ``patch_aa``).

    The critic of the WGAN-GP paper's recipe: no BatchNorm (the penalty is taken per sample)
    and no sigmoid (the critic's output is unbounded). ``conv3x3 (3 -> ndf) -> LeakyReLU(0.2)``,
    then three blocks that halve the size with ``2ndf, 4ndf, 8ndf`` channels, then
    ``conv3x3 (8ndf -> 1)``: one score per 8x8 cell. Each block is ``conv4x4 s2 -> LeakyReLU(0.2)``
    (each cell sees 40x40 input pixels) or, with ``antialias`` (``patch_aa``), ``conv3x3 ->
    LeakyReLU(0.2) ->`` :class:`BlurDown` (blurred before each halving, so that detail finer than
    the new grid is damped rather than folded into coarser features; each cell sees 47x47 pixels).
    Output: ``(B, 1)``, the mean score. The release's :class:`ImageDiscriminator` scores the
    whole image through a sigmoid; a patch critic is what lets fine texture, not the image's
    content, decide the score.
    """

    def __init__(self, in_ch: int = 3, ndf: int = 32, antialias: bool = False):
        super().__init__()
        if in_ch < 1 or ndf < 1:
            raise ValueError(f"in_ch and ndf must be positive; got in_ch={in_ch}, ndf={ndf}")
        layers: list[nn.Module] = [nn.Conv2d(in_ch, ndf, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True)]
        prev = ndf
        for mult in (2, 4, 8):
            if antialias:
                layers += [nn.Conv2d(prev, ndf * mult, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True), BlurDown()]
            else:
                layers += [nn.Conv2d(prev, ndf * mult, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            prev = ndf * mult
        layers.append(nn.Conv2d(prev, 1, 3, 1, 1))
        self.features = nn.Sequential(*layers)

    def score_map(self, x: torch.Tensor) -> torch.Tensor:
        """The per-patch scores, ``(B, 1, ceil(H / 8), ceil(W / 8))`` (``H // 8`` for sizes divisible by 8)."""
        if x.ndim != 4:
            raise ValueError(f"PatchCritic expects (B, C, H, W); got shape {tuple(x.shape)}")
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score_map(x).mean(dim=(2, 3))


#: ``loss.disc`` names and the discriminators they build (each called with ``in_ch`` and ``ndf``).
DISCRIMINATORS: dict[str, Callable[..., nn.Module]] = {
    "release": ImageDiscriminator, "patch": PatchCritic, "patch_aa": partial(PatchCritic, antialias=True)}


def build_discriminator(kind: str, ndf: int) -> nn.Module:
    """The discriminator that ``loss.disc`` names, for RGB images."""
    if kind not in DISCRIMINATORS:
        raise ValueError(f"unknown discriminator {kind!r}; accepted: {', '.join(DISCRIMINATORS)}")
    return DISCRIMINATORS[kind](in_ch=3, ndf=ndf)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` (B, C, H, W) moved by a whole number of pixels, ``-max_shift .. max_shift`` in each
    direction, one draw per sample (from ``generator``, on the CPU), reflect-padded at the border;
    differentiable. ``loss.disc_shift``: what the critic sees of both real and generated images,
    so that a pattern's phase against the critic's grid changes from step to step
    (``max_shift`` 0 returns ``x``)."""
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0; got {max_shift}")
    if max_shift == 0:
        return x
    if x.ndim != 4 or max_shift >= min(x.shape[-2:]):
        raise ValueError(f"random_shift expects (B, C, H, W) larger than max_shift={max_shift}; got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    offsets = torch.randint(0, 2 * max_shift + 1, (x.shape[0], 2), generator=generator).tolist()
    padded = F.pad(x, (max_shift,) * 4, mode="reflect")
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])


def grid_excess(sr: torch.Tensor, hr: torch.Tensor, scale: int = 4) -> torch.Tensor:
    """``loss.grid_penalty``'s term: how far the SR's spectrum rises above the truth's at the LR
    pixel grid's frequencies (:func:`frfsr.metrics.lr_grid_spectrum`), where an x``scale`` net's
    patterns (stripes of period ``scale``, checkerboards) sit. The mean, over those bins, the
    channels and the samples, of ``relu(|FFT(sr)| - |FFT(hr)|)`` (orthonormal FFT of each
    mean-removed, Hann-windowed channel): zero while the SR has no more energy there than the
    truth (a soft SR costs nothing), growing with the amplitude of a pattern locked to the grid."""
    if sr.shape != hr.shape or sr.ndim != 4:
        raise ValueError(f"grid_excess expects two (B, C, H, W) tensors of one shape; got {tuple(sr.shape)} "
                         f"and {tuple(hr.shape)}")

    def amplitude(x):
        f = lr_grid_spectrum(x.float(), scale)
        return (f.real ** 2 + f.imag ** 2 + 1e-12).sqrt()       # |f| with a gradient at 0

    return torch.relu(amplitude(sr) - amplitude(hr.detach())).mean()


def detail_strength_gap(sr: torch.Tensor, hr: torch.Tensor, cell: int = 8) -> torch.Tensor:
    """``loss.detail``'s term: how far the strength of the SR's fine detail differs from the
    truth's, cell by cell. On Y (:data:`frfsr.metrics.Y_WEIGHTS`, 0-1 scale), the 3x3 Laplacian of
    :func:`frfsr.metrics.sharpness` (no padding), its RMS over each ``cell`` x ``cell`` block,
    and the mean ``|RMS(sr) - RMS(hr)|``. It asks for as much detail as the truth has
    where the truth has it and says nothing of its sign or place inside the cell: a soft SR pays
    for every cell it leaves flatter than the truth, an SR with invented texture where the truth
    is flat pays too. It is meant to sit beside the L1 loss, which asks for the detail's place."""
    if sr.shape != hr.shape or sr.ndim != 4 or sr.shape[1] != 3:
        raise ValueError(f"detail_strength_gap expects two (B, 3, H, W) tensors of one shape; got {tuple(sr.shape)} "
                         f"and {tuple(hr.shape)}")
    if isinstance(cell, bool) or not isinstance(cell, int) or cell < 2 or cell > min(sr.shape[-2:]) - 2:
        raise ValueError(f"cell must be an int from 2 to the image side - 2 ({min(sr.shape[-2:]) - 2}); got {cell!r}")

    def strength(x):
        y = (x.float() * x.new_tensor(Y_WEIGHTS, dtype=torch.float32).view(1, 3, 1, 1) / 255).sum(1, keepdim=True)
        lap = F.conv2d(y, LAPLACIAN.to(x.device, torch.float32))
        return (F.avg_pool2d(lap * lap, cell) + 1e-8).sqrt()

    return (strength(sr) - strength(hr.detach())).abs().mean()


def wgan_generator_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """Generator adversarial loss ``-D(fake).mean()``."""
    return -d_fake.mean()


def wgan_discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Critic loss without penalty ``D(fake).mean() - D(real).mean()``."""
    return d_fake.mean() - d_real.mean()


def gradient_penalty(D, real: torch.Tensor, fake: torch.Tensor, weight: float = 10.0,
                     generator: torch.Generator | None = None, alpha: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP penalty ``weight * mean_b (||grad_x D(x_b)||_2 - 1)^2``.

    ``x = alpha * real + (1 - alpha) * fake`` with one ``alpha ~ U(0, 1)`` per sample (drawn on
    the CPU from ``generator``, or given as ``alpha`` of shape (B,) / (B, 1, 1, 1)); ``real``
    and ``fake`` are detached. The penalty is differentiable w.r.t. ``D``'s parameters.
    """
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have the same shape; got {tuple(real.shape)} and {tuple(fake.shape)}")
    b = real.shape[0]
    if alpha is None:
        alpha = torch.rand(b, generator=generator)
    alpha = alpha.reshape(b, *([1] * (real.ndim - 1))).to(device=real.device, dtype=real.dtype)
    x = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    out = D(x)
    (grad,) = torch.autograd.grad(outputs=out, inputs=x, grad_outputs=torch.ones_like(out),
                                  create_graph=True, retain_graph=True)
    return weight * ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()


def wgan_gp_losses(D, real: torch.Tensor, fake: torch.Tensor, gp_weight: float = 10.0,
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Discriminator step terms: ``{'d_loss': d_wgan + gp, 'd_wgan', 'gp', 'd_real', 'd_fake'}``.

    ``fake`` is detached (the generator is not updated by this loss); use
    :func:`wgan_generator_loss` on ``D(fake)`` for the generator step.
    """
    d_real = D(real)
    d_fake = D(fake.detach())
    d_wgan = wgan_discriminator_loss(d_real, d_fake)
    gp = gradient_penalty(D, real, fake, weight=gp_weight, generator=generator)
    return {"d_loss": d_wgan + gp, "d_wgan": d_wgan, "gp": gp,
            "d_real": d_real.mean().detach(), "d_fake": d_fake.mean().detach()}
