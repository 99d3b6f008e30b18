"""Contrastive texture-encoder training: correspondence geometry, the matching-accuracy
metric on a case with a known answer, the loss, and a short end-to-end run of the script."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from frfsr import FRFSR
from frfsr.models.texture_encoder import TextureEncoder
from frfsr_train.training.contrastive import (PREFIX, contrastive_loss, encoder_state_dict, lr_upsample,
                                        matching_accuracy, merge_config, model_config, texture_coords)

ROOT = Path(__file__).resolve().parents[1]


def _yaml_config(name):
    """A config of train/configs/ without its ``output_dir`` (a script option)."""
    cfg = yaml.safe_load((ROOT / "train/configs" / name).read_text())
    cfg.pop("output_dir", None)
    return cfg


def _smooth_noise(b, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, h // 4, w // 4, generator=g)
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


def _identity_coords(b, h, w, dx=0.0, dy=0.0):
    gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([gx + dx, gy + dy])[None].repeat(b, 1, 1, 1)


def _tied_encoder(widths=(8, 16, 32), seed=0):
    torch.manual_seed(seed)
    enc = TextureEncoder(widths)
    enc.ref_trunk.load_state_dict(enc.lr_trunk.state_dict())
    return enc


def test_texture_coords_maps_hr_pixels_to_texture_cells():
    tex = texture_coords(_identity_coords(2, 32, 48))
    assert tex.shape == (2, 2, 8, 12)
    gy, gx = torch.meshgrid(torch.arange(8.0), torch.arange(12.0), indexing="ij")
    assert torch.allclose(tex[:, 0], gx) and torch.allclose(tex[:, 1], gy)
    coords = _identity_coords(1, 32, 48)
    coords[:, :, 5, 9] = float("nan")                    # one unknown pixel spoils its cell only
    tex = texture_coords(coords)
    assert torch.isnan(tex[0, :, 1, 2]).all() and torch.isfinite(tex).sum() == 2 * (8 * 12 - 1)
    torn = _identity_coords(1, 32, 48)
    torn[:, 0, :, 6:] += 40                               # a cell torn apart (shuffled blocks) is unknown
    assert torch.isnan(texture_coords(torn)[0, 0, :, 1]).all()


def test_matching_accuracy_on_a_known_answer():
    """Identical trunks and Ref = the upsampled LR shifted by 8 pixels: the argmax finds the
    shift almost everywhere; claiming a wrong correspondence gives ~0."""
    enc = _tied_encoder((16, 32, 64)).eval()
    lr = _smooth_noise(2, 24, 24, seed=1)
    up = lr_upsample(lr)
    ref = up[..., :, 8:]                                  # ref pixel x = HR pixel x - 8
    coords = _identity_coords(2, 96, 96, dx=-8.0)
    coords[:, :, :, :8] = float("nan")
    good = matching_accuracy(enc, lr, ref, coords)
    assert good["total"] > 0.8 * 2 * 22 * 22 - 2 * 22 * 3
    assert good["accuracy"] > 0.9, good
    wrong = matching_accuracy(enc, lr, ref, coords + torch.tensor([12.0, 0.0]).view(1, 2, 1, 1))
    assert wrong["accuracy"] < 0.1, wrong
    # independent random trunks know nothing
    torch.manual_seed(0)
    assert matching_accuracy(TextureEncoder((16, 32, 64)), lr, ref, coords)["accuracy"] < 0.3


def test_contrastive_loss_prefers_true_correspondence():
    f = F.normalize(torch.randn(2, 16, 12, 12), dim=1)
    tex = texture_coords(_identity_coords(2, 48, 48))
    gen = torch.Generator().manual_seed(0)
    good, stats = contrastive_loss(f, f, tex, samples_per_image=20, generator=gen)
    assert stats["positives"] == 40 and stats["top1"] == 1.0
    bad, _ = contrastive_loss(f, torch.roll(f, 3, dims=-1), tex, samples_per_image=20, generator=gen)
    assert good < 0.1 < bad
    # gradients reach both inputs; no known position -> zero loss, still differentiable
    a, b = torch.randn(1, 8, 6, 6, requires_grad=True), torch.randn(1, 8, 6, 6, requires_grad=True)
    loss, _ = contrastive_loss(a, b, texture_coords(_identity_coords(1, 24, 24)))
    loss.backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
    zero, stats = contrastive_loss(a, b, torch.full((1, 2, 6, 6), float("nan")))
    assert zero.item() == 0.0 and stats["positives"] == 0
    zero.backward()


def test_config_merge_and_default_model():
    cfg = merge_config(_yaml_config("encoder_default.yaml"))
    m = model_config(cfg)
    assert m.name == "tiny" and m.ngf == 32 and m.vgg_widths == (32, 64, 128)
    with pytest.raises(ValueError, match="unknown key"):
        merge_config({"train": {"stepz": 3}})
    with pytest.raises(ValueError, match="section"):
        merge_config({"optim": {}})


def test_training_script_reduces_loss_improves_accuracy_and_saves(tmp_path):
    pytest.importorskip("skimage")
    from safetensors.torch import load_file, save_file

    from frfsr_train.data.views import heldout_pairs

    spec = importlib.util.spec_from_file_location("encoder_script", ROOT / "train/encoder.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    cfg = _yaml_config("encoder_tiny.yaml")
    # independent random trunks: near-chance accuracy that 30 steps reliably improve (from a
    # tied start, as the default config uses, 30 steps of the tiny net do not reliably help)
    torch.manual_seed(1)
    init = TextureEncoder((8, 16, 32))
    save_file(encoder_state_dict(init), str(tmp_path / "init.safetensors"))
    cfg["train"].update(init=str(tmp_path / "init.safetensors"), steps=30, seed=1)
    cfg["data"]["photos"] = ["astronaut", "brick", "grass", "camera", "immunohistochemistry", "retina"]
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    script.main(["--config", str(tmp_path / "cfg.yaml"), "--output_dir", str(out)])

    summary = json.loads((out / "encoder.json").read_text())
    assert summary["steps"] == 30 and summary["stopped_by"] == "steps"
    before, after = summary["heldout_before"]["relevant"], summary["heldout_after"]["relevant"]
    assert after["positions"] == before["positions"] > 0
    assert after["accuracy"] > before["accuracy"], (before, after)

    sd = load_file(str(out / "texture_encoder.safetensors"))
    assert sd and all(k.startswith(PREFIX) for k in sd)
    model = FRFSR(model_config(merge_config(cfg)))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and not any(k.startswith(PREFIX) for k in missing)
    assert torch.equal(model.texture_encoder.lr_trunk.conv3_1.weight, sd[PREFIX + "lr_trunk.conv3_1.weight"])

    # the InfoNCE loss on fixed held-out pairs is lower with the trained weights
    trained = TextureEncoder((8, 16, 32))
    trained.load_state_dict({k[len(PREFIX):]: v for k, v in sd.items()})
    pairs = heldout_pairs("relevant", patch=48, n=6, seed=1)
    lr = torch.stack([p["lr"] for p in pairs])
    ref = torch.stack([p["ref"] for p in pairs])
    tex = texture_coords(torch.stack([p["ref_coords"] for p in pairs]))

    def fixed_loss(enc):
        with torch.no_grad():
            return float(contrastive_loss(enc.encode_lr(lr_upsample(lr)), enc.encode_ref(ref), tex,
                                          generator=torch.Generator().manual_seed(0))[0])

    assert fixed_loss(trained) < fixed_loss(init) - 0.1
