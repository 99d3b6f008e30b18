"""Image conversions (no model): every accepted input kind, back to the same kind."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from frfsr.image_io import from_model_output, map_to_output, to_model_input, upscale_alpha


def _roundtrip(image, **kw):
    """Through the converters with a nearest x4 'model'."""
    rgb, alpha, info = to_model_input(image)
    sr = F.interpolate(rgb, scale_factor=4, mode="nearest")
    return rgb, alpha, info, from_model_output(sr, upscale_alpha(alpha) if alpha is not None else None, info, **kw)


def test_numpy_uint8_uint16_float():
    rng = np.random.default_rng(0)
    a8 = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    rgb, alpha, info, out = _roundtrip(a8)
    assert rgb.shape == (1, 3, 5, 6) and rgb.dtype == torch.float32 and alpha is None
    assert out.dtype == np.uint8 and out.shape == (20, 24, 3) and np.array_equal(out[::4, ::4], a8)
    a16 = rng.integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    *_, out = _roundtrip(a16)
    assert out.dtype == np.uint16 and np.array_equal(out[::4, ::4], a16)
    af = rng.random((5, 6, 3), dtype=np.float32)
    *_, out = _roundtrip(af)
    assert out.dtype == np.float32 and np.allclose(out[::4, ::4], af)


def test_gray_is_expanded_and_given_back_as_gray():
    g = np.arange(30, dtype=np.uint8).reshape(5, 6)
    rgb, _, info, out = _roundtrip(g)
    assert rgb.shape == (1, 3, 5, 6) and torch.equal(rgb[:, 0], rgb[:, 2]) and info.gray
    assert out.shape == (20, 24) and np.array_equal(out[::4, ::4], g)
    *_, out = _roundtrip(Image.fromarray(g))
    assert out.mode == "L" and out.size == (24, 20)


def test_pil_modes():
    rng = np.random.default_rng(1)
    rgba = Image.fromarray(rng.integers(0, 256, (5, 6, 4), dtype=np.uint8))
    _, alpha, info, out = _roundtrip(rgba)
    assert alpha.shape == (1, 1, 5, 6) and out.mode == "RGBA" and out.size == (24, 20)
    la = Image.fromarray(rng.integers(0, 256, (5, 6, 2), dtype=np.uint8))
    assert _roundtrip(la)[3].mode == "LA"
    g16 = Image.fromarray(rng.integers(0, 65536, (5, 6), dtype=np.uint16))
    *_, out = _roundtrip(g16)
    assert out.mode == "I;16" and np.array_equal(np.asarray(out)[::4, ::4], np.asarray(g16))
    pal = Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).convert("P")
    assert _roundtrip(pal)[3].mode == "RGB"
    assert _roundtrip(Image.new("1", (6, 5)))[3].mode == "L"
    assert _roundtrip(Image.new("CMYK", (6, 5)))[3].mode == "RGB"


def test_tensors_chw_bchw_uint8():
    t = torch.rand(3, 5, 6)
    *_, out = _roundtrip(t)
    assert out.shape == (3, 20, 24) and out.dtype == torch.float32 and torch.equal(out[:, ::4, ::4], t)
    b = torch.rand(2, 4, 5, 6, dtype=torch.float64)
    _, alpha, info, out = _roundtrip(b)
    assert info.batched and alpha.shape == (2, 1, 5, 6) and out.shape == (2, 4, 20, 24) and out.dtype == torch.float64
    u = torch.randint(0, 256, (1, 5, 6), dtype=torch.uint8)
    *_, out = _roundtrip(u)
    assert out.dtype == torch.uint8 and out.shape == (1, 20, 24) and torch.equal(out[:, ::4, ::4], u)


def test_output_type_and_dtype_overrides():
    a16 = np.full((5, 6, 3), 40000, np.uint16)
    *_, out = _roundtrip(a16, output_type="pt")
    assert out.dtype == torch.float32 and out.shape == (3, 20, 24)
    *_, out = _roundtrip(np.zeros((5, 6, 3), np.uint8), output_dtype="uint16")
    assert out.dtype == np.uint16
    *_, out = _roundtrip(torch.rand(3, 5, 6), output_type="np", output_dtype=np.uint16)
    assert out.dtype == np.uint16 and out.shape == (20, 24, 3)
    *_, out = _roundtrip(torch.rand(3, 5, 6), output_type="pil")
    assert out.mode == "RGB"
    assert _roundtrip(a16, output_type="pil")[3].mode == "RGB"          # PIL's natural depth: 8-bit
    with pytest.raises(ValueError, match="PIL cannot hold 16-bit colour"):
        _roundtrip(a16, output_type="pil", output_dtype="uint16")
    with pytest.raises(ValueError, match="output_type 'jpg' is not supported"):
        _roundtrip(a16, output_type="jpg")
    with pytest.raises(ValueError, match="output_dtype 'int7' is not supported"):
        _roundtrip(a16, output_dtype="int7")
    conf = torch.rand(1, 1, 5, 6) * 2 - 1
    assert map_to_output(conf, "np").shape == (5, 6) and map_to_output(conf, "pil").mode == "L"


@pytest.mark.parametrize("bad, err, message", [
    ("image.png", TypeError, "must be a PIL image, a numpy array"),
    (np.zeros((5, 6, 5), np.uint8), ValueError, "5 channels.*accepted: 1 \\(gray\\)"),
    (np.zeros((3, 5, 6), np.uint8), ValueError, "channels-first"),
    (np.zeros((2, 5, 6, 3), np.uint8), ValueError, "shape \\(H, W\\) or \\(H, W, C\\)"),
    (np.zeros((5, 6, 3), np.int32), TypeError, "dtype int32; accepted numpy dtypes: uint8, uint16"),
    (np.full((5, 6, 3), 255.0, np.float32), ValueError, "float images must be in \\[0, 1\\]"),
    (np.full((5, 6, 3), np.nan, np.float32), ValueError, "NaN"),
    (torch.zeros(5, 6), ValueError, "\\(C, H, W\\) or \\(B, C, H, W\\)"),
    (torch.zeros(1, 5, 6, 3), ValueError, "channels-last"),
    (torch.zeros(3, 5, 6, dtype=torch.int64), TypeError, "torch.uint8 or a floating dtype"),
])
def test_bad_inputs_are_named(bad, err, message):
    with pytest.raises(err, match=message):
        to_model_input(bad, "image")


@pytest.mark.parametrize("image", [torch.rand(0, 3, 20, 20), torch.rand(3, 0, 20), torch.rand(1, 3, 20, 0),
                                   np.zeros((0, 20, 3), np.uint8), np.zeros((20, 0), np.float32)],
                         ids=["batch0", "height0", "width0", "np_height0", "np_width0"])
def test_empty_images_are_refused_clearly(image):
    from frfsr import FRFSR, FRFSRConfig, FRFSRPipeline
    with pytest.raises(ValueError, match=r"lr is empty: shape .* has a zero-length axis"):
        to_model_input(image, "lr")
    torch.manual_seed(0)
    pipe = FRFSRPipeline(FRFSR(FRFSRConfig.tiny()))
    with pytest.raises(ValueError, match="is empty"):
        pipe(image, torch.rand(3, 40, 40), progress=False)
    with pytest.raises(ValueError, match="ref is empty"):
        pipe(torch.rand(3, 20, 20), image if image.ndim != 2 else image[None], progress=False)
    with pytest.raises(ValueError, match="empty batch"):
        pipe.model.match(torch.rand(0, 3, 20, 20), torch.rand(1, 3, 40, 40))
