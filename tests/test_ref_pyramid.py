"""The Ref scale pyramid: a Ref shot 2x closer than the LR is matched at its 0.5 copy."""
import pytest
import torch
import torch.nn.functional as F

from frfsr import FRFSRPipeline
from frfsr.demo import ASSETS, _load
from frfsr.models.frfsr import check_ref_scales


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
        enc = model.encode_refs(closer, scales=(1, 0.71, 0.5))
        corr = model.match(lr, enc, match_mode="exact")
        plain = model.match(lr, model.encode_refs(closer), match_mode="exact")
    assert enc.sources == ((0, 1.0), (0, 0.71), (0, 0.5))
    assert [tuple(i.shape[-2:]) for i in enc.images] == [(96, 96), (68, 68), (48, 48)]
    # the LR's centre (what the Ref shows) is matched at the 0.5 copy, where the scales agree
    centre = corr.ref_id[0, 8:16, 8:16]
    assert (centre == 2).float().mean() > 0.6, corr.ref_id
    assert float(corr.confidence[..., 8:16, 8:16].mean()) > float(plain.confidence[..., 8:16, 8:16].mean()) + 0.05


def test_pipeline_cli_options_and_checks(scene, tmp_path):
    pipe, lr, closer = scene
    out = pipe(lr, closer, ref_scales=(1, 0.5), return_details=True, output_type="pt", progress=False)
    assert out.images.shape == (1, 3, 96, 96)
    enc = pipe.encode_refs(closer, ref_scales=(1, 0.5))
    assert len(enc.images) == 2 and enc.sources[1] == (0, 0.5)
    assert check_ref_scales(1) == (1.0,) and check_ref_scales([1, "0.5"]) == (1.0, 0.5)
    for bad in ((), (1, 1), (0,), (5,), ("x",)):
        with pytest.raises(ValueError, match="ref_scales"):
            check_ref_scales(bad)
    tiny = torch.rand(1, 3, 20, 20)                    # its 0.5 copy is under the minimum Ref size: left out
    assert len(pipe.model.encode_refs(tiny, scales=(1, 0.5)).images) == 1
    from frfsr import cli
    args = cli.build_parser().parse_args(["upscale", "a.png", "--ref", "b.png", "-o", "c.png", "--ref-scales", "1", "0.5"])
    assert args.ref_scales == [1.0, 0.5]
    from frfsr_nodes import nodes
    assert nodes.parse_ref_scales("1, 0.71 0.5") == (1.0, 0.71, 0.5)
    with pytest.raises(ValueError, match="ref_scales must be numbers"):
        nodes.parse_ref_scales("1 half")
    assert nodes.MatchReference.INPUT_TYPES()["optional"]["ref_scales"][1]["default"] == "1"
