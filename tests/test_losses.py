import warnings

import pytest
import torch
import torch.nn as nn

from frfsr_train.training.losses import (VGG19_LAYER_NAMES, BlurDown, ImageDiscriminator, PatchCritic, PerceptualLoss,
                                         VGG19Features, build_discriminator, detail_strength_gap, gradient_penalty,
                                         grid_excess, random_shift, wgan_discriminator_loss, wgan_generator_loss,
                                         wgan_gp_losses)


def _torchvision_style_state_dict(seed=0):
    """A full torchvision vgg19 state dict layout (features incl. deeper layers + classifier)."""
    g = torch.Generator().manual_seed(seed)
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
    sd, idx, c_in = {}, 0, 3
    for v in cfg:
        if v == "M":
            idx += 1
            continue
        sd[f"features.{idx}.weight"] = torch.randn(v, c_in, 3, 3, generator=g) * 0.05
        sd[f"features.{idx}.bias"] = torch.randn(v, generator=g) * 0.01
        idx += 2
        c_in = v
    sd["classifier.0.weight"] = torch.zeros(8, 8)  # stand-in; ignored
    sd["classifier.0.bias"] = torch.zeros(8)
    return sd


@pytest.fixture(scope="module")
def vgg():
    return VGG19Features(layers=("relu5_1",), weights=_torchvision_style_state_dict())


