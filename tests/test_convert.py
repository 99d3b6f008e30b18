"""Foreign checkpoints, built here with their own key layouts, converted into a tiny FRFSR."""
import os
import re

import pytest
import torch
from safetensors.torch import save_file

from frfsr import FRFSR, FRFSRConfig
from frfsr.convert import (convert_state_dict, detect_kind, esrgan_to_sife, load_checkpoint, official_key,
                           torchvision_vgg19_to_extractor, torchvision_vgg_to_texture_encoder)

from official import official_entries

TV_CONV = {0: "conv1_1", 2: "conv1_2", 5: "conv2_1", 7: "conv2_2", 10: "conv3_1"}


@pytest.fixture(scope="module")
def source():
    """A tiny model whose weights the foreign checkpoints carry."""
    torch.manual_seed(7)
    return FRFSR(FRFSRConfig.tiny()).eval()


@pytest.fixture
def target():
    torch.manual_seed(8)
    return FRFSR(FRFSRConfig.tiny()).eval()


def _equal(a: FRFSR, b: FRFSR, prefix: str) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    keys = [k for k in sa if k.startswith(prefix)]
    return bool(keys) and all(torch.equal(sa[k], sb[k]) for k in keys)


def _load(model, converted):
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert not unexpected


# ---------------------------------------------------------------- key layouts, built from the source model
def official_layout(model):
    """The authors' names (net_extractor.*, net_map.*, sisr.*, net_g.dyn_agg_restore.*)."""
    names = {official_key(n): n for n, _, _ in official_entries() if official_key(n)}
    return {names[k]: v.clone() for k, v in model.state_dict().items()}


ESRGAN_2019 = {"conv_up1": "upconv1", "conv_up2": "upconv2", "conv_hr": "HRconv", "conv_last": "conv_last"}
ESRGAN_OLD = {"conv_up1": "model.3", "conv_up2": "model.6", "conv_hr": "model.8", "conv_last": "model.10"}


def basicsr_rrdb(model, layout="basicsr"):
    """ESRGAN RRDBNet x4 weights in BasicSR names ("basicsr"), the 2019 ESRGAN repository's
    ("esrgan2019": RRDB_trunk.N.RDBk, trunk_conv) or the original release's ("model.N")."""
    nb, f = model.config.sife_blocks, model.config.sife_feat
    names = {"basicsr": {n: n for n in ESRGAN_OLD}, "esrgan2019": ESRGAN_2019, "model.N": ESRGAN_OLD}[layout]
    out = {}
    for k, v in model.state_dict().items():
        if not k.startswith("sife."):
            continue
        k = k[len("sife."):]
        module, _, leaf = k.rpartition(".")
        if module in names:                                   # the model's own upsampler (sife_upsampler)
            k = f"{names[module]}.{leaf}"
        elif layout == "esrgan2019":
            k = re.sub(r"^body\.(\d+)\.rdb(\d)", r"RRDB_trunk.\1.RDB\2", k).replace("conv_body", "trunk_conv")
        elif layout == "model.N":
            k = k.replace("conv_first", "model.0").replace("conv_body", f"model.1.sub.{nb}")
            k = re.sub(r"^body\.(\d+)\.rdb(\d)\.(conv\d)\.", r"model.1.sub.\1.RDB\2.\3.0.", k)
        out[k] = v.clone()
    for ours, theirs in names.items():                       # a stand-in upsampler, where the model has none
        if f"{theirs}.weight" in out:
            continue
        c_out = 3 if ours == "conv_last" else f
        out[f"{theirs}.weight"], out[f"{theirs}.bias"] = torch.randn(c_out, f, 3, 3), torch.randn(c_out)
    return out


