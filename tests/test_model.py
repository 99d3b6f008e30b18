"""FRFSR on real-world shapes: any LR/Ref size, batches, several Refs, bad input."""
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from frfsr import FRFSR, FRFSRConfig
from frfsr.checks import MIN_LR_SIZE, MIN_REF_SIZE


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return FRFSR(FRFSRConfig.tiny()).eval()


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("ref_hw,batch", [((50, 90), 1), ((200, 120), 2)])
def test_any_sizes_deterministic(tiny, ref_hw, batch):
    lr = _rand(batch, 3, 17, 23, seed=1)
    ref = _rand(batch, 3, *ref_hw, seed=2)
    with torch.no_grad():
        out = tiny(lr, ref)
        again = tiny(lr, ref)
    assert out.shape == (batch, 3, 68, 92)
    assert torch.isfinite(out).all()
    assert torch.equal(out, again)


def test_batch_samples_are_independent(tiny):
    lr = _rand(2, 3, 17, 23, seed=3)
    ref = _rand(2, 3, 60, 44, seed=4)
    with torch.no_grad():
        both = tiny(lr, ref)
        second = tiny(lr[1:], ref[1:])
    torch.testing.assert_close(both[1:], second, atol=1e-5, rtol=1e-5)


def test_one_ref_serves_a_batch(tiny):
    lr = _rand(3, 3, 16, 16, seed=5)
    ref = _rand(1, 3, 48, 64, seed=6)
    with torch.no_grad():
        shared = tiny(lr, ref)
        explicit = tiny(lr, ref.expand(3, -1, -1, -1).contiguous())
    torch.testing.assert_close(shared, explicit, atol=1e-6, rtol=1e-6)


def _twin_trunk_model():
    """A tiny model whose LR and Ref texture trunks are identical, so a Ref cut from the
    upsampled LR matches it exactly."""
    torch.manual_seed(1)
    m = FRFSR(FRFSRConfig.tiny()).eval()
    m.texture_encoder.ref_trunk.load_state_dict(m.texture_encoder.lr_trunk.state_dict())
    return m


def test_flow_points_at_the_matching_ref_position():
    m = _twin_trunk_model()
    lr = _rand(1, 3, 24, 28, seed=7)
    up = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
    ref = up[:, :, 8:, 12:].clamp(0, 1)          # the Ref is the LR view shifted by (2, 3) LR pixels
    with torch.no_grad():
        corr = m.match(lr, ref)
    flow3 = corr.flows[2][0, 4:18, 6:20]          # interior, away from conv borders
    assert (flow3[..., 0] == -3).float().mean() > 0.9
    assert (flow3[..., 1] == -2).float().mean() > 0.9
    # the relu1_1 flow is the relu3_1 flow repeated x4 with values x4
    assert torch.equal(corr.flows[0][0, ::4, ::4], corr.flows[2][0] * 4)
    assert corr.confidence[0, 0, 6:18, 8:20].mean() > 0.95


def test_two_refs_match_picks_from_both():
    m = _twin_trunk_model()
    lr = _rand(1, 3, 20, 40, seed=8)
    up = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    left, right = up[..., :, :88], up[..., :, 72:]
    with torch.no_grad():
        corr = m.match(lr, [left, right])
        out = m.restore(lr, m.align(corr)).sr
    ids = corr.ref_id[0, 2:-2, 2:-2]
    assert (ids[:, :14] == 0).float().mean() > 0.9      # LR columns 2..15 lie only in the left Ref
    assert (ids[:, 24:] == 1).float().mean() > 0.9      # LR columns 26..37 lie only in the right Ref
    # the right Ref starts at its mosaic offset: flows into it point past the left Ref
    offset = corr.refs.layout.offsets[1]
    assert offset >= 88 // 4
    flow_x = corr.flows[2][0, 4:16, 28:36, 0]
    assert ((flow_x + torch.arange(28, 36)) >= offset).all()
    assert out.shape == (1, 3, 80, 160) and torch.isfinite(out).all()


def test_several_refs_of_different_sizes(tiny):
    lr = _rand(2, 3, 15, 19, seed=9)
    refs = [_rand(2, 3, 40, 52, seed=10), _rand(1, 3, 13, 90, seed=11), _rand(2, 3, 64, 30, seed=12)]
    with torch.no_grad():
        corr = tiny.match(lr, refs)
        tex = tiny.align(corr)
        out = tiny.restore(lr, tex)
    assert out.sr.shape == (2, 3, 60, 76) and torch.isfinite(out.sr).all()
    assert tex.warped_ref.shape == (2, 3, 60, 76)
    assert set(corr.ref_id.unique().tolist()) <= {-1, 0, 1, 2}
    assert corr.relevance.shape == (2,)


