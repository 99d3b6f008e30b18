"""Training-step throughput of frfsr's stage-1 (or stage-2) step, as ``train/stage1.py`` runs it.

Times :meth:`frfsr_train.training.Trainer.train_step` (forward: match -> align -> restore, L1
loss, backward, Adam step, scheduler step) on random batches of ``--batch`` HR patches of
``--patch`` pixels (LR = patch/4, Ref = patch), after ``--warmup`` steps; reports the median
step time and samples/s (x processes when run under ``accelerate launch``) and the peak
GPU memory. The paper's setting is batch 9, 160x160:

    python benchmarks/bench_train.py                                  # paper preset, batch 9, 160x160, fp32
    python benchmarks/bench_train.py --precision bf16
    python benchmarks/bench_train.py --smoke                          # tiny model on the CPU, 2 steps
    python benchmarks/bench_train.py --stage 2                        # the feature-reuse step with all losses

Stage 2 builds a random stage-1 export of the same preset first and times steps past the
L1 warm-up (perceptual + WGAN-GP + discriminator step).

``--official-port PATH`` (with ``FRFSR_OFFICIAL_SRC`` set, as for bench_inference.py) also
times, in the same process and on the same batch, the released architecture's stage-1
step as its ``RefRestorationModel.optimize_parameters`` runs it in the L1 phase: texture
encoder, correspondence (per-sample loop), SIFE and restoration forward, L1, backward,
Adam on the restoration net's four parameter groups. The port supplies only the
deformable convolution's forward; its backward here recomputes the sampled columns and
differentiates that forward, as the release's compiled backward also recomputes them. The
ratio of the two is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))   # frfsr_train (training, data, evaluation)
from frfsr import FRFSR, FRFSRConfig, ops  # noqa: E402
from frfsr_train.training.config import TrainConfig  # noqa: E402


def make_config(args, out: Path, stage1_dir: Path | None) -> TrainConfig:
    d = {"stage": args.stage,
         "data": {"root": "unused", "patch": args.patch, "batch_size": args.batch, "num_workers": 0},
         "loss": {"l1_warmup_steps": 0},
         "train": {"output_dir": str(out), "log_with": [], "max_steps": 10 ** 9, "ops_backend": args.ops_backend}}
    if args.stage == 1:
        d["model"] = {"preset": args.preset}
    else:
        d["init"] = {"stage1": str(stage1_dir)}
    return TrainConfig.from_dict(d)


def official_step(port_path: str, device: torch.device, batch: dict, precision: str):
    """A callable doing one stage-1 training step of the released architecture (L1 phase)."""
    from benchmarks.bench_inference import load_official
    port = load_official(port_path)
    mods = port.load_official()
    ext = sys.modules["_ext"]              # the port supplies the DCN forward only; training needs its backward

    def dcn_backward(inp, weight, bias, offset, mask, grad_out, *geometry):
        # like the release's compiled backward, it recomputes the sampled columns, then
        # differentiates the port's forward
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in (inp, offset, mask, weight, bias)]
            out = port._dcn_forward(leaves[0], leaves[3], leaves[4], leaves[1], leaves[2], *geometry)
            return torch.autograd.grad(out, leaves, grad_out)
    ext.dcn_v2_backward = dcn_backward
    m = port.OfficialFRFSR(mods).to(device).train()
    groups = {"g": [], "offset": [], "small": [], "medium": []}
    for name, v in m.net_g.named_parameters():          # the release's grouping by name
        key = "g" if "offset" not in name else "small" if "small" in name else "medium" if "medium" in name else "offset"
        groups[key].append(v)
    lrs = {"g": 1e-4, "offset": 1e-4, "small": 1e-6, "medium": 1e-5}
    opt = torch.optim.Adam([{"params": v, "lr": lrs[k]} for k, v in groups.items()], lr=1e-4, betas=(0.9, 0.999))
    lq, gt, ref = batch["lr"], batch["hr"], batch["ref"]
    up = torch.nn.functional.interpolate(lq, size=gt.shape[-2:], mode="bicubic", align_corners=False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            feats = m.net_extractor(up, ref)
            pre_offset, ref_feat = m.net_map(feats, ref)
            out = m.net_g(lq, m.sisr(lq), pre_offset, ref_feat)
            loss = (out.float() - gt).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.detach()
    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="paper", choices=["paper", "tiny"])
    p.add_argument("--stage", type=int, default=1, choices=[1, 2])
    p.add_argument("--batch", type=int, default=9)
    p.add_argument("--patch", type=int, default=160, help="HR patch side (multiple of 4, >= 60)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--precision", default="no", choices=["no", "bf16", "fp16"], help="Accelerate mixed precision")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    p.add_argument("--no-tf32", dest="tf32", action="store_false", help="fp32 matmuls/convs without TF32 on CUDA")
    p.add_argument("--ops-backend", choices=list(ops.BACKENDS), help="frfsr.ops backend")
    p.add_argument("--smoke", action="store_true", help="tiny model, batch 2, 64x64, 2 steps, CPU")
    p.add_argument("--official-port", default=os.environ.get("FRFSR_OFFICIAL_PORT"),
                   help="path of the oracle port of the authors' release (needs FRFSR_OFFICIAL_SRC): "
                        "its training step is timed beside ours")
    p.add_argument("--json", help="also write the result to this JSON file")
    args = p.parse_args(argv)
    if args.smoke:
        args.preset, args.batch, args.patch, args.steps, args.warmup, args.device = "tiny", 2, 64, 2, 1, "cpu"
    if args.official_port and (args.stage != 1 or args.preset != "paper"):
        raise SystemExit("--official-port compares the paper preset's stage-1 step only")
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cudnn.benchmark = True

    import logging
    import warnings
    logging.getLogger("frfsr_train.training.build").setLevel(logging.ERROR)     # random-weight notices
    warnings.filterwarnings("ignore", message="PerceptualLoss uses a VGG19 with random weights")
    from accelerate import Accelerator
    from frfsr_train.training import Trainer

    with tempfile.TemporaryDirectory(prefix="frfsr-bench-") as tmp:
        tmp = Path(tmp)
        stage1 = None
        if args.stage == 2:
            stage1 = FRFSR(FRFSRConfig.preset(args.preset)).save_pretrained(tmp / "stage1")
        cfg = make_config(args, tmp / "run", stage1)
        acc = Accelerator(cpu=args.device == "cpu", mixed_precision=args.precision)
        trainer = Trainer(cfg, accelerator=acc)
        dev = acc.device
        g = torch.Generator().manual_seed(0)
        hr = torch.rand(args.batch, 3, args.patch, args.patch, generator=g)
        batch = {"hr": hr.to(dev), "lr": torch.nn.functional.avg_pool2d(hr, 4).to(dev),
                 "ref": torch.rand(args.batch, 3, args.patch, args.patch, generator=g).to(dev)}

        def sync():
            if dev.type == "cuda":
                torch.cuda.synchronize()

        for _ in range(args.warmup):
            trainer.train_step([batch])
        sync()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            logs = trainer.train_step([batch])
            sync()
            times.append(time.perf_counter() - t)
        assert all(torch.isfinite(v).all() for v in logs.values()), logs
        step_s = statistics.median(times)
        official_s = None
        if args.official_port:
            step = official_step(args.official_port, dev, batch, args.precision)
            for _ in range(args.warmup):
                step()
            sync()
            otimes = []
            for _ in range(args.steps):
                t = time.perf_counter()
                loss = step()
                sync()
                otimes.append(time.perf_counter() - t)
            assert torch.isfinite(loss), loss
            official_s = statistics.median(otimes)
        result = {
            "stage": args.stage, "preset": args.preset, "batch": args.batch, "patch": args.patch,
            "precision": args.precision, "tf32": bool(args.tf32 and dev.type == "cuda"),
            "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
            "processes": acc.num_processes, "steps": args.steps, "median_step_ms": step_s * 1e3,
            "samples_per_s": args.batch * acc.num_processes / step_s,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if dev.type == "cuda" else None,
            "torch": torch.__version__,
        }
        if official_s is not None:
            result.update(released_median_step_ms=official_s * 1e3, released_samples_per_s=args.batch / official_s,
                          speedup=official_s / step_s)
    if acc.is_main_process:
        print(f"stage-{args.stage} training step, {args.preset} preset, batch {args.batch} x {args.patch}x{args.patch}, "
              f"{args.precision} on {result['device']} x{result['processes']}: "
              f"{result['median_step_ms']:.1f} ms/step, {result['samples_per_s']:.2f} samples/s"
              + (f", peak {result['peak_mem_gib']:.2f} GiB" if result["peak_mem_gib"] is not None else ""))
        if official_s is not None:
            print(f"released architecture, same batch and precision, one process: {official_s * 1e3:.1f} ms/step, "
                  f"{result['released_samples_per_s']:.2f} samples/s; ours/released samples/s: {result['speedup']:.2f}x")
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
