"""Tiled inference: the plan, feathering, tiled vs untiled on the same weights, memory
bounded by the tile, tile size from free memory and the out-of-memory fallback."""
import math
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from frfsr import FRFSR, AlignedTextures, FRFSRConfig
from frfsr import tiling
from frfsr.checks import MIN_LR_SIZE
from frfsr.tiling import TilePlan, auto_tile_size, axis_spans, feather, restore_tiled, upscale_tiled


def psnr(a, b):
    return 10 * math.log10(1.0 / float(((a - b) ** 2).mean()))


@pytest.fixture(scope="module")
def model():
    """Tiny model whose restoration convs are re-drawn larger than the release's init, so that
    the network changes the image a lot (~28 dB from its bilinear base) instead of ~60 dB."""
    torch.manual_seed(0)
    m = FRFSR(FRFSRConfig.tiny()).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, mod in m.restoration.named_modules():
            if isinstance(mod, nn.Conv2d) and not name.endswith("offset_mask"):
                mod.weight.normal_(0, 0.05, generator=g)
    return m


def smooth(shape, seed):
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    return F.interpolate(torch.rand(b, c, h // 4, w // 4, generator=g), size=(h, w), mode="bicubic").clamp(0, 1)


# ---------------------------------------------------------------- plan and feathering
@pytest.mark.parametrize("length, tile, overlap", [(60, 32, 16), (64, 40, 16), (100, 15, 4), (33, 32, 8), (20, 32, 8)])
def test_axis_spans_cover_with_overlap(length, tile, overlap):
    spans = axis_spans(length, tile, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == length
    assert all(b - a == min(tile, length) for a, b in spans)
    assert all(prev[1] - nxt[0] >= overlap for prev, nxt in zip(spans, spans[1:]))


def test_feather_weights_sum_to_one_and_hide_tile_borders():
    plan = TilePlan.build(40, 40, 24, 8)           # spans (0, 24), (16, 40): exactly the overlap
    wy, wx = plan.weight_sums(scale=4)
    assert torch.allclose(wy, torch.ones_like(wy)) and torch.allclose(wx, torch.ones_like(wx))
    w = feather(0, 24, 40, 8, scale=4)
    assert w[0] == 1 and (w[-8:] == 0).all()       # image border kept; inner border (overlap/4 LR px) dropped
    uneven = TilePlan.build(50, 37, 20, 6)
    for s in (1, 4):
        assert (uneven.weight_sums(s)[0] > 0).all() and (uneven.weight_sums(s)[1] > 0).all()
    assert len(TilePlan.build(30, 30, None)) == 1 and len(TilePlan.build(30, 30, 64)) == 1


# ---------------------------------------------------------------- tiled vs untiled
def test_tiled_matches_untiled(model):
    lr, ref = smooth((1, 3, 36, 44), 1), smooth((1, 3, 64, 64), 2)
    with torch.no_grad():
        corr = model.match(lr, ref)
        tex = model.align(corr)
        full = model.restore(lr, tex).sr
    base = F.interpolate(lr, scale_factor=4, mode="bilinear", align_corners=False)
    assert psnr(full, base) < 35                    # the network does change the image
    out = upscale_tiled(model, lr, ref, tile=32, overlap=16, return_details=True)
    assert out.tile == 32 and len(TilePlan.build(36, 44, 32, 16)) == 4        # 2 x 2 tiles
    assert psnr(out.sr, full) >= 40
    assert out.confidence.shape == corr.confidence.shape and out.warped_ref.shape == full.shape
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    assert (out.confidence[inner] - corr.confidence[inner]).abs().mean() < 0.02
    assert psnr(restore_tiled(model, lr, tex, tile=32, overlap=16), full) >= 40
    # a single tile is the untiled forward, exactly
    assert torch.equal(upscale_tiled(model, lr, ref, tile=None), full)


def test_tiled_matches_untiled_with_the_priors_upsampler():
    """A model whose U-Net also takes its SIFE's 4x image (``sife_upsampler``) tiles as well."""
    torch.manual_seed(1)
    m = FRFSR(FRFSRConfig.tiny(sife_upsampler=True)).eval()
    with torch.no_grad():
        for p in m.sife.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for name, mod in m.restoration.named_modules():
            if isinstance(mod, nn.Conv2d) and not name.endswith("offset_mask"):
                mod.weight.normal_(0, 0.05)
    lr, ref = smooth((1, 3, 36, 44), 1), smooth((1, 3, 64, 64), 2)
    with torch.no_grad():
        full = m(lr, ref)
        m.sife.conv_last.bias.add_(0.5)
        assert psnr(m(lr, ref), full) < 35              # the prior's image matters
        m.sife.conv_last.bias.sub_(0.5)
    assert psnr(upscale_tiled(m, lr, ref, tile=32, overlap=16), full) >= 40


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op creates."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def test_memory_is_bounded_by_the_tile_not_the_image(model):
    ref = smooth((1, 3, 32, 32), 3)
    encoded = model.encode_refs(ref)
    peaks = {}
    for name, (h, w), tile in (("small", (16, 32), 16), ("large", (16, 64), 16), ("untiled", (16, 64), None)):
        lr = smooth((1, 3, h, w), 4)
        with LargestTensor() as probe:
            upscale_tiled(model, lr, encoded, tile=tile, overlap=4)
        peaks[name] = probe.largest
    assert peaks["large"] == peaks["small"]        # twice the pixels, the same largest intermediate
    assert peaks["untiled"] > 3 * peaks["large"]   # ...which untiled grows with the image (4x the tile's pixels)


# ---------------------------------------------------------------- tile size and out-of-memory
REF = torch.rand(1, 3, 20, 20)


class FakeModel:
    """Stands in for FRFSR: nearest x4 'restoration'; fails like CUDA when a tile is too big."""

    config = FRFSRConfig.tiny()
    device, dtype = torch.device("cpu"), torch.float32

    def __init__(self, max_side=None, error=None):
        self.max_side, self.error, self.sides = max_side, error, []

    def encode_refs(self, refs, batch_size=None, tile=None, views=None):
        return refs

    def check_lr(self, lr, name="lr"):
        return lr

    def match(self, lr, refs, mode="auto", check=True):
        return SimpleNamespace(lr=lr, ref_confidence=())

    def align(self, corr):
        b, _, h, w = corr.lr.shape
        return AlignedTextures((), (), (), torch.ones(b, 1, h, w), torch.zeros(b, 3, 4 * h, 4 * w))

    def restore(self, lr, tex):
        self.sides.append(max(lr.shape[-2:]))
        if self.error is not None:
            raise self.error
        if self.max_side is not None and max(lr.shape[-2:]) > self.max_side:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return SimpleNamespace(sr=F.interpolate(lr, scale_factor=4, mode="nearest"))


def test_out_of_memory_halves_the_tile():
    lr = torch.rand(1, 3, 60, 50)
    fake = FakeModel(max_side=24)
    with pytest.warns(RuntimeWarning) as caught:
        out = upscale_tiled(fake, lr, torch.rand(1, 3, 20, 20), tile=None, overlap=4, return_details=True)
    assert [str(w.message) for w in caught] == ["out of memory with the whole 60x50 image; retrying with tile 30",
                                                "out of memory with tile 30; retrying with tile 15"]
    assert out.tile == 15 and max(fake.sides[-1:]) <= 24
    assert torch.allclose(out.sr, F.interpolate(lr, scale_factor=4, mode="nearest"), atol=1e-6)
    with pytest.raises(RuntimeError, match="even with the smallest tile"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        upscale_tiled(FakeModel(max_side=10), lr, torch.rand(1, 3, 20, 20), tile=None)
    with pytest.raises(ValueError, match="not memory"):        # other errors are not retried
        upscale_tiled(FakeModel(error=ValueError("not memory")), lr, torch.rand(1, 3, 20, 20), tile=30, overlap=4)


def test_tile_size_from_free_memory(monkeypatch):
    fake = FakeModel()
    per_px = tiling.bytes_per_lr_pixel(fake)
    assert auto_tile_size(fake, budget_bytes=40 * 40 * per_px) == 40
    assert auto_tile_size(fake, budget_bytes=10) == MIN_LR_SIZE
    assert auto_tile_size(fake, budget_bytes=10 ** 15) == tiling.MAX_AUTO_TILE
    monkeypatch.setattr(tiling, "free_memory", lambda device: 30 * 30 * per_px / tiling.MEMORY_FRACTION)
    out = upscale_tiled(fake, torch.rand(1, 3, 50, 70), torch.rand(1, 3, 20, 20), tile="auto", overlap=8,
                        return_details=True)
    assert out.tile == 30 and max(fake.sides) == 30


def test_progress_and_interrupt_callbacks():
    seen = []
    upscale_tiled(FakeModel(), torch.rand(1, 3, 40, 40), REF, tile=24, overlap=8,
                  progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    calls = []
    with pytest.raises(InterruptedError):
        upscale_tiled(FakeModel(), torch.rand(1, 3, 40, 40), REF, tile=24, overlap=8,
                      interrupt=lambda: calls.append(1) or len(calls) > 2)
    assert len(calls) == 3


def test_bad_tile_arguments():
    lr = torch.rand(1, 3, 40, 40)
    with pytest.raises(ValueError, match="tile must be at least 15"):
        upscale_tiled(FakeModel(), lr, REF, tile=10)
    with pytest.raises(TypeError, match="tile must be an int"):
        upscale_tiled(FakeModel(), lr, REF, tile="big")
    with pytest.raises(ValueError, match="overlap must be an integer >= 0"):
        upscale_tiled(FakeModel(), lr, REF, tile=20, overlap=-1)
    with pytest.raises(TypeError, match="lr must be a \\(B, 3, h, w\\) tensor"):
        upscale_tiled(FakeModel(), lr[0], REF)
