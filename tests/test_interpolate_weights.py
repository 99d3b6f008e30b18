"""train/interpolate_weights.py: two models of one architecture mixed weight by weight."""
import pytest
import torch

from frfsr import FRFSR, FRFSRConfig

from benchmark_scripts import load_script


def _tiny(seed: int, **overrides) -> FRFSR:
    torch.manual_seed(seed)
    return FRFSR(FRFSRConfig.preset("tiny", **overrides)).eval()


def test_mix_is_the_weighted_mean_and_round_trips(tmp_path):
    mod = load_script("train", "interpolate_weights")
    a, b = _tiny(0), _tiny(1)
    sa, sb = a.state_dict(), b.state_dict()
    key = next(k for k, v in sa.items() if v.is_floating_point() and not torch.equal(v, sb[k]))
    mid = mod.interpolate(a, b, 0.25).state_dict()
    torch.testing.assert_close(mid[key], 0.75 * sa[key] + 0.25 * sb[key])
    for alpha, ref in ((0.0, sa), (1.0, sb)):
        got = mod.interpolate(a, b, alpha).state_dict()
        assert all(torch.allclose(got[k].float(), ref[k].float(), atol=1e-6) for k in ref)
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    assert mod.main([str(tmp_path / "a"), str(tmp_path / "b"), "--alpha", "0.5", "--out", str(tmp_path / "m")]) == 0
    loaded = FRFSR.from_pretrained(tmp_path / "m").state_dict()
    torch.testing.assert_close(loaded[key], 0.5 * sa[key] + 0.5 * sb[key])
    with pytest.raises(ValueError, match="alpha must be in"):
        mod.interpolate(a, b, 1.5)
    with pytest.raises(ValueError, match="different architectures"):
        mod.interpolate(a, _tiny(2, ngf=8), 0.5)
