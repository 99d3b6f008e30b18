"""Real-world degradations (frfsr_train.data.realworld): every op's shape / dtype / range / seeding,
the whole pipeline, its options and config keys, and training with it."""
import math

import pytest
import torch
import torch.nn.functional as F

from frfsr_train.data import bicubic_downsample
from frfsr_train.data.realworld import (KERNEL_KINDS, DegradationStage, FinalStage, RealWorldDegradation, RealWorldOptions,
                                  blur, blur_kernels, gaussian_noise, jpeg, poisson_noise, quantize, random_blur,
                                  random_jpeg, random_kernels, random_noise, random_resize, resize)
from frfsr.metrics import psnr


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _smooth(b=4, size=64, seed=0):
    """Smooth random colour images in [0, 1] (a stand-in for photo content)."""
    x = torch.rand(b, 3, size // 8, size // 8, generator=_g(seed))
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


@pytest.fixture(scope="module")
def photo_batch():
    """Four 128x128 crops of a real photo (scikit-image's astronaut) as float in [0, 1]."""
    pytest.importorskip("skimage")
    from frfsr_train.data.views import load_skimage_photos
    img = torch.from_numpy(load_skimage_photos(["astronaut"])["astronaut"].copy()).permute(2, 0, 1)
    crops = [img[:, y:y + 128, x:x + 128] for y, x in ((0, 100), (200, 200), (300, 50), (128, 300))]
    return torch.stack(crops)


def _check_image_op(fn, x):
    """Shape, dtype, range, same seed -> same output, another seed -> another output."""
    a, b, c = fn(x, _g(0)), fn(x, _g(0)), fn(x, _g(1))
    assert a.dtype == x.dtype and a.device == x.device
    assert a.shape[:2] == x.shape[:2]
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)
    assert a.shape != c.shape or not torch.equal(a, c)
    return a


# ---------------------------------------------------------------------- blur kernels
def test_random_kernels_sum_to_one_are_point_symmetric_and_seeded():
    k = random_kernels(32, DegradationStage(), _g(0))
    assert k.ndim == 3 and k.shape[0] == 32 and k.shape[1] == k.shape[2] and k.shape[1] % 2 == 1
    assert k.shape[1] <= 21 and k.dtype == torch.float32
    assert (k >= 0).all()
    torch.testing.assert_close(k.sum((-2, -1)), torch.ones(32), rtol=0, atol=1e-5)
    torch.testing.assert_close(k, torch.flip(k, (-2, -1)), rtol=0, atol=1e-6)   # every kind: k(-x) = k(x)
    assert torch.equal(k, random_kernels(32, DegradationStage(), _g(0)))
    assert not torch.equal(k, random_kernels(32, DegradationStage(), _g(1)))
    # sizes follow kernel_size and the cap; the taps outside a small kernel are zero
    small = random_kernels(8, DegradationStage(kernel_size=(7, 7)), _g(0))
    assert small.shape == (8, 7, 7)
    capped = random_kernels(8, DegradationStage(kernel_size=(15, 21)), _g(0), max_size=10)
    assert capped.shape == (8, 9, 9)


@pytest.mark.parametrize("kind", KERNEL_KINDS)
def test_each_kernel_kind(kind):
    k = random_kernels(6, DegradationStage(kernel_probs={kind: 1.0}, kernel_size=(13, 13)), _g(3))
    assert k.shape == (6, 13, 13)
    torch.testing.assert_close(k.sum((-2, -1)), torch.ones(6), rtol=0, atol=1e-5)
    assert (k[:, 6, 6] >= k.amax((-2, -1)) - 1e-7).all()                       # peak at the centre
    if not kind.endswith("aniso"):                                           # isotropic: all 8 symmetries
        torch.testing.assert_close(k, k.transpose(-2, -1), rtol=0, atol=1e-6)
        torch.testing.assert_close(k, torch.flip(k, (-1,)), rtol=0, atol=1e-6)


