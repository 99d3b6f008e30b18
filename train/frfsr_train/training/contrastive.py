"""Contrastive training of the texture encoder from views with known correspondence.

The texture encoder (two VGG16-like trunks up to conv3_1, :class:`frfsr.models.texture_encoder.TextureEncoder`)
only feeds the argmax of the patch matching, so the restoration loss gives it no gradient.
Like C2-Matching's teacher, it is trained on its own, from pairs whose dense correspondence
is known: an LR view (bicubic-upsampled exactly as :meth:`frfsr.FRFSR.match` does) and a Ref
view of the same photo made by a known warp (:class:`frfsr_train.data.views.ViewPairDataset`).
With ``degradation: {kind: realworld}`` the LR views are made on the training device by
:class:`frfsr_train.data.realworld.RealWorldDegradation` (blur, resize, noise, JPEG) instead of
the bicubic ones, so that the LR trunk learns to match real, degraded inputs; the held-out
evaluation keeps the bicubic LRs, comparable across runs.

Objective: InfoNCE (every negative at once, one hyper-parameter: the temperature; C2-Matching
uses a margin triplet loss):

* features of both views at 1/4 resolution (the texture grid), L2-normalised per pixel;
* up to ``samples_per_image`` LR texture positions with a known correspondence are sampled
  per pair; the positive key is the Ref feature bilinearly sampled at the true position
  (renormalised);
* negatives: every Ref texture position of the same pair farther than ``neg_radius``
  texture pixels from the true position (the candidates the argmax really chooses among),
  and the positive keys of the other pairs in the batch;
* loss = cross-entropy of the positive among them, logits = cosine / ``temperature``.

Metric: :func:`matching_accuracy`, the fraction of LR texture positions whose 3x3-patch
argmax (:func:`frfsr.ops.patch_match`, as the model matches) lands within ``tol`` = 1
texture pixel (Chebyshev distance) of the true correspondence, over positions whose true
correspondence lies inside the Ref.

:func:`train_encoder` runs the training (Accelerate handles device and DDP) and writes
``texture_encoder.safetensors`` (``texture_encoder.*`` keys: load into an
:class:`frfsr.FRFSR` of the same config with ``load_state_dict(sd, strict=False)``) and
``encoder.json`` (model config, training config, held-out accuracy before / after).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from frfsr import ops
from frfsr.config import FRFSRConfig
from frfsr.models.texture_encoder import TextureEncoder

from .. import seeds
from .config import EncoderConfig

__all__ = ["PREFIX", "lr_upsample", "texture_coords", "contrastive_loss", "matching_accuracy",
           "evaluate_encoder", "model_config", "merge_config", "degradation_from_config", "encoder_state_dict",
           "load_encoder_weights", "learning_rate_schedule", "train_encoder"]

PREFIX = "texture_encoder."
"""Key prefix of the saved weights: the encoder's names inside an :class:`frfsr.FRFSR`."""


# ----------------------------------------------------------------------------- geometry
def lr_upsample(lr: torch.Tensor) -> torch.Tensor:
    """The LR upsampled x4 the way :meth:`frfsr.FRFSR.match` does it (torch bicubic)."""
    return F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)


def texture_coords(ref_coords: torch.Tensor, max_spread: float = 6.0) -> torch.Tensor:
    """HR-pixel correspondence (B, 2, H, W) -> texture-grid correspondence (B, 2, H/4, W/4).

    Texture cell i covers HR pixels 4i..4i+3 (centre 4i + 1.5), likewise in the Ref, so the
    cell's true position is the mean of its 4x4 Ref coordinates (exact for an affine map),
    minus 1.5, over 4. Cells with an unknown pixel or whose Ref coordinates spread over more
    than ``max_spread`` Ref pixels (torn apart by block shuffling) are NaN.
    """
    mean = F.avg_pool2d(ref_coords, 4)
    filled = ref_coords.nan_to_num(0.0)
    spread = (F.max_pool2d(filled, 4) + F.max_pool2d(-filled, 4)).amax(1, keepdim=True)
    out = (mean - 1.5) / 4
    return torch.where(spread <= max_spread, out, torch.full_like(out, float("nan")))


