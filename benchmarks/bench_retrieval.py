"""Reference retrieval on held-out photos: is the relevant Ref among the first 3 of 100?

For every held-out photo of :mod:`frfsr_train.data.photos` (never trained on), ``--crops`` HR
crops at the scene's scale (:mod:`frfsr_train.real_inputs`: the photo at half its resolution) give
the LRs (PIL bicubic x1/4); each LR's relevant Ref is another view of the same place
(:func:`frfsr_train.real_inputs.make_ref`: its field of view moved by a quarter of its side), in
turn at the same zoom, at half and twice the zoom, and rotated by 15 and 30 degrees. Each
LR's ``--candidates`` candidates are its relevant Ref and unrelated images: the relevant
Refs of the other held-out photos and distractors, crops of the training photos (at least
50). (The other views of the LR's own photo are left out: they show the same scene, often
overlapping the LR, and are as relevant as its own.) Per LR,
:meth:`frfsr.retrieval.RefIndex.select` ranks the candidates by descriptor and re-ranks the
best ``--rerank`` by the model's match relevance; a hit is the LR's own Ref among the first
1 / 3. Every candidate is described once (one index, a subset per LR).

    python benchmarks/bench_retrieval.py                       # every source, bundled weights
    python benchmarks/bench_retrieval.py --sources skimage     # offline: scikit-image's photos only
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

try:
    import frfsr  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))   # frfsr_train (training, data, evaluation)

REF_KINDS = ("clean", "ref_zoom0.5", "ref_zoom2", "ref_rot15", "ref_rot30")


@dataclass
class Query:
    photo: str
    crop: int
    kind: str              # the relevant Ref's kind (frfsr_train.real_inputs)
    lr: torch.Tensor       # (3, P/4, P/4)
    ref: int               # index of its relevant Ref among the candidates


def build(sources=None, crops: int = 5, patch: int = 128, candidates: int = 100, min_distractors: int = 50,
          seed: int = 0):
    """(queries, candidate tensors (3, H, W), candidate names): see the module docstring.
    ``candidates``: per LR (the distractors fill what the other photos' Refs leave)."""
    from frfsr_train.data.photos import heldout_photos, train_photos
    from frfsr_train.real_inputs import crop_positions, degrade_lr, load_scene, make_ref

    queries, cands, names = [], [], []
    for i, name in enumerate(heldout_photos(sources)):
        scene = load_scene(name)
        for j, (y, x) in enumerate(crop_positions(scene, patch, crops, seed)):
            kind = REF_KINDS[(i + j) % len(REF_KINDS)]
            lr = degrade_lr(scene.scene[:, y:y + patch, x:x + patch], "clean")
            queries.append(Query(name, j, kind, lr, len(cands)))
            cands.append(make_ref(scene, y, x, patch, kind, 1 if j % 2 == 0 else -1))
            names.append(f"{name}#{j}:{kind}")
    per_lr_others = len(cands) - max(sum(q.photo == p.photo for q in queries) for p in queries)
    n_distractors = max(min_distractors, candidates - 1 - per_lr_others)
    train = train_photos(sources)
    per_photo = -(-n_distractors // len(train))
    scenes = [load_scene(n) for n in train]
    sides = [min(patch, *s.scene.shape[-2:]) for s in scenes]          # small photos give smaller crops
    spots = [crop_positions(s, p, per_photo, seed + 1) for s, p in zip(scenes, sides)]
    for j in range(per_photo):                     # round robin: every photo's first crop first
        for s, p, pos in zip(scenes, sides, spots):
            if len(cands) - len(queries) >= n_distractors:
                break
            y, x = pos[j]
            cands.append(make_ref(s, y, x, p, "clean"))
            names.append(f"{s.name}#{j}:distractor")
    return queries, cands, names


@torch.inference_mode()
def evaluate(model, queries, cands, names, rerank: int = 8, k: int = 3, cache_dir=None):
    """Hit rates and times; ``rows`` per kind and overall."""
    from frfsr.retrieval import RefIndex
    t0 = time.perf_counter()
    full = RefIndex(model, cands, names, cache_dir=cache_dir)
    t_index = time.perf_counter() - t0
    photo_of = {q.ref: q.photo for q in queries}
    per = []
    for q in queries:
        keep = [i for i in range(len(cands)) if i == q.ref or photo_of.get(i) != q.photo]
        index, own = full.subset(keep), keep.index(q.ref)
        t0 = time.perf_counter()
        ranked = [i for i, _ in index.rank(q.lr)]
        t_rank = time.perf_counter() - t0
        t0 = time.perf_counter()
        sel = [s.index for s in index.select(q.lr, k, rerank)]
        t_select = time.perf_counter() - t0
        per.append({"photo": q.photo, "kind": q.kind, "desc_rank": ranked.index(own) + 1, "top1": sel[:1] == [own],
                    "top3": own in sel[:3], "t_rank": t_rank, "t_select": t_select, "n": len(keep),
                    "selected": [index.names[i] for i in sel]})
    return {"per": per, "t_index": t_index, "n_candidates": per[0]["n"], "n_described": len(cands)}


def rows(result) -> list[dict]:
    out = []
    per = result["per"]
    for kind in (*REF_KINDS, "all"):
        rs = [r for r in per if kind in ("all", r["kind"])]
        if not rs:
            continue
        n = len(rs)
        out.append({"kind": kind, "n": n, "desc_top1": sum(r["desc_rank"] == 1 for r in rs) / n,
                    "desc_top3": sum(r["desc_rank"] <= 3 for r in rs) / n, "top1": sum(r["top1"] for r in rs) / n,
                    "top3": sum(r["top3"] for r in rs) / n,
                    "t_rank": sum(r["t_rank"] for r in rs) / n, "t_select": sum(r["t_select"] for r in rs) / n})
    return out


def markdown(result, label: str) -> str:
    lines = ["| weights | relevant Ref | LRs | candidates | descriptor top-1 / top-3 | + re-rank top-1 / top-3 "
             "| s per LR: rank / rank + re-rank |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows(result):
        lines.append(f"| {label} | {r['kind']} | {r['n']} | {result['n_candidates']} | "
                     f"{100 * r['desc_top1']:.0f} % / {100 * r['desc_top3']:.0f} % | "
                     f"{100 * r['top1']:.0f} % / {100 * r['top3']:.0f} % | {r['t_rank']:.3f} / {r['t_select']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from frfsr import FRFSR
    from frfsr.devices import cpu_name
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="frfsr-default", help="weights (a folder, 'frfsr-default' or a Hub id)")
    ap.add_argument("--sources", nargs="+", help="photo sources (default: all; see frfsr_train.data.photos)")
    ap.add_argument("--crops", type=int, default=5, help="LR crops per held-out photo")
    ap.add_argument("--patch", type=int, default=128, help="HR crop side (the Refs are about this size)")
    ap.add_argument("--candidates", type=int, default=100, help="candidates per LR (at least 50 distractors)")
    ap.add_argument("--rerank", type=int, nargs="+", default=[0, 3, 8], help="candidates re-ranked by the match "
                    "(a row group per value)")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--verbose", action="store_true", help="list the LRs whose own Ref was not selected first")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = FRFSR.from_pretrained(args.model).eval()
    queries, cands, names = build(args.sources, args.crops, args.patch, args.candidates)
    for i, rerank in enumerate(args.rerank):
        result = evaluate(model, queries, cands, names, rerank=rerank)
        table = markdown(result, f"{args.model}, re-rank {rerank}")
        print(table if i == 0 else table.split("\n", 2)[2])
        if args.verbose:
            for r in result["per"]:
                if not r["top1"]:
                    print(f"  {r['photo']} {r['kind']}: descriptor rank {r['desc_rank']}, selected {r['selected']}")
    cmd = "python benchmarks/bench_retrieval.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"\n`{cmd.strip()}`: {len(queries)} LRs ({args.patch // 4}x{args.patch // 4}), "
          f"{result['n_candidates']} candidates each ({len(cands) - len(queries)} distractors; {len(cands)} images "
          f"described once), describing them: {result['t_index']:.1f} s; "
          f"{cpu_name()}, {torch.get_num_threads()} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