def test_blur_kernel_formulas():
    from kornia.filters import get_gaussian_kernel2d
    sig = torch.tensor([0.7, 1.5, 2.5])
    mine = blur_kernels(11, sig)
    ref = get_gaussian_kernel2d((11, 11), torch.stack([sig, sig], 1).float())
    torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-6)             # a sampled, normalised Gaussian
    # the generalised Gaussian with beta = 1 is the Gaussian
    torch.testing.assert_close(blur_kernels(11, sig, family="generalized", beta=1.0), mine, rtol=1e-5, atol=1e-7)
    # anisotropic: wider along x at theta 0, along y at theta pi/2
    a = blur_kernels(15, 3.0, 1.0, 0.0)[0]
    b = blur_kernels(15, 3.0, 1.0, math.pi / 2)[0]
    ax = torch.arange(-7, 8, dtype=torch.float32)
    var_x = lambda k: float((k.sum(0) * ax ** 2).sum())                          # noqa: E731
    var_y = lambda k: float((k.sum(1) * ax ** 2).sum())                          # noqa: E731
    assert var_x(a) > 4 * var_y(a) and var_y(b) > 4 * var_x(b)
    torch.testing.assert_close(b, a.t(), rtol=1e-4, atol=1e-6)
    # plateau kernels have heavier tails than the Gaussian of the same sigma
    p = blur_kernels(15, 1.5, family="plateau", beta=1.0)[0]
    g = blur_kernels(15, 1.5)[0]
    assert float(p[7, 0]) > float(g[7, 0])
    with pytest.raises(ValueError, match="odd"):
        blur_kernels(10, 1.0)


def test_blur_and_random_blur():
    x = _smooth()
    out = _check_image_op(lambda im, g: random_blur(im, DegradationStage(), g), x)
    assert out.shape == x.shape
    assert float((out - x).abs().mean()) > 1e-3
    flat = torch.full((2, 3, 32, 32), 0.4)
    torch.testing.assert_close(blur(flat, random_kernels(2, None, _g(0))), flat, rtol=0, atol=1e-5)
    assert torch.equal(random_blur(x, DegradationStage(blur_prob=0.0), _g(0)), x)
    tiny = torch.rand(2, 3, 8, 8, generator=_g(0))                              # the kernel is capped to fit
    assert random_blur(tiny, DegradationStage(kernel_size=(21, 21)), _g(0)).shape == tiny.shape
    with pytest.raises(ValueError, match="larger than"):
        blur(tiny, torch.ones(1, 21, 21) / 441)


# ---------------------------------------------------------------------- resize
def test_resize_and_random_resize():
    x = _smooth(size=64)
    assert resize(x, (16, 20), "bicubic").shape == (4, 3, 16, 20)
    for mode in ("area", "bilinear", "bicubic", "nearest"):
        y = resize(x, (40, 40), mode)
        assert y.shape == (4, 3, 40, 40) and float(y.min()) >= 0 and float(y.max()) <= 1
    sizes = set()
    for seed in range(12):
        y = _check_image_op(lambda im, g: random_resize(im, DegradationStage(), g), x) if seed == 0 else \
            random_resize(x, DegradationStage(), _g(seed))
        assert 0.3 * 64 - 1 <= y.shape[-1] <= 1.5 * 64 + 1 and y.shape[-1] == y.shape[-2]
        sizes.add(y.shape[-1])
    assert len(sizes) > 3
    up = random_resize(x, DegradationStage(resize_probs=(1, 0, 0)), _g(0))
    down = random_resize(x, DegradationStage(resize_probs=(0, 1, 0)), _g(0))
    keep = random_resize(x, DegradationStage(resize_probs=(0, 0, 1)), _g(0))
    assert up.shape[-1] > 64 > down.shape[-1] and torch.equal(keep, x)
    rel = random_resize(x, DegradationStage(resize_probs=(0, 0, 1)), _g(0), base_size=(16, 16))
    assert rel.shape[-2:] == (16, 16)
    tiny = [random_resize(x, DegradationStage(resize_probs=(0, 1, 0), resize_range=(0.01, 1)), _g(s),
                          base_size=(16, 16)).shape[-1] for s in range(8)]
    assert min(tiny) == 8                                                    # never below 8 px