def test_vgg_layout_and_loading(vgg):
    assert len(VGG19_LAYER_NAMES) == 30 and VGG19_LAYER_NAMES[28] == "conv5_1" and VGG19_LAYER_NAMES[-1] == "relu5_1"
    keys = set(vgg.state_dict())
    assert "features.0.weight" in keys and "features.28.bias" in keys and "features.30.weight" not in keys
    assert all(k.startswith("features.") for k in keys)  # mean / std are not persistent
    sd = _torchvision_style_state_dict()
    assert torch.equal(vgg.features[28].weight, sd["features.28.weight"]) and vgg.pretrained
    assert not any(p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.training
    # plain load_state_dict with the features-only subset works as well
    fresh = VGG19Features()
    fresh.load_state_dict({k: v for k, v in sd.items() if k in keys})
    assert torch.equal(fresh.features[0].weight, sd["features.0.weight"])
    del sd["features.10.weight"]
    with pytest.raises(ValueError, match="features.10.weight"):
        VGG19Features(weights=sd)


def test_vgg_features_shapes_and_input_grad(vgg):
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    out = vgg(x, layers=("relu1_1", "relu3_1", "relu5_1"))
    assert out["relu1_1"].shape == (1, 64, 32, 32)
    assert out["relu3_1"].shape == (1, 256, 8, 8)
    assert out["relu5_1"].shape == (1, 512, 2, 2)
    out["relu5_1"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown VGG19 layer"):
        vgg(x, layers=("relu6_1",))


def test_perceptual_loss(vgg):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    loss = PerceptualLoss("relu5_1", weight=1e-4, vgg=vgg)
    assert loss(x, x).item() == 0.0
    val = loss(x, y)
    assert val.item() > 0
    # 'fro' = Frobenius norm over the whole feature tensor (batch included), times the weight
    fx, fy = vgg(x)["relu5_1"], vgg(y)["relu5_1"]
    assert torch.allclose(val, 1e-4 * torch.sqrt(((fx - fy) ** 2).sum()), rtol=1e-5)
    loss2 = PerceptualLoss("relu5_1", weight=3e-4, vgg=vgg)
    assert torch.allclose(loss2(x, y), 3 * val, rtol=1e-5)
    l1 = PerceptualLoss({"relu5_1": 2.0}, weight=1.0, criterion="l1", vgg=vgg)
    assert torch.allclose(l1(x, y), 2.0 * (fx - fy).abs().mean(), rtol=1e-5)
    xr = x.clone().requires_grad_(True)
    loss(xr, y).backward()
    assert xr.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="criterion"):
        PerceptualLoss(criterion="cosine", vgg=vgg)


def test_perceptual_loss_warns_without_weights():
    with pytest.warns(UserWarning, match="random weights"):
        PerceptualLoss()


def test_discriminator():
    d = ImageDiscriminator(in_ch=3, ndf=8)
    x = torch.rand(2, 3, 64, 64)
    out = d(x)
    assert out.shape == (2, 1) and (out > 0).all() and (out < 1).all()
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in d.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 12 and len(bns) == 10
    assert [c.out_channels for c in convs[:10]] == [8, 8, 16, 16, 32, 32, 64, 64, 128, 128]
    assert [c.stride[0] for c in convs[:10]] == [1, 2] * 5
    assert all(c.kernel_size == (3, 3) for c in convs[:10])
    assert (convs[10].in_channels, convs[10].out_channels, convs[11].out_channels) == (128, 1024, 1)
    assert all(c.bias.abs().sum() == 0 for c in convs)
    assert all(b.bias.abs().sum() == 0 and abs(b.weight.mean() - 1) < 0.05 for b in bns)
    w = torch.cat([c.weight.flatten() for c in convs])
    assert abs(w.std() - 0.02) < 0.002 and abs(w.mean()) < 0.002
    leaky = [m for m in d.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(leaky) == 11 and all(m.negative_slope == 0.2 for m in leaky)
    assert isinstance(d.head[-1], nn.Sigmoid) and isinstance(d.head[0], nn.AdaptiveAvgPool2d)
    # default width
    d32 = ImageDiscriminator()
    assert d32.head[1].in_channels == 512
    assert d(torch.rand(1, 3, 40, 48)).shape == (1, 1)  # any input size


@pytest.mark.parametrize("antialias, field", [(False, 40), (True, 47)])
def test_patch_critic(antialias, field):
    """``loss.disc: patch`` / ``patch_aa``: no BatchNorm, no sigmoid, one score per 8x8 cell, the
    sample's score their mean; each cell sees a ``field`` x ``field`` window."""
    torch.manual_seed(0)            # the critic's initial weights and the input, whatever ran before
    d = PatchCritic(ndf=8, antialias=antialias)
    x = torch.randn(2, 3, 64, 48)
    m = d.score_map(x)
    assert m.shape == (2, 1, 8, 6)
    out = d(x)
    assert out.shape == (2, 1) and torch.allclose(out, m.mean(dim=(2, 3)))
    assert not any(isinstance(mod, (nn.BatchNorm2d, nn.Sigmoid)) for mod in d.modules())
    assert sum(isinstance(mod, BlurDown) for mod in d.modules()) == (3 if antialias else 0)
    with torch.no_grad():       # unbounded: scaling the last conv scales the score
        d.features[-1].weight.mul_(1000.0)
        d.features[-1].bias.fill_(5.0)
    assert d(x).abs().max() > 1.0
    # each cell sees only its neighbourhood: changing one corner leaves the far cells alone
    d = PatchCritic(ndf=4, antialias=antialias)
    y = x.clone()
    y[:, :, :8, :8] += 1.0
    diff = (d.score_map(y) - d.score_map(x)).abs()[0, 0]
    assert diff[0, 0] > 0 and diff[-1, -1] == 0 and diff[-1, 0] == 0
    # the window one inner cell's score depends on
    z = torch.zeros(1, 3, 160, 160, requires_grad=True)
    d.score_map(z)[0, 0, 10, 10].backward()
    rows, cols = (z.grad[0].abs().sum(0) > 0).nonzero().unbind(1)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (field, field)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        d(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="ndf must be positive"):
        PatchCritic(ndf=0)


def test_blur_down():
    """A binomial low-pass before every second pixel: flat images stay flat, the finest
    checkerboard (which plain striding turns into a flat image of one of its two values) is
    averaged away, and odd sizes round up."""
    b = BlurDown()
    flat = torch.full((1, 2, 8, 8), 0.7)
    assert torch.allclose(b(flat), flat[..., :4, :4])
    i = torch.arange(8)
    checker = ((i[:, None] + i[None, :]) % 2).float().expand(1, 3, 8, 8)
    strided = checker[..., ::2, ::2]
    assert strided.std() == 0 and strided.mean() == 0        # striding aliases it to one value
    inner = b(checker)[..., 1:-1, 1:-1]
    assert torch.allclose(inner, torch.full_like(inner, 0.5))
    assert b(torch.rand(2, 5, 9, 7)).shape == (2, 5, 5, 4)
    assert "kernel" not in b.state_dict()       # fixed, not saved with the critic


def test_random_shift():
    """What the critic sees with ``loss.disc_shift``: each sample moved by at most ``max_shift`` px
    (its content, read off a ramp image), reflect-padded, differentiable, repeatable from a seed."""
    h = w = 16
    ramp = (torch.arange(h)[:, None] * 100 + torch.arange(w)[None, :]).float()
    x = ramp.expand(6, 2, h, w).clone().requires_grad_(True)
    y = random_shift(x, 3, torch.Generator().manual_seed(1))
    assert y.shape == x.shape
    moved = 0
    for i in range(6):
        dy = int(y[i, 0, 8, 8].item()) // 100 - 8
        dx = int(y[i, 0, 8, 8].item()) % 100 - 8
        assert -3 <= dy <= 3 and -3 <= dx <= 3
        moved += (dy, dx) != (0, 0)
        inner = y[i, :, 3:-3, 3:-3]
        assert torch.equal(inner, ramp[3 + dy:h - 3 + dy, 3 + dx:w - 3 + dx].expand_as(inner))
    assert moved >= 4
    assert torch.equal(y, random_shift(x, 3, torch.Generator().manual_seed(1)))
    y.sum().backward()
    assert torch.allclose(x.grad.sum(dim=(1, 2, 3)), torch.full((6,), 2.0 * h * w))
    assert random_shift(x, 0) is x
    with pytest.raises(ValueError, match="max_shift must be >= 0"):
        random_shift(x, -1)
    with pytest.raises(ValueError, match="larger than max_shift=16"):
        random_shift(x, 16)


def _stripes(size, period, amplitude):
    i = torch.arange(size, dtype=torch.float32)
    return (amplitude * torch.cos(2 * torch.pi * (i[:, None] + i[None, :]) / period)).expand(2, 3, size, size)


def test_grid_excess():
    """``loss.grid_penalty``'s term: nothing for the truth or a blur of it, a cost that grows with
    the amplitude of period-4 stripes, little for the same stripes off the grid (period 3), and a
    gradient step that lowers it."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(2, 3, 20, 20, generator=g)
    hr = (torch.nn.functional.interpolate(base, size=(80, 80), mode="bicubic", align_corners=False)
          + 0.1 * torch.rand(2, 3, 80, 80, generator=g)).clamp(0, 1)
    blurred = torch.nn.functional.avg_pool2d(hr, 3, 1, 1, count_include_pad=False)
    s1, s2 = grid_excess(hr + _stripes(80, 4, 0.02), hr), grid_excess(hr + _stripes(80, 4, 0.04), hr)
    assert grid_excess(hr, hr) == 0
    assert grid_excess(blurred, hr) < 0.05 * s1
    assert s1 > 0 and 1.6 < s2 / s1 < 2.4
    assert grid_excess(hr + _stripes(80, 3, 0.04), hr) < 0.2 * s2
    sr = (hr + _stripes(80, 4, 0.04)).requires_grad_(True)
    loss = grid_excess(sr, hr)
    loss.backward()
    assert torch.isfinite(sr.grad).all()
    with torch.no_grad():
        assert grid_excess(sr - 50.0 * sr.grad, hr) < loss
    flat = torch.full((1, 3, 32, 32), 0.5, requires_grad=True)     # |FFT| = 0: still a finite gradient
    grid_excess(flat, flat.detach()).backward()
    assert torch.isfinite(flat.grad).all()
    with pytest.raises(ValueError, match="two \\(B, C, H, W\\) tensors of one shape"):
        grid_excess(hr, hr[..., :40])


def test_detail_strength_gap():
    """``loss.detail``'s term: nothing for the truth, a cost for a blur of it that grows with the
    blur, little cost for detail as strong as the truth's in other places (it measures strength,
    not place), a cost for texture where the truth is flat, and a gradient step that lowers it."""
    g = torch.Generator().manual_seed(0)
    hr = (0.5 + 0.2 * torch.rand(2, 3, 64, 64, generator=g))
    blur1 = torch.nn.functional.avg_pool2d(hr, 3, 1, 1, count_include_pad=False)
    blur2 = torch.nn.functional.avg_pool2d(blur1, 3, 1, 1, count_include_pad=False)
    assert detail_strength_gap(hr, hr) == 0
    assert 0 < detail_strength_gap(blur1, hr) < detail_strength_gap(blur2, hr)
    # a new draw of the same noise: as strong, other places -> far below the blur's cost
    assert detail_strength_gap(0.5 + 0.2 * torch.rand(2, 3, 64, 64, generator=g), hr) < 0.2 * detail_strength_gap(blur1, hr)
    flat = torch.full_like(hr, 0.5)
    assert detail_strength_gap(hr, flat) > 0 and detail_strength_gap(flat, flat) == 0
    sr = blur1.clone().requires_grad_(True)
    loss = detail_strength_gap(sr, hr)
    loss.backward()
    assert torch.isfinite(sr.grad).all()
    with torch.no_grad():
        assert detail_strength_gap(sr - 0.01 * sr.grad / sr.grad.abs().max(), hr) < loss
    for bad in (1, 63, 4.0):
        with pytest.raises(ValueError, match="cell must be an int from 2 to the image side - 2 \\(62\\)"):
            detail_strength_gap(hr, hr, bad)
    with pytest.raises(ValueError, match="two \\(B, 3, H, W\\) tensors of one shape"):
        detail_strength_gap(hr, hr[..., :40])


def test_build_discriminator():
    assert isinstance(build_discriminator("release", 4), ImageDiscriminator)
    assert isinstance(build_discriminator("patch", 4), PatchCritic)
    aa = build_discriminator("patch_aa", 4)
    assert isinstance(aa, PatchCritic) and any(isinstance(m, BlurDown) for m in aa.modules())
    with pytest.raises(ValueError, match="unknown discriminator 'vgg'; accepted: release, patch, patch_aa"):
        build_discriminator("vgg", 4)


@pytest.mark.parametrize("kind, lr, batch, steps, margin", [("release", 3e-4, 8, 40, 0.005),
                                                        ("patch", 1e-3, 4, 30, 0.05), ("patch_aa", 1e-3, 4, 30, 0.05)])
def test_a_critic_step_separates_sharp_from_blurred(kind, lr, batch, steps, margin):
    """WGAN-GP steps on sharp (real) against box-blurred (fake) noise raise D(real) - D(fake):
    its mean over the last 10 steps is above its mean over the first 3 and above 0. The
    release's critic (BatchNorm, one sigmoid score per image) separates slowly and, at a high
    rate, erratically, so it gets a lower rate, a larger batch and a smaller margin."""
    torch.manual_seed(0)
    d = build_discriminator(kind, 8)
    opt = torch.optim.Adam(d.parameters(), lr=lr, betas=(0.5, 0.9))
    real = torch.rand(batch, 3, 32, 32)
    fake = torch.nn.functional.avg_pool2d(real, 3, 1, 1)
    gap = []
    for i in range(steps):
        out = wgan_gp_losses(d, real, fake, generator=torch.Generator().manual_seed(i))
        opt.zero_grad()
        out["d_loss"].backward()
        opt.step()
        gap.append(-out["d_wgan"].item())
    first, last = sum(gap[:3]) / 3, sum(gap[-10:]) / 10
    assert last > first + margin and last > 0


def test_gradient_penalty_linear_critic():
    real = torch.rand(4, 3, 8, 8)
    fake = torch.rand(4, 3, 8, 8)
    w = torch.randn(3, 8, 8)

    def critic(scale):
        ww = scale * w / w.norm()
        return lambda x: (x * ww).flatten(1).sum(1, keepdim=True)

    gp1 = gradient_penalty(critic(1.0), real, fake)
    assert gp1.abs().item() < 1e-10
    gp2 = gradient_penalty(critic(2.0), real, fake, weight=10)
    assert gp2.item() == pytest.approx(10.0, rel=1e-5)  # 10 * (2 - 1)^2
    gp3 = gradient_penalty(critic(0.5), real, fake, weight=4)
    assert gp3.item() == pytest.approx(1.0, rel=1e-5)  # 4 * (0.5 - 1)^2


def test_gradient_penalty_hand_computed_quadratic():
    # D(x) = 0.5 * ||x||^2 per sample -> grad = x, penalty = mean((||x_b|| - 1)^2)
    real = torch.rand(3, 2, 4, 4)
    fake = torch.rand(3, 2, 4, 4)
    alpha = torch.tensor([0.1, 0.5, 0.9])
    x = alpha.view(3, 1, 1, 1) * real + (1 - alpha.view(3, 1, 1, 1)) * fake
    expected = 10 * ((x.flatten(1).norm(dim=1) - 1) ** 2).mean()
    gp = gradient_penalty(lambda t: 0.5 * (t ** 2).flatten(1).sum(1), real, fake, alpha=alpha)
    assert torch.allclose(gp, expected, rtol=1e-5)


def test_wgan_losses_and_backward():
    d = ImageDiscriminator(ndf=4)
    real, fake = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32, requires_grad=True)
    d_real, d_fake = d(real), d(fake)
    assert torch.allclose(wgan_generator_loss(d_fake), -d_fake.mean())
    assert torch.allclose(wgan_discriminator_loss(d_real, d_fake), d_fake.mean() - d_real.mean())
    out = wgan_gp_losses(d, real, fake, generator=torch.Generator().manual_seed(0))
    assert set(out) >= {"d_loss", "d_wgan", "gp"}
    assert torch.allclose(out["d_loss"], out["d_wgan"] + out["gp"])
    out["d_loss"].backward()
    assert d.features[0].weight.grad is not None and fake.grad is None


def _rrdb_file(tmp_path, blocks=2, upsampler=True):
    """A small RRDBNet (BasicSR names) written as safetensors, with or without its upsampler."""
    from safetensors.torch import save_file

    from frfsr.models.sife import RRDBNet
    torch.manual_seed(0)
    state = RRDBNet(n_blocks=blocks, feat=8, grow=4).state_dict()
    if not upsampler:
        state = {k: v for k, v in state.items() if k.split(".")[0] in ("conv_first", "body", "conv_body")}
    path = tmp_path / "rrdb.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.mark.parametrize("upsampler", [True, False])
def test_rrdb_perceptual_loss(tmp_path, upsampler):
    from frfsr_train.training.perceptual import RRDBPerceptualLoss, load_rrdb_trunk, rrdb_layer_depth
    trunk = load_rrdb_trunk(_rrdb_file(tmp_path, upsampler=upsampler))
    assert len(trunk.body) == 2 and not trunk.training
    assert [rrdb_layer_depth(n) for n in ("conv_first", "block1", "block12")] == [0, 1, 12]
    for bad in ("relu3_1", "block0", "block", "conv_body"):
        with pytest.raises(ValueError, match="conv_first or block<N>"):
            rrdb_layer_depth(bad)
    with pytest.raises(ValueError, match="needs 3 RRDB blocks; the weights have 2"):
        RRDBPerceptualLoss(trunk, "block3")
    loss = RRDBPerceptualLoss(trunk, "block2", weight=0.5, criterion="l1").train()
    assert not loss.features.training and not any(p.requires_grad for p in loss.parameters())
    gt = torch.rand(2, 3, 24, 24)
    assert float(loss(gt.clone(), gt)) == 0.0
    x = (gt + 0.1 * torch.randn_like(gt)).requires_grad_(True)
    value = loss(x, gt)
    with torch.no_grad():                   # the features of conv_first and both blocks, by hand
        fx, fg = trunk.body(trunk.conv_first(x)), trunk.body(trunk.conv_first(gt))
    torch.testing.assert_close(value.detach(), 0.5 * (fx - fg).abs().mean())
    value.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    shallow = RRDBPerceptualLoss(trunk, "conv_first", weight=1.0, criterion="l2")
    torch.testing.assert_close(shallow(x.detach(), gt), ((trunk.conv_first(x.detach()) - trunk.conv_first(gt)) ** 2).mean())