def _valid(tex: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) mask of finite texture coordinates inside a (H, W) texture grid."""
    x, y = tex[:, 0], tex[:, 1]
    return torch.isfinite(x) & torch.isfinite(y) & (x >= 0) & (y >= 0) & (x <= size[1] - 1) & (y <= size[0] - 1)


# ----------------------------------------------------------------------------- loss
def contrastive_loss(f_lr: torch.Tensor, f_ref: torch.Tensor, tex_coords: torch.Tensor, samples_per_image: int = 64,
                     temperature: float = 0.07, neg_radius: float = 1.5,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """InfoNCE loss of LR texture features ``f_lr`` (B, C, h, w) against Ref texture features
    ``f_ref`` (B, C, H, W) given the true positions ``tex_coords`` (B, 2, h, w; texture-grid
    (x, y) in the Ref, NaN = unknown; see :func:`texture_coords`). See the module docstring.

    Returns ``(loss, stats)``; stats: ``positives`` (number of sampled queries) and ``top1``
    (fraction whose positive beats every negative). Pairs without any known position add
    nothing; a batch without any gives a zero loss that still backpropagates.
    """
    q_all, k_all = F.normalize(f_lr, dim=1), F.normalize(f_ref, dim=1)
    b, c, hr_, wr_ = k_all.shape
    valid = _valid(tex_coords, (hr_, wr_))
    gy, gx = torch.meshgrid(torch.arange(hr_, device=f_ref.device, dtype=f_ref.dtype),
                            torch.arange(wr_, device=f_ref.device, dtype=f_ref.dtype), indexing="ij")
    cells = torch.stack([gx.flatten(), gy.flatten()], 1)                     # (H*W, 2)
    queries, keys, dense, owners = [], [], [], []
    for i in range(b):
        idx = valid[i].flatten().nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        pick = torch.randperm(idx.numel(), generator=generator)[:samples_per_image].to(idx.device)
        idx = idx[pick]
        q = q_all[i].flatten(1)[:, idx].t()                                 # (n, C)
        xy = tex_coords[i].flatten(1)[:, idx].t().to(f_ref.dtype)           # (n, 2)
        grid = torch.stack([2 * xy[:, 0] / max(wr_ - 1, 1) - 1, 2 * xy[:, 1] / max(hr_ - 1, 1) - 1], -1)
        k = F.grid_sample(k_all[i:i + 1], grid.view(1, 1, -1, 2), mode="bilinear", align_corners=True)
        k = F.normalize(k.view(c, -1).t(), dim=1)                            # (n, C)
        sim = q @ k_all[i].flatten(1) / temperature                          # (n, H*W)
        near = torch.cdist(xy, cells) < neg_radius
        dense.append(sim.masked_fill(near, float("-inf")))
        queries.append(q)
        keys.append(k)
        owners.append(torch.full((idx.numel(),), i, device=idx.device))
    if not queries:
        zero = (f_lr.sum() + f_ref.sum()) * 0.0
        return zero, {"positives": 0, "top1": float("nan")}
    q, k, own = torch.cat(queries), torch.cat(keys), torch.cat(owners)
    pos = (q * k).sum(1, keepdim=True) / temperature
    cross = (q @ k.t() / temperature).masked_fill(own[:, None] == own[None, :], float("-inf"))
    logits = torch.cat([pos, torch.cat(dense), cross], 1)
    loss = F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
    top1 = (logits[:, 1:].amax(1) < pos[:, 0]).float().mean().item()
    return loss, {"positives": int(len(q)), "top1": top1}


# ----------------------------------------------------------------------------- metric
@torch.no_grad()
def matching_accuracy(encoder: TextureEncoder, lr: torch.Tensor, ref: torch.Tensor, ref_coords: torch.Tensor,
                      tol: float = 1.0, patch_size: int = 3) -> dict:
    """How often the model's 3x3-patch argmax finds the true correspondence.

    ``lr`` (B, 3, h, w), ``ref`` (B, 3, H, W), ``ref_coords`` (B, 2, 4h, 4w) as from
    :class:`frfsr_train.data.views.ViewPairDataset`. A valid LR texture position (the centre of a
    full 3x3 query patch whose true position is known and inside the Ref's texture grid) is
    correct when the centre of its best Ref patch is within ``tol`` texture pixels
    (Chebyshev) of the true position. Returns ``accuracy`` (NaN when nothing is valid),
    ``correct``, ``total`` and ``mean_score`` (mean best-match cosine over all positions,
    what :attr:`frfsr.Correspondence.relevance` averages).
    """
    q = F.normalize(encoder.encode_lr(lr_upsample(lr)), dim=1)
    k = F.normalize(encoder.encode_ref(ref), dim=1)
    score, index = ops.patch_match(q, k, patch_size=patch_size)
    half, wk = patch_size // 2, k.shape[-1] - patch_size + 1
    kx = (index % wk + half).float()
    ky = torch.div(index, wk, rounding_mode="floor").float() + half
    tex = texture_coords(ref_coords.float())
    tex = tex[:, :, half:tex.shape[-2] - half, half:tex.shape[-1] - half]
    valid = _valid(tex, k.shape[-2:])
    err = torch.maximum((kx - tex[:, 0]).abs(), (ky - tex[:, 1]).abs())
    correct = int(((err <= tol) & valid).sum())
    total = int(valid.sum())
    return {"accuracy": correct / total if total else float("nan"), "correct": correct, "total": total,
            "mean_score": float(score.mean())}


def _stack(pairs: list[dict], keys=("lr", "ref", "ref_coords")) -> dict:
    return {key: torch.stack([p[key] for p in pairs]) for key in keys}


def _stack_with_hr(pairs: list[dict]) -> dict:
    return _stack(pairs, ("hr", "lr", "ref", "ref_coords"))


def degradation_from_config(config: EncoderConfig):
    """The :class:`frfsr_train.data.realworld.RealWorldDegradation` of ``config.degradation``,
    or None for ``kind: bicubic``."""
    from ..data.realworld import RealWorldDegradation
    g = config.degradation
    return RealWorldDegradation(g.options()) if g.kind == "realworld" else None


@torch.no_grad()
def evaluate_encoder(encoder: TextureEncoder, eval_sets: dict[str, list[dict]], batch_size: int = 8) -> dict:
    """:func:`matching_accuracy` (pooled over items) and mean match score for each named list
    of items (e.g. from :func:`frfsr_train.data.views.heldout_pairs`). Restores the train/eval mode."""
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    out = {}
    for name, pairs in eval_sets.items():
        correct = total = 0
        scores = []
        for s in range(0, len(pairs), batch_size):
            batch = {k: v.to(device) for k, v in _stack(pairs[s:s + batch_size]).items()}
            r = matching_accuracy(encoder, batch["lr"], batch["ref"], batch["ref_coords"])
            correct, total = correct + r["correct"], total + r["total"]
            scores.append(r["mean_score"] * len(batch["lr"]))
        out[name] = {"accuracy": correct / total if total else None, "positions": total,
                     "mean_score": sum(scores) / len(pairs)}
    encoder.train(was_training)
    return out


# ----------------------------------------------------------------------------- config and weights
def merge_config(config: dict | None) -> EncoderConfig:
    """The :class:`~frfsr_train.training.config.EncoderConfig` of a mapping (missing keys take
    their defaults); unknown sections or keys and bad values raise
    :class:`~frfsr_train.training.config.ConfigError` (a ``ValueError``)."""
    return EncoderConfig.from_dict(config or {})


def model_config(config: EncoderConfig) -> FRFSRConfig:
    """The :class:`frfsr.FRFSRConfig` of ``config.model`` (preset + overrides)."""
    return FRFSRConfig.preset(config.model.preset, **config.model.overrides)


def encoder_state_dict(encoder: TextureEncoder) -> dict[str, torch.Tensor]:
    """The encoder's weights under :data:`PREFIX` (contiguous CPU copies)."""
    return {PREFIX + k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}


def load_encoder_weights(encoder: TextureEncoder, path) -> None:
    """Load a safetensors file of ``texture_encoder.*`` keys (e.g. a previous run) strictly."""
    from safetensors.torch import load_file
    sd = load_file(str(path))
    encoder.load_state_dict({k[len(PREFIX):]: v for k, v in sd.items() if k.startswith(PREFIX)}, strict=True)


class _PairEncoder(nn.Module):
    """Both trunks in one ``forward`` so that DDP sees (and synchronises) the whole step."""

    def __init__(self, encoder: TextureEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, lr_up: torch.Tensor, ref: torch.Tensor):
        return self.encoder.encode_lr(lr_up), self.encoder.encode_ref(ref)


# ----------------------------------------------------------------------------- training
def learning_rate_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, steps: int):
    """Linear warm-up over ``warmup_steps`` (at least 1) to the optimiser's learning rate, then
    a cosine decay to 10 % of it at ``steps``; stepped once per optimiser step."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR
    warm = max(1, int(warmup_steps))
    floor = 0.1 * optimizer.param_groups[0]["lr"]
    return SequentialLR(optimizer, [LinearLR(optimizer, start_factor=1 / warm, end_factor=1.0, total_iters=warm - 1),
                                    CosineAnnealingLR(optimizer, T_max=max(1, steps - warm), eta_min=floor)],
                        milestones=[warm])


def train_encoder(config: EncoderConfig | dict | None, output_dir, max_steps: int | None = None, max_minutes: float | None = None,
                  photos: dict | None = None, eval_photos: dict | None = None,
                  log: Callable[[str], None] | None = None) -> dict:
    """Train a texture encoder contrastively and save it; returns the summary written to
    ``output_dir/encoder.json``.

    ``config``: an :class:`~frfsr_train.training.config.EncoderConfig` (``load_config(path,
    kind=EncoderConfig)``) or a mapping of its sections (missing keys take their defaults);
    ``max_steps`` and ``max_minutes`` override ``train.steps`` / ``train.max_minutes``. ``photos`` /
    ``eval_photos`` (name -> uint8 array) replace the skimage training photos / the held-out
    photos (tests). Weights and summary are also written at every evaluation, so a run
    stopped early leaves a usable result. Runs under ``accelerate launch`` (DDP) as well:
    the batch size is per process; evaluation and saving happen on the main process.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from safetensors.torch import save_file
    from torch.utils.data import DataLoader

    from ..data.views import HELDOUT_PHOTOS, TRAIN_PHOTOS, ViewPairDataset, heldout_pairs, load_photos

    cfg = config if isinstance(config, EncoderConfig) else merge_config(config)
    tc, dc, ec = cfg.train, cfg.data, cfg.eval
    if max_steps is not None or max_minutes is not None:
        tc = dataclasses.replace(tc, steps=tc.steps if max_steps is None else int(max_steps),
                                 max_minutes=tc.max_minutes if max_minutes is None else float(max_minutes))
        cfg = dataclasses.replace(cfg, train=tc)
    degrade = degradation_from_config(cfg)
    mcfg = model_config(cfg)
    out_dir = Path(output_dir)
    accelerator = Accelerator()
    say = log or accelerator.print
    set_seed(tc.seed)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)

    encoder = TextureEncoder(mcfg.vgg_widths)
    if tc.init:
        load_encoder_weights(encoder, tc.init)
    elif tc.tie_init:
        encoder.ref_trunk.load_state_dict(encoder.lr_trunk.state_dict())
    if photos is None:
        photos = load_photos(dc.photos or TRAIN_PHOTOS)
    leaked = set(photos) & set(HELDOUT_PHOTOS + ("cat",))
    if leaked and eval_photos is None:
        raise ValueError(f"training photos include held-out photo(s): {', '.join(sorted(leaked))}")
    steps, bs = tc.steps, tc.batch_size
    dataset = ViewPairDataset(photos, patch=dc.patch, ref_patch=dc.ref_patch,
                              length=max(1, steps) * bs * accelerator.num_processes, seed=tc.seed,
                              **dc.view_arguments())
    loader = DataLoader(dataset, batch_size=bs, shuffle=False, drop_last=True, num_workers=dc.num_workers,
                        collate_fn=_stack if degrade is None else _stack_with_hr)
    eval_sets = {}
    if accelerator.is_main_process:
        eval_sets = {kind: heldout_pairs(kind, patch=ec.patch, n=ec.n, seed=ec.seed, photos=eval_photos)
                     for kind in ec.kinds}

    model = _PairEncoder(encoder)
    optim = torch.optim.AdamW(encoder.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = learning_rate_schedule(optim, tc.warmup_steps, steps)
    model, optim, loader, sched = accelerator.prepare(model, optim, loader, sched)

    summary = {"model_config": mcfg.to_dict(), "config": cfg.to_dict(), "weights": "texture_encoder.safetensors",
               "key_prefix": PREFIX, "metric": "fraction of LR texture positions whose 3x3-patch argmax is within "
               "1 texture pixel (Chebyshev) of the true correspondence, held-out photos " + ", ".join(HELDOUT_PHOTOS),
               "steps": 0, "stopped_by": None}

    def save(step: int, final: bool) -> None:
        if not accelerator.is_main_process:
            return
        enc = accelerator.unwrap_model(model).encoder
        summary["heldout_after" if final else "heldout_latest"] = evaluate_encoder(enc, eval_sets)
        summary.update(steps=step, wall_minutes=(time.time() - start) / 60)
        save_file(encoder_state_dict(enc), str(out_dir / "texture_encoder.safetensors"),
                  metadata={"format": "pt", "frfsr_config": mcfg.to_json(), "steps": str(step)})
        (out_dir / "encoder.json").write_text(json.dumps(summary, indent=2) + "\n")

    start = time.time()
    if accelerator.is_main_process:
        summary["heldout_before"] = evaluate_encoder(encoder, eval_sets)
        say(f"held-out before training: {_fmt(summary['heldout_before'])}")
    history, step, logf = [], 0, None
    if accelerator.is_main_process:
        logf = open(out_dir / "log.jsonl", "w")
    model.train()
    gen = torch.Generator().manual_seed(seeds.mix_seed(seeds.SAMPLING, tc.seed, accelerator.process_index))
    for batch in loader:
        if step >= steps:
            break
        if degrade is not None:                  # real-world LR views, seeded by (seed, step, rank)
            from ..data.realworld import device_generator
            g = device_generator(batch["hr"].device,
                                 seeds.mix_seed(seeds.DEGRADATION, tc.seed, step, accelerator.process_index))
            with torch.no_grad():
                batch["lr"] = degrade(batch["hr"], generator=g, clean=batch["lr"])
        f_lr, f_ref = model(lr_upsample(batch["lr"]), batch["ref"])
        loss, stats = contrastive_loss(f_lr, f_ref, texture_coords(batch["ref_coords"]),
                                       samples_per_image=tc.samples_per_image, temperature=tc.temperature,
                                       neg_radius=tc.neg_radius, generator=gen)
        optim.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if tc.grad_clip:
            accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optim.step()
        sched.step()
        step += 1
        history.append(loss.item())
        if accelerator.is_main_process and (step % tc.log_every == 0 or step == 1):
            rec = {"step": step, "loss": history[-1], "top1": stats["top1"], "learning_rate": sched.get_last_lr()[0],
                   "minutes": (time.time() - start) / 60}
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            say(f"step {step}: loss {rec['loss']:.4f} top1 {rec['top1']:.3f} ({rec['minutes']:.1f} min)")
        if tc.eval_every and step % tc.eval_every == 0 and step < steps:
            save(step, final=False)
            if accelerator.is_main_process:
                say(f"step {step}: held-out {_fmt(summary['heldout_latest'])}")
            accelerator.wait_for_everyone()
        over = tc.max_minutes is not None and (time.time() - start) / 60 >= tc.max_minutes
        flag = accelerator.reduce(torch.tensor([float(over)], device=accelerator.device), reduction="sum")
        if float(flag) > 0:
            summary["stopped_by"] = "max_minutes"
            break
    summary["stopped_by"] = summary["stopped_by"] or "steps"
    summary["loss_first"] = sum(history[:20]) / max(1, len(history[:20]))
    summary["loss_last"] = sum(history[-20:]) / max(1, len(history[-20:]))
    summary.pop("heldout_latest", None)
    save(step, final=True)
    if accelerator.is_main_process:
        logf.close()
        say(f"held-out after {step} steps: {_fmt(summary['heldout_after'])}")
        say(f"saved {out_dir / 'texture_encoder.safetensors'} and {out_dir / 'encoder.json'}")
    accelerator.wait_for_everyone()
    return summary


def _fmt(results: dict) -> str:
    parts = []
    for kind, r in results.items():
        acc = "n/a" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        parts.append(f"{kind} acc {acc} score {r['mean_score']:.3f}")
    return "; ".join(parts)
