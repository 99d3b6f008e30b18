"""Ref encoding with bounded memory: tiled feature extraction equals the whole-image one,
its intermediates are bounded by the tile, the memory need is checked up front with a
message that says what to do, and out-of-memory halves the extractor tile."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from frfsr import FRFSR, FRFSRConfig, FRFSRPipeline
from frfsr import memory
from frfsr.models.frfsr import ref_bytes_per_pixel


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FRFSR(FRFSRConfig.tiny()).eval()


@pytest.mark.parametrize("hw", [(100, 131), (67, 90), (97, 72)])
def test_tiled_extraction_equals_whole(model, hw):
    ref = torch.rand(1, 3, *hw, generator=torch.Generator().manual_seed(hw[0]))
    with torch.no_grad():
        whole = model.encode_refs(ref, tile=None)
        tiled = model.encode_refs(ref, tile=64)
    for a, b in zip(whole.textures + whole.feats, tiled.textures + tiled.feats):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 4 and at least 64"):
        model.texture_encoder.encode_ref(ref, tile=50)


class LargestConv(TorchDispatchMode):
    """The largest output of any convolution."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket is torch.ops.aten.convolution:
            self.largest = max(self.largest, out.numel())
        return out


def test_extractor_intermediates_are_bounded_by_the_tile(model):
    peaks = {}
    for name, side, tile in (("small", 192, 64), ("large", 320, 64), ("whole", 320, None)):
        ref = torch.rand(1, 3, side, side)
        with LargestConv() as probe, torch.no_grad():
            model.encode_refs(ref, tile=tile)
        peaks[name] = probe.largest
    assert peaks["large"] == peaks["small"]           # 2.8 times the pixels, the same largest intermediate
    assert peaks["whole"] > 10 * peaks["large"]       # 320^2 against one tile of 64 + 2 * 16 halo pixels


def test_ref_bytes_per_pixel_of_the_paper_preset():
    assert ref_bytes_per_pixel(FRFSRConfig.paper()) == 4 * (3 + 64 + 128 / 4 + 2 * 256 / 16) == 524
    assert ref_bytes_per_pixel(FRFSRConfig.paper(), torch.bfloat16) == 262


def test_too_large_ref_is_refused_up_front_with_what_to_do(model, monkeypatch):
    pipe = FRFSRPipeline(model)
    ref = torch.rand(1, 3, 300, 400)
    need = memory.ref_memory_check(model, ref)
    assert need > ref_bytes_per_pixel(model.config) * 300 * 400
    monkeypatch.setattr(memory, "free_memory", lambda device: need // 3)
    calls = []
    monkeypatch.setattr(model, "encode_refs", lambda *a, **k: calls.append(1))
    with pytest.raises(MemoryError, match=r"encoding the Ref \(400x300\) needs about .* GiB .* Downscale the Ref to "
                                          r"about \d+x\d+ or less"):
        pipe(torch.rand(1, 3, 20, 20), ref, progress=False)
    assert not calls                                   # nothing was computed


def test_out_of_memory_while_encoding_halves_the_tile(model, monkeypatch):
    real = FRFSR.encode_refs
    tiles = []

    def fails_above_128(self, ref, batch_size=None, tile=None, views=None):
        tiles.append(tile)
        if tile > 128:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, ref, batch_size, tile=tile, views=views)

    monkeypatch.setattr(FRFSR, "encode_refs", fails_above_128)
    ref = torch.rand(1, 3, 200, 160)
    with pytest.warns(RuntimeWarning) as caught:
        enc = memory.encode_within_memory(model, ref)
    assert tiles == [1024, 512, 256, 128]
    assert [str(w.message).split()[-2] for w in caught] == ["512", "256", "128"]
    with torch.no_grad():
        whole = real(model, ref, tile=None)
    torch.testing.assert_close(enc.feats[0], whole.feats[0], rtol=0, atol=1e-5)
    monkeypatch.setattr(FRFSR, "encode_refs", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("not memory")))
    with pytest.raises(RuntimeError, match="not memory"):
        memory.encode_within_memory(model, ref)
