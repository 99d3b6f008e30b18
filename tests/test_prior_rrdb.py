"""train/prior_rrdb.py: ncnn RRDBNet x4 files -> PyTorch RRDBNet, on small files the tests write;
frfsr.models.sife.RRDBNet and the .pth forms of its weights."""
import numpy as np
import pytest
import torch

from frfsr import FRFSR, FRFSRConfig
from frfsr.convert import convert_state_dict, load_checkpoint
from frfsr.models.sife import RRDBNet

from benchmark_scripts import load_script

prior = load_script("train", "prior_rrdb")


def _net(seed=0, n_blocks=2, feat=8, grow=4) -> RRDBNet:
    torch.manual_seed(seed)
    net = RRDBNet(n_blocks, feat, grow).eval()
    with torch.no_grad():
        for p in net.parameters():           # RDB init is tiny: make every conv matter
            p.add_(0.05 * torch.randn_like(p))
    return net


def write_ncnn(net: RRDBNet, folder, fp16: bool = True):
    """An ncnn .param/.bin of ``net`` laid out as the converter of a BasicSR RRDBNet writes it:
    convolutions (leaky ReLU 0.2 fused), Split / Concat for the dense blocks, Eltwise sums
    with coefficients (0.2, 1), a BinaryOp for the long skip, two nearest Interp x2."""
    layers, blobs, data = [], [0], bytearray()

    def blob():
        blobs[0] += 1
        return f"b{blobs[0]}"

    def conv(name, src, leaky):
        w, b = net.state_dict()[f"{name}.weight"], net.state_dict()[f"{name}.bias"]
        out = blob()
        extra = " 9=2 -23310=1,2.000000e-01" if leaky else ""
        layers.append(f"Convolution c_{name} 1 1 {src} {out} 0={w.shape[0]} 1=3 4=1 5=1 6={w.numel()}{extra}")
        if fp16:
            raw = w.numpy().astype(np.float16).tobytes()
            data.extend(np.uint32(prior.TAG_FP16).tobytes() + raw + b"\0" * (-len(raw) % 4))
        else:
            data.extend(np.uint32(prior.TAG_FP32).tobytes() + w.numpy().astype(np.float32).tobytes())
        data.extend(b.numpy().astype(np.float32).tobytes())
        return out

    def split(src, n):
        outs = [blob() for _ in range(n)]
        layers.append(f"Split s{len(layers)} 1 {n} {src} {' '.join(outs)}")
        return outs

    def add(branch, skip):
        out = blob()
        layers.append(f"Eltwise e{len(layers)} 2 1 {branch} {skip} {out} 0=1 -23301=2,2.000000e-01,1.000000e+00")
        return out

    layers.append("Input input 0 1 data")
    x = conv("conv_first", "data", False)
    x, first = split(x, 2)
    nb = len(net.body)
    for b in range(nb):
        block_in, x = split(x, 2)
        for r in (1, 2, 3):
            # ncnn feeds a blob to several layers through a Split: feature i of the dense
            # block goes to the concats of convs i+1..5 (the block input also to the skip)
            rdb_in, *copies = split(x, 6)
            uses = [copies]
            for c in range(1, 6):
                cat = blob()
                ins = [u.pop() for u in uses]
                layers.append(f"Concat k{len(layers)} {len(ins)} 1 {' '.join(ins)} {cat}")
                y = conv(f"body.{b}.rdb{r}.conv{c}", cat, c < 5)
                if c < 5:
                    uses.append(split(y, 5 - c) if c < 4 else [y])
            x = add(y, rdb_in)
        x = add(x, block_in)
    x = conv("conv_body", x, False)
    out = blob()
    layers.append(f"BinaryOp skip 2 1 {first} {x} {out}")
    x = out
    for name in ("conv_up1", "conv_up2"):
        up = blob()
        layers.append(f"Interp i_{name} 1 1 {x} {up} 0=1 1=2.000000e+00 2=2.000000e+00")
        x = conv(name, up, True)
    x = conv("conv_hr", x, True)
    x = conv("conv_last", x, False)
    layers[-1] = layers[-1].replace(f" {x} ", " output ")     # the blob the extractor asks for
    param = f"{prior.NCNN_MAGIC}\n{len(layers)} {blobs[0] + 1}\n" + "\n".join(layers) + "\n"
    (folder / "m.param").write_text(param)
    (folder / "m.bin").write_bytes(bytes(data))
    return folder / "m.param", folder / "m.bin"


@pytest.mark.parametrize("fp16", [True, False])
def test_ncnn_files_read_into_the_same_rrdbnet(tmp_path, fp16):
    net = _net()
    param, binf = write_ncnn(net, tmp_path, fp16)
    got = prior.load_ncnn_rrdbnet(param, binf)
    assert RRDBNet.shape_of(got.state_dict()) == {"n_blocks": 2, "feat": 8, "grow": 4}
    for k, v in net.state_dict().items():
        torch.testing.assert_close(got.state_dict()[k], v, atol=2e-3 if fp16 else 0, rtol=1e-3 if fp16 else 0)
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(got(x), net(x), atol=5e-3 if fp16 else 1e-5, rtol=1e-3)
        assert got(x).shape == (1, 3, 36, 44)
        torch.testing.assert_close(got.trunk(x), SIFE_of(net)(x), atol=5e-3 if fp16 else 1e-5, rtol=1e-3)


