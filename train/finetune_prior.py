"""Fine-tune the top of a pretrained RRDBNet x4 prior with L1, for fidelity: the last
``--top-blocks`` RRDB blocks, ``conv_body`` and the upsampler train, the rest stays frozen.

    python train/finetune_prior.py --steps 300 --out outputs/prior_l1.safetensors
    python train/finetune_prior.py --prior other_x4.safetensors --top-blocks 4 --steps 300 --out ...

The prior defaults to Real-ESRGAN x4plus as ``train/prior_rrdb.py`` converts it (from the cache).
Training pairs: random ``--patch`` crops of the training photos of every source
(:func:`frfsr_train.data.photos.train_photos`; photos wider than 1200 px at half size, as the held-out
scenes are), LR = PIL bicubic x1/4, saved as a JPEG of quality 30-95 with probability
``--jpeg-prob``. Every ``--eval-every`` steps: PSNR-Y of the x4 net alone on held-out crops
(clean and JPEG q70 LRs, :func:`frfsr_train.real_inputs.build_cases`). The output is an RRDBNet
safetensors file (BasicSR names) that ``init.sife`` takes.
"""
from __future__ import annotations

import argparse
import io
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

try:
    import frfsr  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prior_rrdb import load_prior  # noqa: E402

from frfsr._fs import atomic_file  # noqa: E402
from frfsr.metrics import psnr_y  # noqa: E402

EVAL_PHOTOS = ("skimage:coffee", "skimage:rocket", "wallpapers:ColorfulCups", "wallpapers:Path",
               "matplotlib:grace_hopper")


def training_photos(names=None) -> dict[str, np.ndarray]:
    from PIL import Image

    from frfsr_train.data.photos import load_photo, train_photos
    out = {}
    for n in names or train_photos():
        a = load_photo(n)
        if max(a.shape[:2]) > 1200:
            a = np.asarray(Image.fromarray(a).resize((a.shape[1] // 2, a.shape[0] // 2), Image.BICUBIC))
        out[n] = a
    return out


def sample_pair(photos: dict, patch: int, jpeg_prob: float, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """(LR, HR) float CHW in [0, 1] from a random crop of a random photo."""
    from PIL import Image
    a = photos[rng.choice(sorted(photos))]
    y, x = rng.randrange(a.shape[0] - patch + 1), rng.randrange(a.shape[1] - patch + 1)
    hr = Image.fromarray(a[y:y + patch, x:x + patch])
    lr = hr.resize((patch // 4, patch // 4), Image.BICUBIC)
    if rng.random() < jpeg_prob:
        buf = io.BytesIO()
        lr.save(buf, "JPEG", quality=rng.randint(30, 95))
        lr = Image.open(buf).convert("RGB")

    def chw(im):
        return torch.from_numpy(np.asarray(im, np.float32) / 255).permute(2, 0, 1)
    return chw(lr), chw(hr)


def trainable(net, top_blocks: int) -> list[torch.nn.Module]:
    if not 0 <= top_blocks <= len(net.body):
        raise ValueError(f"--top-blocks must be in 0..{len(net.body)}, got {top_blocks}")
    return [*net.body[len(net.body) - top_blocks:], net.conv_body, net.conv_up1, net.conv_up2, net.conv_hr,
            net.conv_last]


@torch.no_grad()
def heldout_psnr(net, cases) -> dict[str, float]:
    return {kind: float(np.mean([psnr_y(net(c.lr[None]).clamp(0, 1), c.hr[None]) for c in cases if c.kind == kind]))
            for kind in dict.fromkeys(c.kind for c in cases)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prior", type=Path, help="RRDBNet x4 safetensors (default: the converted x4plus in the cache)")
    p.add_argument("--out", type=Path, required=True, help="where to write the fine-tuned RRDBNet (.safetensors)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--top-blocks", type=int, default=4)
    p.add_argument("--lr", dest="learning_rate", type=float, default=1e-4, help="Adam learning rate")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=96)
    p.add_argument("--jpeg-prob", type=float, default=0.7)
    p.add_argument("--photos", nargs="+", help="training photos (default: every source's training photos)")
    p.add_argument("--eval-every", type=int, default=100, help="0: no held-out evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    a = p.parse_args(argv)
    if a.steps < 1 or a.batch < 1 or a.patch < 16 or a.patch % 4:
        p.error("--steps and --batch must be >= 1, --patch a multiple of 4 and >= 16")
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    net = load_prior(a.prior)
    net.requires_grad_(False)
    top = trainable(net, a.top_blocks)
    params = [q for m in top for q in m.parameters()]
    for q in params:
        q.requires_grad_(True)
    frozen = net.body[:len(net.body) - a.top_blocks]
    opt = torch.optim.Adam(params, lr=a.learning_rate)
    photos = training_photos(a.photos)
    cases = []
    if a.eval_every:
        from frfsr_train.real_inputs import build_cases
        cases = build_cases(photos=EVAL_PHOTOS, kinds=["clean", "jpeg70"], crops=2)
        print("step 0: held-out PSNR-Y alone", heldout_psnr(net, cases), flush=True)
    t0 = time.perf_counter()
    for step in range(1, a.steps + 1):
        lr, hr = map(torch.stack, zip(*[sample_pair(photos, a.patch, a.jpeg_prob, rng) for _ in range(a.batch)]))
        with torch.no_grad():
            first = net.conv_first(lr)
            x = frozen(first)
        for block in net.body[len(net.body) - a.top_blocks:]:
            x = block(x)
        x = first + net.conv_body(x)
        for conv in (net.conv_up1, net.conv_up2):
            x = F.leaky_relu(conv(F.interpolate(x, scale_factor=2, mode="nearest")), 0.2)
        loss = F.l1_loss(net.conv_last(F.leaky_relu(net.conv_hr(x), 0.2)), hr)
        if not torch.isfinite(loss):
            print(f"error: the loss is {loss.item()} at step {step}; nothing written", file=sys.stderr)
            return 1
        opt.zero_grad()
        loss.backward()
        opt.step()
        if a.eval_every and step % a.eval_every == 0:
            print(f"step {step}: l1 {loss.item():.4f}, {time.perf_counter() - t0:.0f} s, held-out PSNR-Y alone",
                  heldout_psnr(net, cases), flush=True)
    from safetensors.torch import save_file
    with atomic_file(a.out) as part:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(part),
                  metadata={"base": str(a.prior or "realesrgan-x4plus"), "steps": str(a.steps),
                            "top_blocks": str(a.top_blocks)})
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