VGG_CONVS = {16: (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
             19: (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)}


def torchvision_vgg(model, trunk: str, depth: int, bn: bool = False):
    """torchvision vgg16/vgg19 ``features.N`` + ``classifier.N``: our conv1_1..conv3_1 at
    indices 0, 2, 5, 7, 10, small stand-ins for the deeper layers (which are dropped)."""
    sd = model.state_dict()
    out = {}
    for idx in VGG_CONVS[depth]:
        if idx in TV_CONV:
            w, b = sd[f"{trunk}.{TV_CONV[idx]}.weight"].clone(), sd[f"{trunk}.{TV_CONV[idx]}.bias"].clone()
        else:
            w, b = torch.randn(4, 4, 3, 3), torch.randn(4)
        out[f"features.{idx}.weight"], out[f"features.{idx}.bias"] = w, b
    if bn:
        out["features.1.running_mean"] = torch.zeros(8)
    out["classifier.0.weight"], out["classifier.6.bias"] = torch.randn(8, 4), torch.randn(10)
    return out


# ---------------------------------------------------------------- converters
def test_official_basicsr_wrapped_checkpoint(tmp_path, source, target):
    path = tmp_path / "net_g_latest.pth"
    torch.save({"params": {k: torch.zeros_like(v) for k, v in official_layout(source).items()},
                "params_ema": official_layout(source)}, path)
    state = load_checkpoint(path)                     # params_ema preferred
    assert detect_kind(state) == "official"
    converted, report = convert_state_dict(state, "auto", target)
    assert report.ok, str(report)
    _load(target, converted)
    assert _equal(source, target, "")
    assert list(load_checkpoint(path, key="params").values())[0].abs().sum() == 0


@pytest.mark.parametrize("layout", ["basicsr", "esrgan2019", "model.N"])
def test_esrgan_rrdb_into_sife(tmp_path, source, target, layout):
    sd = basicsr_rrdb(source, layout)
    path = tmp_path / "RRDB_ESRGAN_x4.pth"
    torch.save({"params_ema": sd} if layout == "basicsr" else sd, path)
    state = load_checkpoint(path)
    assert detect_kind(state) == "esrgan"
    converted, report = convert_state_dict(state, "esrgan", target)
    assert report.ok and len(report.dropped) == 8, str(report)      # the upsampler's 4 convs
    _load(target, converted)
    assert _equal(source, target, "sife.") and not _equal(source, target, "restoration.")
    lr = torch.rand(1, 3, 8, 8)
    assert torch.equal(source.sife(lr), target.sife(lr))


@pytest.mark.parametrize("layout", ["basicsr", "esrgan2019", "model.N"])
def test_esrgan_rrdb_with_its_upsampler_into_a_sife_that_keeps_it(layout):
    """A model with ``sife_upsampler``: the upsampler's tensors, in every naming, fill SIFE's."""
    torch.manual_seed(9)
    src, dst = (FRFSR(FRFSRConfig.tiny(sife_upsampler=True)).eval() for _ in range(2))
    converted, report = convert_state_dict(basicsr_rrdb(src, layout), "esrgan", dst)
    assert report.ok and not report.dropped and not report.missing, str(report)
    _load(dst, converted)
    assert _equal(src, dst, "sife.")
    lr = torch.rand(1, 3, 8, 8)
    assert torch.equal(src.sife.upsample(src.sife(lr)), dst.sife.upsample(dst.sife(lr)))


def test_torchvision_vgg(source, target):
    tex, rep = torchvision_vgg_to_texture_encoder(torchvision_vgg(source, "texture_encoder.lr_trunk", 16),
                                                  [k for k in target.state_dict() if k.startswith("texture_encoder.")])
    assert rep.ok and rep.dropped
    _load(target, tex)
    assert torch.equal(target.texture_encoder.lr_trunk.conv3_1.weight, source.texture_encoder.lr_trunk.conv3_1.weight)
    assert torch.equal(target.texture_encoder.ref_trunk.conv1_1.bias, source.texture_encoder.lr_trunk.conv1_1.bias)
    ext, rep = torchvision_vgg19_to_extractor(torchvision_vgg(source, "ref_extractor.vgg", 19))
    _load(target, ext)
    assert _equal(source, target, "ref_extractor.")
    assert detect_kind(torchvision_vgg(source, "ref_extractor.vgg", 19)) == "vgg19"


def test_the_vgg_layer_table_is_torchvisions():
    """The one VGG table (frfsr.models.vgg) gives torchvision's ``features`` indices, which the
    trunks, the perceptual loss's VGG19 and the converters all read from it."""
    from frfsr.models.vgg import TRUNK_CONVS, VGGTrunk, last_conv_index, vgg_layers
    for depth, length in ((16, 31), (19, 37)):                  # len(torchvision vgg{depth}().features)
        layers = vgg_layers(depth)
        assert len(layers) == length and [layer.index for layer in layers] == list(range(length))
        assert tuple(layer.index for layer in layers if layer.is_conv) == VGG_CONVS[depth]
        assert last_conv_index(depth) == VGG_CONVS[depth][-1]
        assert [layer.name for layer in layers if layer.name.startswith("pool")] == [f"pool{b}" for b in range(1, 6)]
    assert {layer.index: layer.name for layer in TRUNK_CONVS} == TV_CONV
    assert [n for n, _ in VGGTrunk((8, 16, 24), final_relu=False).named_parameters()] == \
        [f"{name}.{kind}" for name in TV_CONV.values() for kind in ("weight", "bias")]
    with pytest.raises(ValueError, match="no layer 'relu6_1'"):
        vgg_layers(19, "relu6_1")


def test_c2matching_extractor_converts_and_restoration_net_is_refused(source, target):
    extractor = {k[len("net_extractor."):]: v for k, v in official_layout(source).items()
                 if k.startswith("net_extractor.")}
    extractor["feature_extraction_image1.mean"] = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    converted, report = convert_state_dict(extractor, "c2matching", target)
    assert report.ok and report.dropped == ["feature_extraction_image1.mean"]
    _load(target, converted)
    assert _equal(source, target, "texture_encoder.")
    c2_net_g = {"content_extractor.conv_first.weight": torch.randn(64, 3, 3, 3),
                "dyn_agg_restore.unet_head.weight": torch.randn(64, 3, 3, 3)}
    for kind in ("auto", "c2matching", "official"):
        with pytest.raises(ValueError, match="C2-Matching's restoration net .* different architecture"):
            convert_state_dict(c2_net_g, kind, target)


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize("claimed, build, message", [
    ("esrgan", lambda m: torchvision_vgg(m, "ref_extractor.vgg", 19),
     "not in the ESRGAN RRDB layout.*detected layout: vgg19"),
    ("vgg16", lambda m: basicsr_rrdb(m), "not in the torchvision VGG16 layout.*detected layout: esrgan"),
    ("vgg16", lambda m: torchvision_vgg(m, "ref_extractor.vgg", 19), "this is VGG19 .*not torchvision VGG16"),
    ("vgg19", lambda m: torchvision_vgg(m, "texture_encoder.lr_trunk", 16), "this is VGG16"),
    ("vgg16", lambda m: torchvision_vgg(m, "texture_encoder.lr_trunk", 16, bn=True), "batch-norm VGG"),
    ("official", lambda m: basicsr_rrdb(m), "not in the FRFSR official layout"),
    ("auto", lambda m: {"encoder.layer.0.weight": torch.zeros(2)}, "cannot tell what this checkpoint is"),
])
def test_a_file_that_is_not_what_it_claims_is_refused(source, target, claimed, build, message):
    with pytest.raises(ValueError, match=message):
        convert_state_dict(build(source), claimed, target)


def test_shapes_that_do_not_fit_the_config_are_refused(target):
    from frfsr.models.sife import SIFE
    sd = {k: v for k, v in SIFE(2, 64, 32).state_dict().items()}
    with pytest.raises(ValueError, match="does not fit the model's config \\(tiny\\).*other shapes"):
        convert_state_dict(sd, "esrgan", target)
    sd = {k: v for k, v in SIFE(1, 16, 8).state_dict().items()}
    sd["conv_first.weight"] = torch.randn(16, 12, 3, 3)      # an x2 RRDBNet (pixel-unshuffle input)
    with pytest.raises(ValueError, match="takes 12 input channels .*x4 RRDBNet"):
        esrgan_to_sife(sd)


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "evil.pth"
    torch.save({"params": {"w": torch.zeros(1)}, "payload": Evil()}, path)
    with pytest.raises(ValueError, match="refused to load .*would run code"):
        load_checkpoint(path)
    assert not marker.exists()


def test_load_checkpoint_formats_and_errors(tmp_path, source):
    sd = basicsr_rrdb(source)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "rrdb.safetensors"))
    assert load_checkpoint(tmp_path / "rrdb.safetensors").keys() == sd.keys()
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, tmp_path / "dp.pth")
    assert load_checkpoint(tmp_path / "dp.pth").keys() == sd.keys()
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="holds a list, not a dict of tensors"):
        load_checkpoint(tmp_path / "list.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "junk.pth")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="no entry 'params'"):
        load_checkpoint(tmp_path / "dp.pth", key="params")
    with pytest.raises(ValueError, match="unknown checkpoint kind 'rrdb'"):
        convert_state_dict(sd, "rrdb")
