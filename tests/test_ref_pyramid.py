"""The Ref pyramid: a Ref shot 2x closer than the LR is matched at its 0.5 copy, a Ref
rotated by 30 degrees at its copy rotated back."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from frfsr import FRFSRPipeline
from frfsr.demo import ASSETS, _load
from frfsr.models.frfsr import RefViews, check_ref_angles, check_ref_scales, ref_copy_size, rotate_ref


@pytest.fixture(scope="module")
def scene():
    """The bundled weights; a demo photo as HR, its bicubic 1/4 as LR, and a Ref that shows the
    same scene twice as close (the HR's centre half, upscaled 2x)."""
    pipe = FRFSRPipeline.from_pretrained()
    hr = _load(ASSETS / "hr.png")[..., :96, :96]
    lr = F.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    closer = F.interpolate(hr[..., 24:72, 24:72], scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)
    return pipe, lr, closer


def test_a_ref_twice_as_close_is_matched_at_the_half_scale(scene):
    pipe, lr, closer = scene
    model = pipe.model
    with torch.no_grad():
        enc = model.encode_refs(closer, views=RefViews((1, 0.71, 0.5)))
        corr = model.match(lr, enc, mode="exact")
        plain = model.match(lr, model.encode_refs(closer), mode="exact")
    assert enc.sources == ((0, 1.0, 0.0), (0, 0.71, 0.0), (0, 0.5, 0.0))
    assert [tuple(i.shape[-2:]) for i in enc.images] == [(96, 96), (68, 68), (48, 48)]
    # the LR's centre (what the Ref shows) is matched at the 0.5 copy, where the scales agree
    centre = corr.ref_id[0, 8:16, 8:16]
    assert (centre == 2).float().mean() > 0.6, corr.ref_id
    assert float(corr.confidence[..., 8:16, 8:16].mean()) > float(plain.confidence[..., 8:16, 8:16].mean()) + 0.05


def test_pipeline_cli_options_and_checks(scene, tmp_path):
    pipe, lr, closer = scene
    out = pipe(lr, closer, ref_scales=(1, 0.5), return_details=True, output_type="pt", progress=False)
    assert out.images.shape == (1, 3, 96, 96)
    enc = pipe.prepare_refs(closer, ref_scales=(1, 0.5))
    assert len(enc.images) == 2 and enc.sources[1] == (0, 0.5, 0.0)
    assert check_ref_scales(1) == (1.0,) and check_ref_scales([1, "0.5"]) == (1.0, 0.5)
    for bad in ((), (1, 1), (0,), (5,), ("x",)):
        with pytest.raises(ValueError, match="ref_scales"):
            check_ref_scales(bad)
    tiny = torch.rand(1, 3, 20, 20)                    # its 0.5 copy is under the minimum Ref size: left out
    assert len(pipe.model.encode_refs(tiny, views=RefViews((1, 0.5))).images) == 1
    from frfsr import cli
    args = cli.build_parser().parse_args(["upscale", "a.png", "--ref", "b.png", "-o", "c.png", "--ref-scales", "1", "0.5"])
    assert args.ref_scales == [1.0, 0.5]
    from frfsr_nodes import nodes
    assert nodes.parse_ref_scales("1, 0.71 0.5") == (1.0, 0.71, 0.5)
    with pytest.raises(ValueError, match="ref_scales must be numbers"):
        nodes.parse_ref_scales("1 half")
    assert nodes.MatchReference.INPUT_TYPES()["optional"]["ref_scales"][1]["default"] == "1"


def test_rotate_ref_is_a_rotation_on_a_grown_canvas(scene):
    from PIL import Image
    _, _, closer = scene
    img = closer[..., :, :80]                                                   # 96 x 80
    rot = rotate_ref(img, 30)
    assert rot.shape[-2:] == ref_copy_size(96, 80, 1.0, 30) == (124, 118)    # holds the whole rotated Ref
    arr = (img[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    pil = Image.fromarray(arr).rotate(30, resample=Image.BICUBIC, expand=True)  # PIL: counter-clockwise
    ref = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float() / 255
    inside = (rot[0].sum(0) > 0.1) & (ref.sum(0) > 0.1)
    assert float((rot[0] - ref).abs().mean(0)[inside].mean()) < 0.02
    quarter = rotate_ref(img, 90)                                               # a quarter turn: the pixels
    torch.testing.assert_close(quarter, torch.rot90(img, 1, (-2, -1)), atol=1e-4, rtol=0)
    assert rotate_ref(img, 0) is img
    assert RefViews((1, 0.5), (0, 30)).pixels(100, 100) == sum(
        ref_copy_size(100, 100, s, a)[0] * ref_copy_size(100, 100, s, a)[1] for s in (1, 0.5) for a in (0, 30))
    assert 4.6 < RefViews(angles=(0, 30, -30)).pixels(100, 100) / 1e4 < 4.8   # the cost the docs state


def test_a_rotated_ref_is_matched_at_its_copy_rotated_back(scene):
    pipe, lr, _ = scene
    model = pipe.model
    hr = _load(ASSETS / "hr.png")[..., :96, :96]                                # the LR's HR
    tilted = rotate_ref(hr, 30)
    with torch.no_grad():
        enc = model.encode_refs(tilted, views=RefViews(angles=(0, -30)))
        corr = model.match(lr, enc, mode="exact")
        plain = model.match(lr, model.encode_refs(tilted), mode="exact")
    assert enc.sources == ((0, 1.0, 0.0), (0, 1.0, -30.0))
    inner = corr.ref_id[0, 4:-4, 4:-4]
    assert (inner == 1).float().mean() > 0.6, corr.ref_id                      # matched where it is upright
    assert float(corr.confidence[..., 4:-4, 4:-4].mean()) > float(plain.confidence[..., 4:-4, 4:-4].mean()) + 0.05


def test_ref_angles_options_and_checks(scene):
    pipe, lr, closer = scene
    out = pipe(lr, closer, ref_angles=(0, 30), return_details=True, output_type="pt", progress=False)
    assert out.images.shape == (1, 3, 96, 96)
    enc = pipe.prepare_refs(closer, ref_scales=(1, 0.5), ref_angles=(0, 30))
    assert enc.sources == ((0, 1.0, 0.0), (0, 1.0, 30.0), (0, 0.5, 0.0), (0, 0.5, 30.0))
    assert check_ref_angles(0) == (0.0,) and check_ref_angles(["30", -30]) == (30.0, -30.0)
    for bad in ((), (0, 0), (200,), ("x",)):
        with pytest.raises(ValueError, match="ref_angles"):
            check_ref_angles(bad)
    from frfsr import cli
    args = cli.build_parser().parse_args(["upscale", "a.png", "--ref", "b.png", "-o", "c.png",
                                          "--ref-angles", "0", "30", "-30"])
    assert args.ref_angles == [0.0, 30.0, -30.0]
    from frfsr_nodes import nodes
    assert nodes.parse_ref_angles("0, 30 -30") == (0.0, 30.0, -30.0)
    with pytest.raises(ValueError, match="ref_angles must be numbers"):
        nodes.parse_ref_angles("0 right")
    for node in (nodes.MatchReference, nodes.Upscale):
        assert node.INPUT_TYPES()["optional"]["ref_angles"][1]["default"] == "0"


@pytest.mark.parametrize("scales, angles", [(("5",), None), (("1", "1"), None), (None, ("0", "200"))])
def test_bad_views_get_one_message_from_the_pipeline_the_cli_and_the_node(scene, tmp_path, capsys, scales, angles):
    """RefViews is the one check: the same bad scales or angles handed to the pipeline, the
    command line and the Upscale node are refused with the same message."""
    from PIL import Image

    from frfsr import cli
    from frfsr_nodes import nodes
    pipe, lr, closer = scene
    with pytest.raises(ValueError) as by_pipe:
        pipe(lr, closer, ref_scales=None if scales is None else [float(s) for s in scales],
             ref_angles=None if angles is None else [float(a) for a in angles], progress=False)
    message = str(by_pipe.value)
    assert message.startswith("ref_scales must be" if scales else "ref_angles must be")
    Image.new("RGB", (24, 24)).save(tmp_path / "lr.png")
    Image.new("RGB", (48, 48)).save(tmp_path / "ref.png")
    argv = ["upscale", str(tmp_path / "lr.png"), "--ref", str(tmp_path / "ref.png"), "-o", str(tmp_path / "o.png")]
    argv += ["--ref-scales", *scales] if scales else ["--ref-angles", *angles]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip() == f"frfsr upscale: error: {message}"
    assert not (tmp_path / "o.png").exists()
    model = nodes.FRFSRModel(pipe.model, pipe.device, pipe.device, "frfsr-default")
    image, reference = lr.permute(0, 2, 3, 1), closer.permute(0, 2, 3, 1)        # ComfyUI IMAGEs
    with pytest.raises(ValueError) as by_node:
        nodes.Upscale().upscale(model, image, reference, ref_scales=" ".join(scales or ["1"]),
                                ref_angles=" ".join(angles or ["0"]))
    assert str(by_node.value) == message


def test_ref_views_is_one_value(scene):
    pipe, lr, closer = scene
    views = RefViews([1, "0.5"], 30)
    assert (views.scales, views.angles) == ((1.0, 0.5), (30.0,)) and views == RefViews((1, 0.5), (30,))
    assert views.copies() == [(1.0, 30.0), (0.5, 30.0)] and hash(views) == hash(RefViews((1, 0.5), (30,)))
    assert RefViews.of(angles=(0, 30), base=views) == RefViews((1, 0.5), (0, 30))
    with pytest.raises(TypeError, match="ref_views must be a frfsr.RefViews"):
        pipe.prepare_refs(closer, ref_views=(1, 0.5))
    with pytest.raises(TypeError, match="ref_views must be a frfsr.RefViews"):
        pipe.model.encode_refs(closer, views=(1, 0.5))
    with pytest.raises(TypeError, match="scales"):           # one spelling: views=RefViews(...)
        pipe.model.encode_refs(closer, scales=(1, 0.5))