def SIFE_of(net: RRDBNet):
    from frfsr.models.sife import SIFE
    cfg = RRDBNet.shape_of(net.state_dict())
    sife = SIFE(cfg["n_blocks"], cfg["feat"], cfg["grow"]).eval()
    sife.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith(("conv_up", "conv_hr",
                                                                                            "conv_last"))})
    return sife


def test_our_output_equals_the_ncnn_package(tmp_path):
    ncnn = pytest.importorskip("ncnn")
    assert ncnn                                   # the test extra installs it
    net = _net(1)
    param, binf = write_ncnn(net, tmp_path, fp16=False)
    img = torch.rand(3, 12, 10)
    theirs = prior.ncnn_output(param, binf, img.numpy())
    with torch.no_grad():
        ours = prior.load_ncnn_rrdbnet(param, binf)(img[None])[0].numpy()
    assert theirs.shape == ours.shape == (3, 48, 40)
    assert np.abs(theirs - ours).max() < 1e-4


def test_damaged_or_foreign_ncnn_files_are_refused(tmp_path):
    param, binf = write_ncnn(_net(), tmp_path)
    text, data = param.read_text(), binf.read_bytes()
    with pytest.raises(ValueError, match="magic number"):
        prior.read_ncnn("123\n" + text.split("\n", 1)[1], data)
    with pytest.raises(ValueError, match="ends inside"):
        prior.read_ncnn(text, data[:-100])
    with pytest.raises(ValueError, match="bytes more"):
        prior.read_ncnn(text, data + b"\0" * 8)
    with pytest.raises(ValueError, match="quantised"):
        prior.read_ncnn(text, np.uint32(0x000D4B38).tobytes() + data[4:])
    with pytest.raises(ValueError, match="not part of an RRDBNet"):
        prior.read_ncnn(text.replace("Interp i_conv_up1", "Pooling p1"), data)
    layers = prior.read_ncnn(text.replace("2.000000e-01,1.000000e+00", "1.000000e+00,1.000000e+00", 1), data)
    with pytest.raises(ValueError, match="residual sums"):
        prior.ncnn_to_rrdbnet(layers)
    layers = prior.read_ncnn(text, data)
    with pytest.raises(ValueError, match="do not make an RRDBNet"):
        prior.ncnn_to_rrdbnet([ly for ly in layers if ly.name != "c_conv_hr"])


@pytest.mark.parametrize("wrapper", ["params_ema", "params", None])
def test_basicsr_pth_of_the_whole_rrdbnet_loads_and_fills_sife(tmp_path, wrapper):
    net = _net(2)
    sd = net.state_dict()
    torch.save({wrapper: sd} if wrapper else sd, tmp_path / "x4.pth")
    state = load_checkpoint(tmp_path / "x4.pth")
    again = RRDBNet.from_state_dict(state)          # the whole x4 net, upsampler included
    model = FRFSR(FRFSRConfig.tiny(sife_blocks=2, sife_feat=8, sife_grow=4))
    converted, report = convert_state_dict(state, "esrgan", model)
    assert all(k.startswith("sife.") for k in converted) and not report.missing
    model.load_state_dict(converted, strict=False)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.sife(x), again.trunk(x))


def test_the_compact_preset_takes_the_x4plus_trunk():
    """The preset of a model with the prior: the paper's SIFE shape, which is RRDBNet x4's trunk."""
    cfg = FRFSRConfig.preset("compact")
    full = RRDBNet()                                  # x4plus: 23 blocks, 64 features, growth 32
    assert RRDBNet.shape_of(full.state_dict()) == {"n_blocks": cfg.sife_blocks, "feat": cfg.sife_feat,
                                                  "grow": cfg.sife_grow}
    with torch.device("meta"):
        model = FRFSR(cfg)
    trunk = {k for k in full.state_dict() if not k.startswith(("conv_up", "conv_hr", "conv_last"))}
    assert {k.removeprefix("sife.") for k in model.state_dict() if k.startswith("sife.")} == trunk


def test_finetune_prior_trains_the_top_only(tmp_path):
    from safetensors.torch import load_file, save_file
    finetune = load_script("train", "finetune_prior")
    net = _net(3, n_blocks=3)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "p.safetensors"))
    out = tmp_path / "tuned.safetensors"
    assert finetune.main(["--prior", str(tmp_path / "p.safetensors"), "--out", str(out), "--steps", "2",
                          "--batch", "2", "--patch", "32", "--top-blocks", "1", "--photos", "camera", "coins",
                          "--eval-every", "0", "--lr", "1e-2"]) == 0
    tuned, before = load_file(str(out)), net.state_dict()
    for k, v in before.items():
        changed = not torch.equal(tuned[k], v)
        assert changed == k.startswith(("body.2.", "conv_body", "conv_up", "conv_hr", "conv_last")), k
    with pytest.raises(FileNotFoundError, match="no RRDBNet weights"):
        finetune.main(["--prior", str(tmp_path / "absent.safetensors"), "--out", str(out), "--eval-every", "0"])
    with pytest.raises(ValueError, match="--top-blocks must be in 0..3"):
        finetune.main(["--prior", str(tmp_path / "p.safetensors"), "--out", str(out), "--top-blocks", "4",
                       "--eval-every", "0"])