def test_gradients_reach_the_trainable_parts():
    torch.manual_seed(2)
    m = FRFSR(FRFSRConfig.tiny())
    lr, ref = _rand(1, 3, 16, 16, seed=13), _rand(1, 3, 64, 64, seed=14)
    m(lr, ref).mean().backward()
    assert m.restoration.head.weight.grad is not None and m.restoration.head.weight.grad.abs().sum() > 0
    assert m.sife.conv_first.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.ref_extractor.parameters())          # frozen VGG19
    # offsets of the deformable convs are zero-initialised but still learn
    assert m.restoration.stages[0].align.dcn.offset_mask.weight.grad.abs().sum() > 0


def test_stage2_reuses_the_stage1_feature():
    torch.manual_seed(3)
    m = FRFSR(FRFSRConfig.tiny(stage=2)).eval()
    for conv in (m.restoration.reuse_down, m.restoration.reuse_up):      # give the reuse convs some weight
        conv.weight.data.normal_(0, 0.2)
    lr, ref = _rand(1, 3, 16, 16, seed=15), _rand(1, 3, 64, 64, seed=16)
    with torch.no_grad():
        tex = m.align(m.match(lr, ref))
        feat = m.reuse_feature(lr, tex)
        a = m.restore(lr, tex).sr
        b = m.restore(lr, tex, reuse_feature=feat).sr
        c = m.restore(lr, tex, reuse_feature=torch.zeros_like(feat)).sr
    assert feat.shape == (1, 16, 64, 64)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-4
    assert not any(p.requires_grad for p in m.reuse_net.parameters())


def test_tile_crop_restores_the_same_interior(tiny):
    lr = _rand(1, 3, 40, 44, seed=17)
    ref = _rand(1, 3, 120, 100, seed=18)
    with torch.no_grad():
        tex = tiny.align(tiny.match(lr, ref))
        full = tiny.restore(lr, tex).sr
        tile = tiny.restore(lr[..., 10:40, 12:44], tex.crop(10, 12, 40, 44)).sr
    # far from the tile border the tile equals the whole image up to the global pooling in DDF/ESA
    diff = (tile[..., 40:, 40:] - full[..., 80:, 88:]).abs().mean()
    assert diff < 0.02
    with pytest.raises(ValueError, match="outside the LR grid"):
        tex.crop(0, 0, 41, 10)


# ----------------------------------------------------------------------------- config
def test_config_json_round_trip(tmp_path):
    for cfg in (FRFSRConfig.paper(), FRFSRConfig.tiny(stage=2)):
        path = tmp_path / "config.json"
        cfg.to_json(path)
        assert FRFSRConfig.from_json(path) == cfg
        assert FRFSRConfig.from_json(cfg.to_json()) == cfg
    assert FRFSRConfig.paper().n_res_blocks == 16 and FRFSRConfig.paper().sife_blocks == 23
    assert FRFSRConfig.paper().ddf_filter_norm is False


@pytest.mark.parametrize("change,match", [
    ({"version": 99}, "unsupported FRFSR config version"),
    ({"colour": 1}, "unknown FRFSR config field"),
    ({"ngf": 0}, "ngf"),
    ({"stage": 3}, "stage must be"),
    ({"vgg_widths": [64, 128, 250]}, "divisible by deform_groups"),
])
def test_config_rejects_bad_values(change, match):
    d = FRFSRConfig.paper().to_dict()
    d.update(change)
    with pytest.raises(ValueError, match=match):
        FRFSRConfig.from_dict(d)
    with pytest.raises(ValueError, match="unknown preset"):
        FRFSRConfig.preset("huge")


def test_filter_norm_switch_changes_ddf():
    torch.manual_seed(4)
    off = FRFSR(FRFSRConfig.tiny()).eval()
    on = FRFSR(FRFSRConfig.tiny(ddf_filter_norm=True)).eval()
    on.load_state_dict(off.state_dict())
    x = torch.randn(1, 16, 12, 12)
    ddf_off = off.restoration.stages[0].drb.ddf_blocks[0].ddf1
    ddf_on = on.restoration.stages[0].drb.ddf_blocks[0].ddf1
    assert not torch.allclose(ddf_off(x), ddf_on(x))


# ----------------------------------------------------------------------------- bad input
GOOD_LR = (1, 3, 16, 16)
GOOD_REF = (1, 3, 64, 64)


