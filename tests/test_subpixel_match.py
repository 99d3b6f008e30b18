"""Sub-pixel refinement of the correspondence (``subpixel_match``): a Ref shifted by a
fraction of an LR pixel gets a fractional flow; whole-pixel matches are kept; the option
changes no tensor and round-trips through config.json."""
import math

import pytest
import torch

from frfsr import FRFSR, FRFSRConfig
from frfsr.models.correspondence import MosaicLayout, index_to_flow, match_refs, subpixel_shift


def _smooth_field(h: int, w: int, dx: float, dy: float, channels: int = 8, seed: int = 0) -> torch.Tensor:
    """(1, C, h, w): sums of low-frequency sinusoids read at (x + dx, y + dy), so that the same
    field shifted by a fraction of a pixel is known exactly."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64) + dy, torch.arange(w, dtype=torch.float64) + dx,
                          indexing="ij")
    out = []
    for _ in range(channels):
        f = torch.zeros(h, w, dtype=torch.float64)
        for _ in range(4):
            fx, fy = (torch.rand(2, generator=g, dtype=torch.float64) - 0.5) * 0.9   # cycles per pixel, < 0.45
            ph = float(torch.rand((), generator=g)) * 2 * math.pi
            f += torch.cos(2 * math.pi * (fx * x + fy * y) + ph)
        out.append(f)
    return torch.stack(out)[None].float()


def _refined(query, ref):
    layout = MosaicLayout.build([(4 * ref.shape[-2], 4 * ref.shape[-1])])
    _, kx, ky, rid = match_refs(query, [ref], layout, 3)
    return index_to_flow(kx, ky, 3)[:, :-2, :-2], subpixel_shift(query, [ref], layout, kx, ky, rid, 3)


@pytest.mark.parametrize("frac", [(0.25, 0.0), (-0.4, 0.3), (0.5, -0.5)])
def test_a_fractional_shift_gets_a_fractional_flow(frac):
    """The Ref is the query's field moved by (3 + fx, 2 + fy) pixels: where the whole-pixel match
    is the right one (within a pixel: most positions away from the borders), its flow is off by
    up to half a pixel; with the refinement it is within 0.25 px of the truth (median per axis),
    and at most 0.6 times as far off as without it."""
    fx, fy = frac
    query = _smooth_field(24, 24, 0.0, 0.0)
    ref = _smooth_field(24, 24, -(3 + fx), -(2 + fy))         # ref(x) = query(x - 3 - fx)
    flow, shift = _refined(query, ref)
    true = torch.tensor([3 + fx, 2 + fy])
    inner = (slice(None), slice(3, -4), slice(3, -4))
    before = (flow[inner] - true).abs()
    after = (flow[inner] + shift[inner] - true).abs()
    assert shift.abs().max() <= 0.5
    right = (before <= 1.0).all(-1)
    assert right.float().mean() > 0.8
    for axis, f in enumerate(frac):
        b, a = before[..., axis][right].median(), after[..., axis][right].median()
        assert a < 0.25 and (f == 0 or a <= 0.6 * b), (axis, float(b), float(a))


def test_a_whole_pixel_shift_stays_whole():
    query = _smooth_field(24, 24, 0.0, 0.0, seed=3)
    ref = _smooth_field(24, 24, -3.0, 1.0, seed=3)
    flow, shift = _refined(query, ref)
    inner = (slice(None), slice(3, -4), slice(3, -4))
    assert torch.allclose(flow[inner], torch.tensor([3.0, -1.0]).expand_as(flow[inner]))
    assert shift[inner].abs().mean() < 0.05


def test_no_refinement_without_both_neighbours():
    """A match at the Ref's first or last patch column has one neighbour only: no shift in x."""
    query = _smooth_field(12, 12, 0.0, 0.0, seed=5)
    ref = _smooth_field(12, 12, 0.3, 0.3, seed=5)
    layout = MosaicLayout.build([(48, 48)])
    _, kx, ky, rid = match_refs(query, [ref], layout, 3)
    shift = subpixel_shift(query, [ref], layout, kx, ky, rid, 3)
    edge = (kx == 0) | (kx == ref.shape[-1] - 3)
    assert edge.any() and (shift[..., 0][edge] == 0).all()


def test_subpixel_match_in_the_model_and_its_config(tmp_path):
    """Same tensors either way; the flag changes the flows only by fractions of an LR pixel, is
    saved in config.json and loads back; a non-boolean value is refused."""
    torch.manual_seed(0)
    plain = FRFSR(FRFSRConfig.tiny()).eval()
    sub = FRFSR(FRFSRConfig.tiny(subpixel_match=True)).eval()
    sub.load_state_dict(plain.state_dict(), strict=True)
    lr = torch.rand(1, 3, 16, 16)
    ref = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = plain.match(lr, ref), sub.match(lr, ref)
    for fa, fb in zip(a.flows, b.flows):
        assert torch.equal(fa, fa.round())
        assert (fb - fa).abs().max() <= 0.5 * fa.shape[1] / a.flows[2].shape[1] + 1e-6
    assert not torch.equal(a.flows[2], b.flows[2])
    half = FRFSR(FRFSRConfig.tiny(subpixel_match=True)).eval().to(torch.bfloat16)
    half.load_state_dict(plain.state_dict())
    with torch.no_grad():
        h = half.match(lr.bfloat16(), ref.bfloat16())        # refined in float32 whatever the model's dtype
    assert torch.isfinite(h.flows[2]).all() and not torch.equal(h.flows[2], h.flows[2].round())
    sub.save_pretrained(tmp_path / "m")
    assert FRFSR.from_pretrained(tmp_path / "m").config.subpixel_match is True
    with pytest.raises(ValueError, match="subpixel_match"):
        FRFSRConfig.tiny(subpixel_match="yes")