# ---------------------------------------------------------------------- noise
def test_gaussian_noise():
    x = torch.full((2, 3, 64, 64), 0.5)
    y = gaussian_noise(x, torch.tensor([5 / 255, 20 / 255]), gray=torch.tensor([False, True]), generator=_g(0))
    std = (y - x).std((1, 2, 3))
    assert abs(float(std[0]) * 255 - 5) < 0.5 and abs(float(std[1]) * 255 - 20) < 1.5
    assert not torch.equal(y[0, 0], y[0, 1])                                   # colour noise
    assert torch.equal(y[1, 0], y[1, 1]) and torch.equal(y[1, 1], y[1, 2])     # grey noise
    _check_image_op(lambda im, g: gaussian_noise(im, 0.05, generator=g), _smooth())
    assert float(gaussian_noise(torch.ones(1, 3, 8, 8), 0.5, generator=_g(0)).max()) <= 1.0


def test_poisson_noise():
    x = torch.cat([torch.full((1, 3, 64, 64), 0.1), torch.full((1, 3, 64, 64), 0.7)])
    y = poisson_noise(x, 1.0, generator=_g(0))
    std = (y - x).std((1, 2, 3))
    expected = torch.sqrt(torch.tensor([0.1, 0.7]) / 255)                       # shot noise grows with the signal
    torch.testing.assert_close(std, expected, rtol=0.1, atol=0)
    assert abs(float((y - x).mean())) < 0.01
    g = poisson_noise(x, 2.0, gray=True, generator=_g(0))
    assert torch.equal(g[:, 0] - x[:, 0], g[:, 1] - x[:, 1])
    _check_image_op(lambda im, g_: poisson_noise(im, 1.5, generator=g_), _smooth())


def test_random_noise():
    x = _smooth()
    out = _check_image_op(lambda im, g: random_noise(im, DegradationStage(), g), x)
    assert out.shape == x.shape and float((out - x).abs().mean()) > 1e-3
    assert torch.equal(random_noise(x, DegradationStage(noise_prob=0.0), _g(0)), x)


# ---------------------------------------------------------------------- JPEG
def test_jpeg(photo_batch):
    x = photo_batch.float() / 255
    low, high = jpeg(x, 20.0), jpeg(x, 95.0)
    assert low.shape == x.shape and low.dtype == x.dtype
    assert float(low.min()) >= 0 and float(high.max()) <= 1
    assert psnr(low, x) < psnr(high, x) - 3                                    # lower quality, larger error
    per_image = jpeg(x, torch.tensor([20.0, 95.0, 20.0, 95.0]))
    torch.testing.assert_close(per_image[0], low[0], rtol=0, atol=1e-5)
    odd = torch.rand(2, 3, 19, 27, generator=_g(0))
    assert jpeg(odd, 50).shape == odd.shape                                    # sizes not multiples of 16
    out = _check_image_op(lambda im, g: random_jpeg(im, 1.0, (30, 95), g), x)
    assert out.shape == x.shape
    assert torch.equal(random_jpeg(x, 0.0, (30, 95), _g(0)), x)
    with pytest.raises(ValueError, match="quality"):
        jpeg(x, 0.0)


# ---------------------------------------------------------------------- the pipeline
def test_pipeline_lr_size_batched_reproducible():
    hr = _smooth(b=3, size=64)
    deg = RealWorldDegradation()
    a, b, c = deg(hr, _g(5)), deg(hr, _g(5)), deg(hr, _g(6))
    assert a.shape == (3, 3, 16, 16) and a.dtype == torch.float32
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a, (a * 255).round() / 255)                             # 8-bit levels
    assert not torch.equal(a[0], a[1])                                         # per-image draws
    rect = deg(torch.rand(2, 3, 96, 64, generator=_g(0)), _g(0))
    assert rect.shape == (2, 3, 24, 16)
    assert deg(hr.double(), _g(5)).dtype == torch.float64
    with pytest.raises(ValueError, match="multiples of the scale"):
        deg(torch.rand(1, 3, 62, 64), _g(0))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        deg(torch.rand(3, 64, 64), _g(0))