@pytest.mark.parametrize("lr,ref,exc,match", [
    (torch.rand(3, 16, 16), torch.rand(*GOOD_REF), ValueError, "lr must be 4-D"),
    (torch.rand(*GOOD_LR), torch.rand(3, 64, 64), ValueError, "ref must be 4-D"),
    (torch.rand(1, 4, 16, 16), torch.rand(*GOOD_REF), ValueError, "3 \\(RGB\\) channels"),
    (torch.rand(*GOOD_LR), torch.rand(1, 1, 64, 64), ValueError, "3 \\(RGB\\) channels"),
    (torch.rand(*GOOD_LR).index_put_((torch.tensor(0),), torch.tensor(float("nan"))), torch.rand(*GOOD_REF),
     ValueError, "lr contains NaN or Inf"),
    (torch.rand(*GOOD_LR), torch.full(GOOD_REF, float("inf")), ValueError, "ref contains NaN or Inf"),
    (torch.rand(1, 3, MIN_LR_SIZE - 1, 40), torch.rand(*GOOD_REF), ValueError, "minimum LR size is 15x15"),
    (torch.rand(*GOOD_LR), torch.rand(1, 3, 64, MIN_REF_SIZE - 1), ValueError, "minimum Ref size is 12x12"),
    (torch.rand(2, 3, 16, 16), torch.rand(3, 3, 64, 64), ValueError, "batch size 3 but lr has 2"),
    ((torch.rand(*GOOD_LR) * 255).to(torch.uint8), torch.rand(*GOOD_REF), TypeError, "floating tensor"),
    (torch.rand(*GOOD_LR, dtype=torch.float64), torch.rand(*GOOD_REF), TypeError, "model's weights are torch.float32"),
    ([[0.5]], torch.rand(*GOOD_REF), TypeError, "lr must be a torch.Tensor"),
])
def test_bad_input_is_named(tiny, lr, ref, exc, match):
    with pytest.raises(exc, match=match):
        tiny(lr, ref)


def test_empty_ref_list(tiny):
    with pytest.raises(ValueError, match="at least one Ref"):
        tiny(torch.rand(*GOOD_LR), [])


def test_results_move_with_every_nested_tensor(tiny):
    """``corr.to(torch.float64)`` reaches the EncodedRefs a Correspondence carries and every
    tensor in their tuples; integer indices keep their dtype, a device move takes them too."""
    with torch.no_grad():
        corr = tiny.match(torch.rand(1, 3, 16, 16), [torch.rand(1, 3, 32, 32), torch.rand(1, 3, 24, 40)])
    moved = corr.to(torch.float64)

    def tensors(obj):
        if isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, (tuple, list)):
            for x in obj:
                yield from tensors(x)
        elif dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                yield from tensors(getattr(obj, f.name))

    before, after = list(tensors(corr)), list(tensors(moved))
    assert len(after) == len(before) > 10
    for a, b in zip(before, after):
        assert b.dtype == (torch.float64 if a.is_floating_point() else a.dtype)
        assert torch.equal(b.to(a.dtype), a)
    assert moved.refs.feats[2].dtype == torch.float64 and moved.ref_id.dtype == torch.int64
    assert isinstance(moved.refs.layout, type(corr.refs.layout))
    assert all(t.device.type == "meta" for t in tensors(corr.to("meta")))


def test_flow_warp_in_half_precision_samples_where_float32_does():
    """bf16 / fp16 features on a wide Ref: the positions stay float32 (a half-precision grid
    is off by pixels at x ~ 2000, and PyTorch's CPU sampler then read outside the input), so
    the warp equals the float32 warp up to the features' own rounding."""
    from frfsr.models.correspondence import flow_warp
    W = 2048
    xs = torch.arange(W, dtype=torch.float32)
    feat = torch.stack([torch.sin(xs / 7), torch.cos(xs / 5)])[None, :, None, :].expand(1, 2, 4, W).contiguous()
    h, w = 4, 64
    flow = torch.zeros(1, h, w, 2)
    flow[..., 0] = torch.linspace(W - 80, W - 1.25, w)            # sample near the right edge, between pixels
    flow[..., 1] = torch.rand(1, h, w, generator=torch.Generator().manual_seed(0))
    expect = flow_warp(feat, flow)
    for dtype in (torch.bfloat16, torch.float16):
        got = flow_warp(feat.to(dtype), flow)                      # flows are float32 (index_to_flow)
        assert got.dtype == dtype and got.shape == expect.shape
        torch.testing.assert_close(got.float(), expect, atol=1e-2, rtol=0)
