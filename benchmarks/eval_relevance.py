"""Ref relevance on held-out photos: does the low-relevance warning tell relevant Refs from unrelated ones?

Pairs from :mod:`frfsr_train.real_inputs` (the held-out photos of every photo source that is
fetched; scikit-image's are always there): every relevant kind (another view at the same
zoom with a clean, JPEG or blurred and noisy LR, a Ref at half or twice the zoom, rotated
15 or 30 degrees), the LR as its own Ref (``self``), and unrelated Refs: the kind
``unrelated`` (the same crop of the next photo) and ``unrelated (all)``, every clean,
JPEG-q50 and blurred LR against the same-zoom Ref of the same crop of every other photo.
The relevance is :attr:`frfsr.Correspondence.relevance` (what the pipeline warns on).

Prints, as markdown: per kind the pairs, the median relevance (5th-95th percentile) and how
often the warning fires (relevance below the threshold); the ROC AUC of relevant against
unrelated pairs (``self`` in neither); and the fire rates over a range of thresholds.

    python benchmarks/eval_relevance.py                           # bundled weights, crop seeds 0 and 1
    python benchmarks/eval_relevance.py --sources skimage --crops 2 --seeds 0
    python benchmarks/eval_relevance.py --weights outputs/run/final --threshold 0.5 --json rel.json
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

try:
    import frfsr  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))   # frfsr_train (training, data, evaluation)

from frfsr_train import real_inputs
from frfsr.devices import cpu_name

#: Kinds whose Ref shows the LR's scene.
RELEVANT = tuple(k for k in real_inputs.KINDS if k not in ("self", "unrelated"))
#: LR kinds matched against every other photo's Ref for ``unrelated (all)``.
ALL_UNRELATED_LRS = ("clean", "jpeg50", "blur_noise")
UNRELATED_ALL = "unrelated (all)"


def roc_auc(positive, negative) -> float:
    """Probability that a random positive scores above a random negative (ties count half):
    the area under the ROC curve of the score as a detector of positives."""
    p = torch.as_tensor(positive, dtype=torch.float64)[:, None]
    n = torch.as_tensor(negative, dtype=torch.float64)[None]
    return float((p > n).double().mean() + 0.5 * (p == n).double().mean())


def available_sources(sources=None) -> tuple[list[str], list[str]]:
    """(fetched, missing) photo sources among ``sources`` (default: all)."""
    from frfsr_train.data.photos import SOURCES, is_fetched
    names = list(SOURCES) if not sources else list(sources)
    return [s for s in names if is_fetched(s)], [s for s in names if not is_fetched(s)]


@torch.inference_mode()
def relevances(model, sources, patch: int = real_inputs.DEFAULT_PATCH, crops: int = real_inputs.DEFAULT_CROPS,
               seeds=(0,), progress=None) -> list[dict]:
    """``{"seed", "photo", "crop", "kind", "ref_photo", "relevance"}`` for every pair (see the
    module docstring)."""
    dev, dtype = model.device, model.dtype
    out = []

    def rel(lr, ref):
        return float(model.match(lr[None].to(dev, dtype), ref).relevance[0])

    for seed in seeds:
        cases = real_inputs.build_cases(patch=patch, crops=crops, seed=seed, sources=sources)
        for i, c in enumerate(cases):
            out.append({"seed": seed, "photo": c.photo, "crop": c.crop, "kind": c.kind, "ref_photo": c.ref_photo,
                        "relevance": rel(c.lr, c.ref[None].to(dev, dtype))})
            if progress is not None:
                progress(f"seed {seed}: {i + 1}/{len(cases)} pairs")
        refs = {(c.photo, c.crop): model.encode_refs(c.ref[None].to(dev, dtype)) for c in cases if c.kind == "clean"}
        lrs = [c for c in cases if c.kind in ALL_UNRELATED_LRS]
        for i, c in enumerate(lrs):
            for (photo, crop), ref in refs.items():
                if photo != c.photo and crop == c.crop:
                    out.append({"seed": seed, "photo": c.photo, "crop": c.crop, "kind": UNRELATED_ALL,
                                "lr_kind": c.kind, "ref_photo": photo, "relevance": rel(c.lr, ref)})
            if progress is not None:
                progress(f"seed {seed}: unrelated (all) for {i + 1}/{len(lrs)} LRs")
    return out


def summarise(rows: list[dict], threshold: float) -> dict:
    """Per kind: pairs, median, 5th / 95th percentile, fire rate; overall: ROC AUC and the fire
    rates of relevant and unrelated (both unrelated kinds) pairs at ``threshold``."""
    kinds = [k for k in (*real_inputs.KINDS, UNRELATED_ALL) if any(r["kind"] == k for r in rows)]
    per_kind = []
    for k in kinds:
        v = torch.tensor([r["relevance"] for r in rows if r["kind"] == k], dtype=torch.float64)
        q = torch.quantile(v, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)).tolist()
        per_kind.append({"kind": k, "n": len(v), "p5": q[0], "median": q[1], "p95": q[2],
                         "fires": float((v < threshold).double().mean())})
    pos = [r["relevance"] for r in rows if r["kind"] in RELEVANT]
    neg = [r["relevance"] for r in rows if r["kind"] in ("unrelated", UNRELATED_ALL)]
    fire = lambda vals, t: float((torch.tensor(vals) < t).double().mean()) if vals else float("nan")  # noqa: E731
    sweep = [{"threshold": t, "unrelated": fire(neg, t), "relevant": fire(pos, t)}
             for t in [round(0.40 + 0.01 * i, 2) for i in range(13)]]
    return {"threshold": threshold, "per_kind": per_kind, "n_relevant": len(pos), "n_unrelated": len(neg),
            "auc": roc_auc(pos, neg) if pos and neg else float("nan"),
            "fires_unrelated": fire(neg, threshold), "fires_relevant": fire(pos, threshold), "sweep": sweep}


_LABELS = {**real_inputs._KIND_LABELS, UNRELATED_ALL: "Ref of the same crop of every other photo (clean, JPEG q50, "
                                                      "blurred LRs)"}


def markdown(summary: dict, command: str) -> str:
    t = summary["threshold"]
    lines = [f"| kind | Ref | pairs | relevance: median (5-95 %) | warning fires (< {t:g}) |", "|---|---|---:|---:|---:|"]
    for r in summary["per_kind"]:
        lines.append(f"| `{r['kind']}` | {_LABELS.get(r['kind'], r['kind'])} | {r['n']} | {r['median']:.2f} "
                     f"({r['p5']:.2f}-{r['p95']:.2f}) | {100 * r['fires']:.1f} % |")
    lines += ["", f"ROC AUC, relevant ({summary['n_relevant']} pairs) vs unrelated ({summary['n_unrelated']}): "
              f"**{summary['auc']:.3f}**; at {t:g} the warning fires for **{100 * summary['fires_unrelated']:.1f} %** "
              f"of unrelated and **{100 * summary['fires_relevant']:.1f} %** of relevant pairs. `{command}`", "",
              "| threshold | " + " | ".join(f"{s['threshold']:.2f}" for s in summary["sweep"]) + " |",
              "|---|" + "---:|" * len(summary["sweep"]),
              "| fires, unrelated | " + " | ".join(f"{100 * s['unrelated']:.1f} %" for s in summary["sweep"]) + " |",
              "| fires, relevant | " + " | ".join(f"{100 * s['relevant']:.1f} %" for s in summary["sweep"]) + " |"]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default="default", help="a model folder / Hub repo id, or 'default' (bundled)")
    p.add_argument("--sources", nargs="+", metavar="SRC",
                   help="photo sources (default: every one that is fetched; see frfsr_train.data.photos)")
    p.add_argument("--patch", type=int, default=real_inputs.DEFAULT_PATCH, help="HR crop side (default: %(default)s)")
    p.add_argument("--crops", type=int, default=real_inputs.DEFAULT_CROPS, help="crops per photo (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="crop seeds (default: 0 1)")
    p.add_argument("--threshold", type=float, default=None,
                   help="relevance below which the warning fires (default: the weights' config.relevance_threshold)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", metavar="PATH", help="also write every pair's relevance and the summary as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sources, missing = available_sources(args.sources)
    if missing:
        print(f"left out (not fetched: python train/fetch_photos.py --source NAME): {', '.join(missing)}",
              file=sys.stderr)
    if not sources:
        p.exit(2, "eval_relevance: error: no photo source is fetched\n")
    t0 = time.perf_counter()
    model = real_inputs._load(args.weights, args.device)
    last = [t0]

    def progress(msg):
        if time.perf_counter() - last[0] > 20:
            last[0] = time.perf_counter()
            print(f"  {msg}, {last[0] - t0:.0f} s", file=sys.stderr, flush=True)

    try:
        rows = relevances(model, sources, args.patch, args.crops, args.seeds, progress)
    except ValueError as e:
        p.exit(2, f"eval_relevance: error: {e}\n")
    threshold = model.config.relevance_threshold if args.threshold is None else args.threshold
    summary = summarise(rows, threshold)
    command = ("python benchmarks/eval_relevance.py " + " ".join(shlex.quote(a) for a in argv)).strip()
    print(markdown(summary, command))
    seconds = time.perf_counter() - t0
    photos = sorted({r["photo"] for r in rows})
    print(f"\n({len(photos)} held-out photos of {', '.join(sources)} x {args.crops} crops x seeds "
          f"{' '.join(map(str, args.seeds))}, HR {args.patch}; {seconds:.0f} s on {cpu_name()}, "
          f"{torch.get_num_threads()} threads)", file=sys.stderr)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"summary": summary, "pairs": rows, "command": command,
                                               "photos": photos, "sources": sources}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