def test_clean_prob_keeps_the_clean_lr_for_a_share_of_the_images():
    hr = _smooth(b=16, size=32)
    clean = F.avg_pool2d(hr, 4)
    degraded = RealWorldDegradation()(hr, _g(3))
    mixed = RealWorldDegradation({"clean_prob": 0.5})(hr, _g(3), clean=clean)
    kept = [torch.equal(mixed[i], clean[i]) for i in range(16)]
    assert 0 < sum(kept) < 16                                                   # a share, drawn per image
    for i in range(16):                                                          # the others: as without the mix
        assert kept[i] or torch.equal(mixed[i], degraded[i])
    assert torch.equal(RealWorldDegradation({"clean_prob": 0.5})(hr, _g(3), clean=clean), mixed)
    assert torch.equal(RealWorldDegradation({"clean_prob": 1.0})(hr, _g(3), clean=clean), clean)
    with pytest.raises(ValueError, match="needs the clean LR"):
        RealWorldDegradation({"clean_prob": 0.5})(hr, _g(3))
    with pytest.raises(ValueError, match=r"clean_prob must be in \[0, 1\]"):
        RealWorldOptions(clean_prob=1.5)


def test_degraded_lr_is_worse_than_bicubic_on_a_photo(photo_batch):
    """Upsampled back, the real-world LR is farther from the HR than the bicubic LR is, and
    it differs measurably from the bicubic LR itself."""
    hr = photo_batch.float() / 255
    bic = bicubic_downsample(photo_batch, 4).float() / 255
    deg = RealWorldDegradation()(hr, _g(0))
    assert deg.shape == bic.shape == (4, 3, 32, 32)
    up = lambda lr: F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)  # noqa: E731
    p_bic = sum(psnr(up(bic[i:i + 1]), hr[i:i + 1]) for i in range(4)) / 4
    p_deg = sum(psnr(up(deg[i:i + 1]), hr[i:i + 1]) for i in range(4)) / 4
    assert p_deg < p_bic - 1.0, (p_deg, p_bic)
    assert psnr(deg, bic) < 35.0


def test_options_validation_names_the_field():
    cases = [({"first": {"sigma_range": [3, 1]}}, r"first\.sigma_range .*\(0, 20\]"),
             ({"second": {"jpeg_range": [0, 90]}}, r"second\.jpeg_range .*\[1, 100\]"),
             ({"first": {"blur_prob": 1.5}}, r"first\.blur_prob .*\[0, 1\]"),
             ({"first": {"kernel_size": [6, 9]}}, r"first\.kernel_size .*odd"),
             ({"first": {"kernel_probs": {"iso": 0.5}}}, r"first\.kernel_probs .*sum to 1"),
             ({"first": {"kernel_probs": {"box": 1.0}}}, r"first\.kernel_probs"),
             ({"first": {"resize_probs": [0.5, 0.5]}}, r"first\.resize_probs"),
             ({"first": {"resize_range": [1.2, 1.5]}}, r"first\.resize_range"),
             ({"second": {"resize_modes": ["lanczos"]}}, r"second\.resize_modes"),
             ({"final": {"quantize": "yes"}}, r"final\.quantize"),
             ({"first": {"noise_range": [1, "x"]}}, r"first\.noise_range"),
             ({"first": {"sigma": 1.0}}, r"unknown key\(s\) first\.sigma"),
             ({"third": {}}, r"unknown key\(s\) third")]
    for d, msg in cases:
        with pytest.raises(ValueError, match=msg):
            RealWorldOptions.from_dict(d)
    o = RealWorldOptions.from_dict({"second": {"jpeg_range": [40, 90]}, "final": {"jpeg_prob": 0.5}})
    assert o.second.jpeg_range == (40.0, 90.0) and o.second.blur_prob == 0.8       # the second round's defaults
    assert o.first == DegradationStage() and o.final == FinalStage(jpeg_prob=0.5)
    assert RealWorldDegradation(o.to_dict()).options == o
    assert RealWorldOptions.from_dict({"first": {"noise_prob": "5e-1"}}).first.noise_prob == 0.5
    with pytest.raises(ValueError, match="must be two numbers"):
        DegradationStage(sigma_range=2.0)