def test_the_prior_preset_holds_the_whole_x4plus_net():
    """``prior``: ``compact`` with SIFE's upsampler kept, so every x4plus tensor has its place."""
    cfg = FRFSRConfig.preset("prior")
    assert cfg.sife_upsampler and FRFSRConfig.preset("compact").sife_upsampler is False
    with torch.device("meta"):
        model, full = FRFSR(cfg), RRDBNet()
    assert {k.removeprefix("sife.") for k in model.state_dict() if k.startswith("sife.")} == set(full.state_dict())
    with pytest.raises(ValueError, match="sife_upsampler must be true or false"):
        FRFSRConfig.preset("prior", sife_upsampler="yes")


def test_a_model_with_the_upsampler_sees_the_priors_image(tmp_path):
    """With ``sife_upsampler`` the whole RRDBNet's weights load into SIFE (upsampler included,
    nothing dropped), the U-Net's head takes the prior's 4x image beside the upsampled LR (so the
    upsampler's weights change the result, and with the head's prior channels and the prior's
    share of the base at zero they do not), and the config survives saving and loading."""
    net = _net(5)
    torch.save({"params_ema": net.state_dict()}, tmp_path / "x4.pth")
    torch.manual_seed(0)
    model = FRFSR(FRFSRConfig.tiny(sife_blocks=2, sife_feat=8, sife_grow=4, sife_upsampler=True)).eval()
    converted, report = convert_state_dict(load_checkpoint(tmp_path / "x4.pth"), "esrgan", model)
    assert report.ok and not report.dropped and not report.missing, str(report)
    assert {"sife.conv_up1.weight", "sife.conv_last.bias"} <= set(converted)
    model.load_state_dict(converted, strict=False)
    lr, ref = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.sife.upsample(model.sife(lr)), net(lr))
        with_prior = model(lr, ref)
        model.sife.conv_last.bias.add_(0.5)                    # another prior image
        assert (model(lr, ref) - with_prior).abs().max() > 1e-4
        model.restoration.head.weight[:, 3:] = 0               # the head's prior channels and share at zero
        model.restoration.prior_mix.zero_()
        without = model(lr, ref)
        model.sife.conv_last.bias.sub_(0.5)
        torch.testing.assert_close(model(lr, ref), without)
        textures = model.align(model.match(lr, ref))
        with pytest.raises(ValueError, match="takes SIFE's 4x image"):
            model.restoration(lr, model.sife(lr), textures)
    model.save_pretrained(tmp_path / "m")
    again = FRFSR.from_pretrained(tmp_path / "m")
    assert again.config.sife_upsampler
    with torch.no_grad():
        torch.testing.assert_close(again(lr, ref), without)
    plain = FRFSR(FRFSRConfig.tiny(sife_blocks=2, sife_feat=8, sife_grow=4))
    converted, report = convert_state_dict(load_checkpoint(tmp_path / "x4.pth"), "esrgan", plain)
    assert len(report.dropped) == 8 and "sife.conv_up1.weight" not in converted      # SIFE without one drops it
    with pytest.raises(ValueError, match="has no upsampler"):
        plain.sife.upsample(plain.sife(lr))
    with pytest.raises(ValueError, match="no input for a prior image"):
        plain.restoration(lr, plain.sife(lr), plain.align(plain.match(lr, ref)), prior=net(lr))


def test_a_stage2_model_with_the_upsampler_gives_both_nets_the_priors_image():
    """Feature reuse on a model with ``sife_upsampler``: the frozen stage-1 net (``reuse_net``) and
    the stage-2 net both take the prior's 4x image, computed once per restore."""
    torch.manual_seed(2)
    model = FRFSR(FRFSRConfig.tiny(stage=2, sife_upsampler=True)).eval()
    assert model.reuse_net.takes_prior and model.restoration.takes_prior
    lr, ref = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 64, 64)
    calls = []
    model.sife.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        textures = model.align(model.match(lr, ref))
        out = model.restore(lr, textures)
        assert len(calls) == 1                                   # SIFE (and its upsampler) run once
        sife = model.sife(lr)
        prior_img = model.sife.upsample(sife)
        reused = model.reuse_net(lr, sife, textures, prior=prior_img)[1]
        torch.testing.assert_close(model.reuse_feature(lr, textures), reused)
        torch.testing.assert_close(out.sr, model.restoration(lr, sife, textures, reused, prior_img)[0])
