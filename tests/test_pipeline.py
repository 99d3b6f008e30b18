"""FRFSRPipeline end to end on a tiny random-weight model: every input kind, alpha, 16-bit,
several Refs, details and the relevance warning, clear errors."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from frfsr import FRFSR, FRFSRConfig, FRFSRPipeline
from frfsr.pipeline import FRFSRPipelineOutput, FRFSRWarning

H, W = 16, 18          # LR size: small, the model's minimum is 15


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    p = FRFSRPipeline(FRFSR(FRFSRConfig.tiny()))
    p.relevance_threshold = None            # random weights match poorly; tested on its own below
    return p


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    lr = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    ref = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
    return lr, ref


def test_pil_in_pil_out_matches_the_model(pipe, images):
    lr, ref = images
    out = pipe(Image.fromarray(lr), Image.fromarray(ref))
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (4 * W, 4 * H)
    with torch.no_grad():
        direct = pipe.model(torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255,
                            torch.from_numpy(ref).permute(2, 0, 1)[None].float() / 255)
    expected = (direct[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(out), expected)
    assert np.array_equal(pipe(lr, ref), expected)          # numpy uint8 in, same result out


def test_numpy_uint16_keeps_16_bits(pipe, images):
    lr, ref = images
    lr16 = lr.astype(np.uint16) * 257 + 100
    out = pipe(lr16, ref)
    assert out.dtype == np.uint16 and out.shape == (4 * H, 4 * W, 3)
    assert len(np.unique(out % 257)) > 1                   # real 16-bit values, not 8-bit ones scaled
    assert pipe(lr, ref, output_dtype="uint16").dtype == np.uint16


def test_numpy_float_and_tensors(pipe, images):
    lr, ref = images
    lrf = lr.astype(np.float32) / 255
    out = pipe(lrf, ref)
    assert out.dtype == np.float32 and out.shape == (4 * H, 4 * W, 3) and 0 <= out.min() and out.max() <= 1
    chw = torch.from_numpy(lrf).permute(2, 0, 1)
    sr = pipe(chw, torch.from_numpy(ref).permute(2, 0, 1))
    assert isinstance(sr, torch.Tensor) and sr.shape == (3, 4 * H, 4 * W)
    assert np.allclose(sr.permute(1, 2, 0).numpy(), out, atol=1e-6)
    batch = pipe(torch.stack([chw, chw.flip(-1)]), Image.fromarray(ref))
    assert batch.shape == (2, 3, 4 * H, 4 * W) and torch.allclose(batch[0], sr, atol=1e-6)


def test_rgba_keeps_its_alpha(pipe, images):
    lr, ref = images
    alpha = np.zeros((H, W, 1), np.uint8)
    alpha[:, W // 2:] = 255
    out = np.asarray(pipe(Image.fromarray(np.concatenate([lr, alpha], -1)), ref))
    assert out.shape == (4 * H, 4 * W, 4)
    assert (out[:, : 4 * W // 2 - 4, 3] == 0).all() and (out[:, 4 * W // 2 + 4:, 3] == 255).all()
    rgb_only = np.asarray(pipe(lr, ref))
    assert np.array_equal(out[..., :3], rgb_only)           # colour does not depend on alpha


def test_gray_in_gray_out(pipe, images):
    lr, ref = images
    gray = lr[..., 0]
    out = pipe(Image.fromarray(gray), ref)
    assert out.mode == "L" and out.size == (4 * W, 4 * H)
    out16 = pipe(Image.fromarray(gray.astype(np.uint16) * 257), ref)
    assert out16.mode == "I;16"
    assert pipe(gray, ref).shape == (4 * H, 4 * W)


def test_several_refs_and_encoded_refs(pipe, images):
    lr, ref = images
    ref2 = np.ascontiguousarray(ref[:20, :30])
    out = pipe(lr, [ref, ref2], output_type="pt")
    assert out.shape == (3, 4 * H, 4 * W)
    encoded = pipe.prepare_refs([ref, ref2])
    assert torch.equal(pipe(lr, encoded, output_type="pt"), out)
    outs = pipe([lr, lr[:, ::-1].copy()], ref)
    assert isinstance(outs, list) and len(outs) == 2 and outs[0].shape == (4 * H, 4 * W, 3)


def test_details_and_relevance_warning(pipe, images):
    lr, ref = images
    out = pipe(Image.fromarray(lr), ref, return_details=True)
    assert isinstance(out, FRFSRPipelineOutput)
    assert out.images.size == (4 * W, 4 * H) and out.warped_ref.size == (4 * W, 4 * H)
    assert out.confidence.mode == "L" and out.confidence.size == (W, H)
    assert isinstance(out.relevance, float) and -1 <= out.relevance <= 1
    det = pipe(torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255, ref, return_details=True)
    assert det.confidence.shape == (1, 1, H, W) and isinstance(det.relevance, list)
    assert det.relevance[0] == pytest.approx(out.relevance, abs=1e-6)
    pipe.relevance_threshold = 1.01                          # nothing reaches it: always warns
    try:
        with pytest.warns(FRFSRWarning, match="hardly matches lr .*model's own reconstruction"):
            pipe(lr, ref)
    finally:
        pipe.relevance_threshold = None
    with warnings.catch_warnings():
        warnings.simplefilter("error", FRFSRWarning)
        pipe(lr, ref)


def test_progress_bar_and_interrupt(pipe, images, capsys):
    lr, ref = images
    big = np.ascontiguousarray(np.concatenate([lr, lr[:, ::-1]], 1))          # 16 x 36: two tiles of 20
    pipe(big, ref, tile=20, overlap=4)
    assert "FRFSR tiles" in capsys.readouterr().err
    pipe.set_progress_bar_config(disable=True)
    pipe(big, ref, tile=20, overlap=4)
    assert "FRFSR tiles" not in capsys.readouterr().err
    pipe.set_progress_bar_config()
    with pytest.raises(InterruptedError):
        pipe(big, ref, tile=20, overlap=4, interrupt=lambda: True)


@pytest.mark.parametrize("lr, ref, err, message", [
    ("lr.png", None, TypeError, "lr must be a PIL image"),
    (np.zeros((10, 30, 3), np.uint8), None, ValueError, "lr is 10x30; the minimum LR size is 15x15"),
    (None, np.zeros((8, 30, 3), np.uint8), ValueError, "ref is 8x30; the minimum Ref size is 12x12"),
    (np.zeros((H, W, 3), np.int64), None, TypeError, "lr has dtype int64"),
    (None, [], ValueError, "at least one Ref"),
    (None, [np.zeros((20, 20, 3), np.uint8), "b.png"], TypeError, "ref\\[1\\] must be a PIL image"),
])
def test_bad_inputs(pipe, images, lr, ref, err, message):
    lr = images[0] if lr is None else lr
    ref = images[1] if ref is None else ref
    with pytest.raises(err, match=message):
        pipe(lr, ref)


def test_bad_options(pipe, images):
    lr, ref = images
    with pytest.raises(ValueError, match="output_type 'jpeg'"):
        pipe(lr, ref, output_type="jpeg")
    with pytest.raises(ValueError, match="tile must be at least 15"):
        pipe(lr, ref, tile=8)
    with pytest.raises(ValueError, match="overlap \\(12\\) must be at most half the tile"):
        pipe(lr, ref, tile=20, overlap=12)
    with pytest.raises(TypeError, match="frfsr.FRFSR model"):
        FRFSRPipeline(torch.nn.Conv2d(3, 3, 1))


@pytest.mark.parametrize("stage", [1, 2])
def test_compile_routes_every_network_through_torch_compile(images, stage):
    """pipe.compile(): each network is captured by torch.compile (a recording backend, no
    code generation here) and the output is unchanged, through the tiled pipeline too."""
    import copy

    import torch._dynamo

    torch.manual_seed(0)
    model = FRFSR(FRFSRConfig.tiny(stage=stage)).eval()
    eager = FRFSRPipeline(copy.deepcopy(model))
    eager.relevance_threshold = None
    compiled = FRFSRPipeline(model)
    compiled.relevance_threshold = None
    captured = []

    def recording_backend(gm, example_inputs):
        captured.append(gm)
        return gm.forward

    torch._dynamo.reset()
    assert compiled.compile(backend=recording_backend) is compiled
    lr, ref = images
    expected = eager(lr, ref, output_type="pt")
    got = compiled(lr, ref, output_type="pt")
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    names = ["texture_encoder.lr_trunk", "texture_encoder.ref_trunk", "ref_extractor", "sife", "restoration"]
    names += ["reuse_net"] if stage == 2 else []
    assert set(names) == set(model.COMPILED_PARTS) - ({"reuse_net"} if stage == 1 else set())
    for name in names:
        assert model.get_submodule(name)._compiled_call_impl is not None, name
    assert len(captured) >= len(names)          # one graph (at least) per network
    assert list(model.state_dict()) == list(eager.model.state_dict())      # names unchanged
    torch._dynamo.reset()


def test_channels_last_gives_the_same_images(pipe, images):
    lr, ref = images
    expected = pipe(lr, ref, output_type="pt")
    try:
        assert pipe.to(memory_format=torch.channels_last) is pipe
        assert pipe.model.restoration.head.weight.is_contiguous(memory_format=torch.channels_last)
        got = pipe(lr, ref, output_type="pt")
    finally:
        pipe.to(memory_format=torch.contiguous_format)
    assert pipe.model.restoration.head.weight.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="channels_last or torch.contiguous_format"):
        pipe.to(memory_format=torch.preserve_format)


def test_inputs_are_converted_and_checked_once_however_many_tiles(pipe, monkeypatch):
    """One call converts the images once and checks the LR once and each Ref once, in the
    model, not again per tile (the tiles are matched with check=False)."""
    import frfsr.models.frfsr as model_module
    import frfsr.pipeline as pipeline_module
    checked, converted = [], []
    real_check, real_convert = model_module.check_image, pipeline_module.to_model_input
    monkeypatch.setattr(model_module, "check_image", lambda t, name, *a, **k: checked.append(name) or real_check(t, name, *a, **k))
    monkeypatch.setattr(pipeline_module, "to_model_input", lambda x, name: converted.append(name) or real_convert(x, name))
    tiles = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FRFSRWarning)
        pipe(torch.rand(1, 3, 40, 36), [torch.rand(1, 3, 32, 32), torch.rand(1, 3, 28, 30)], tile=16, overlap=4,
             output_type="pt", progress=False, interrupt=lambda: tiles.append(1) and False)
    assert len(tiles) >= 6                               # several tiles ...
    assert sorted(checked) == ["lr", "ref[0]", "ref[1]"]     # ... one check each
    assert sorted(converted) == ["lr", "ref[0]", "ref[1]"]