def test_quantize():
    x = torch.tensor([0.0, 0.5, 1.0, 1.2, -0.1])
    torch.testing.assert_close(quantize(x), torch.tensor([0.0, 128 / 255, 1.0, 1.0, 0.0]))


# ---------------------------------------------------------------------- config and training
@pytest.fixture()
def _clean_accelerate():
    yield
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)


def _cfg(tmp_path, **sections):
    import yaml

    from frfsr_train.training import load_config
    d = {"stage": 1, "model": {"preset": "tiny"},
         "data": {"views": {"photos": ["camera", "coins", "brick"], "length": 4, "scale_range": [0.5, 2.0],
                            "max_rotation": 30.0, "max_perspective": 0.1, "antialias": True},
                  "patch": 64, "batch_size": 2, "num_workers": 0},
         "degradation": {"kind": "realworld", "second": {"jpeg_range": [40, 90]}},
         "optim": {"milestones": [10]},
         "train": {"max_steps": 2, "checkpoint_every": 2, "log_every": 1, "output_dir": str(tmp_path / "run"),
                   "log_with": []}}
    for k, v in sections.items():
        d[k] = {**d.get(k, {}), **v} if isinstance(v, dict) else v
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(d))
    return load_config(p)


def test_config_keys_parse_and_bad_values_name_the_key(tmp_path):
    from frfsr_train.training import ConfigError, load_config
    cfg = _cfg(tmp_path)
    assert cfg.degradation.kind == "realworld"
    assert cfg.degradation.options().second.jpeg_range == (40.0, 90.0)
    assert cfg.data.views.max_perspective == 0.1 and cfg.data.views.antialias is True
    from pathlib import Path
    configs = Path(__file__).resolve().parents[1] / "train" / "configs"
    assert load_config(configs / "paper_stage1.yaml").degradation.kind == "bicubic"
    robust = load_config(configs / "robust_stage1.yaml")
    assert robust.degradation.kind == "realworld" and robust.init.pretrained
    assert robust.data.views.scale_range == [0.5, 2.0] and robust.data.views.max_rotation == 30
    assert robust.data.views.max_perspective > 0
    # the recipe of the bundled frfsr-robust weights: JPEG first, 30 % clean LRs, the default weights' Ref views
    jpeg_first = load_config(configs / "robust_jpeg_stage1.yaml")
    opts = jpeg_first.degradation.options()
    assert jpeg_first.degradation.kind == "realworld" and jpeg_first.init.pretrained == "frfsr/weights/default"
    assert opts.clean_prob == 0.3 and opts.final.jpeg_prob == 0.9 and opts.final.jpeg_range == (40.0, 95.0)
    assert opts.first.blur_prob == 0.3 and opts.first.noise_prob == 0.3 and opts.second.blur_prob == 0.1
    assert jpeg_first.data.views.scale_range == [0.8, 1.25] and jpeg_first.data.views.max_rotation == 10
    # its second leg: the same data and degradations, with sub-pixel matching and unresampled Refs
    leg2 = load_config(configs / "robust_stage1_subpixel.yaml")
    assert leg2.degradation == jpeg_first.degradation and leg2.init.pretrained == "frfsr/weights/robust"
    assert leg2.model.overrides["subpixel_match"] is True and leg2.data.views.p_aligned == 0.3
    assert leg2.data.views.photos == jpeg_first.data.views.photos
    for sections, msg in (({"degradation": {"kind": "jpeg"}}, r"degradation\.kind must be one of bicubic, realworld"),
                          ({"degradation": {"first": {"sigma_range": [3, 1]}}}, r"degradation\.first\.sigma_range"),
                          ({"degradation": {"final": {"jpeg_range": 50}}}, r"degradation\.final\.jpeg_range"),
                          ({"degradation": {"second": {"foo": 1}}}, r"unknown key\(s\) degradation\.second\.foo"),
                          ({"degradation": {"strength": 1}}, r"unknown key\(s\) degradation\.strength"),
                          ({"degradation": {"clean_prob": -0.1}}, r"clean_prob must be in \[0, 1\]"),
                          ({"degradation": {"first": 3}}, r"degradation\.first must be dict"),
                          ({"data": {"views": {"max_perspective": 0.5}}}, r"data\.views\.max_perspective"),
                          ({"data": {"views": {"scale_range": [2.0, 0.5]}}}, r"data\.views\.scale_range"),
                          ({"data": {"views": {"max_rotation": 200}}}, r"data\.views\.max_rotation")):
        with pytest.raises(ConfigError, match=msg):
            _cfg(tmp_path, **sections)


def test_tiny_training_run_with_realworld_lrs_and_wide_views(tmp_path, _clean_accelerate):
    from frfsr_train.training import Trainer
    t = Trainer(_cfg(tmp_path))
    batch = next(t._batches(0))
    assert batch["lr"].shape == (2, 3, 16, 16) and batch["ref"].shape == (2, 3, 64, 64)
    bic = bicubic_downsample((batch["hr"] * 255).round().to(torch.uint8), 4).float() / 255
    assert not torch.allclose(batch["lr"], bic, atol=2 / 255)                  # the LR is the degraded one
    assert torch.equal(t.degraded_lr(batch["hr"], 0), batch["lr"])             # a function of (seed, micro, rank)
    assert not torch.equal(t.degraded_lr(batch["hr"], 1), batch["lr"])
    stream = t._batches(0)
    fourth = [next(stream) for _ in range(4)][3]
    resumed = next(t._batches(3))                                             # a resumed run: the same LRs
    assert torch.equal(resumed["hr"], fourth["hr"]) and torch.equal(resumed["lr"], fourth["lr"])
    logs = t.train_step([batch])
    assert math.isfinite(float(logs["l1"]))
    assert t.fit()
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_encoder_training_with_realworld_lrs(tmp_path):
    pytest.importorskip("skimage")
    from frfsr_train.data.views import load_skimage_photos
    from frfsr_train.training.contrastive import degradation_from_config, merge_config, train_encoder
    photos = load_skimage_photos(["camera", "brick", "astronaut"])
    cfg = {"model": {"preset": "tiny", "overrides": {}},
           "data": {"patch": 48, "ref_patch": 48, "p_shuffle": 0.0, "num_workers": 0, "scale_range": [0.5, 2.0],
                    "max_rotation": 30.0, "max_perspective": 0.1},
           "degradation": {"kind": "realworld"},
           "train": {"batch_size": 2, "steps": 2, "warmup_steps": 1, "samples_per_image": 16, "log_every": 1,
                     "eval_every": 0},
           "eval": {"kinds": ["relevant"], "n": 2, "patch": 48}}
    summary = train_encoder(cfg, tmp_path / "enc", photos=photos, eval_photos=photos, log=lambda s: None)
    assert summary["steps"] == 2 and math.isfinite(summary["loss_last"])
    assert degradation_from_config(merge_config(cfg)) is not None
    assert degradation_from_config(merge_config(None)) is None
    with pytest.raises(ValueError, match=r"degradation\.kind"):
        degradation_from_config(merge_config({"degradation": {"kind": "jpeg"}}))
    with pytest.raises(ValueError, match=r"degradation\.first\.jpeg_range"):
        degradation_from_config(merge_config({"degradation": {"first": {"jpeg_range": [0, 5]}}}))
