"""Fetch the natural photo sources of :mod:`frfsr_train.data.photos` into the cache folder.

    python train/fetch_photos.py                          # every source
    python train/fetch_photos.py --source wallpapers      # one (repeat --source for more)
    python train/fetch_photos.py --source wallpapers --deb plasma-workspace-wallpapers_5.27.5-2_all.deb
    python train/fetch_photos.py --source matplotlib --wheel matplotlib-3.11.2-...whl

Files go to ``$FRFSR_CACHE/photos`` (else ``$XDG_CACHE_HOME/frfsr/photos``, else
``~/.cache/frfsr/photos``), are verified against the sizes and sha256 recorded in
``frfsr_train.data.photos.SOURCES``, and are kept when already there (``--force`` fetches again).
Prints, per source, the training and held-out photos it got. Exit code 1 if a source failed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import frfsr  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from frfsr_train.data.photos import SOURCES, cache_dir, fetch, load_photo


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", action="append", choices=list(SOURCES), help="a source to fetch (default: all)")
    p.add_argument("--deb", help="the plasma-workspace-wallpapers .deb to read instead of `apt-get download`")
    p.add_argument("--wheel", help="a matplotlib wheel to read instead of the installed matplotlib")
    p.add_argument("--force", action="store_true", help="fetch again even where verified files are cached")
    args = p.parse_args(argv)
    archives = {"wallpapers": args.deb, "matplotlib": args.wheel}
    print(f"photo cache: {cache_dir()}")
    failed = 0
    for name in args.source or list(SOURCES):
        src = SOURCES[name]
        try:
            files = fetch(name, archive=archives.get(name), force=args.force)
        except (OSError, ValueError) as e:
            print(f"{name}: FAILED: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{name}: {len(files)} photos ({src.description})")
        for split, photos in (("train", src.train), ("held out", src.heldout)):
            if photos:
                sizes = ", ".join(f"{n} {load_photo(f'{name}:{n}').shape[1]}x{load_photo(f'{name}:{n}').shape[0]}"
                                  for n in photos)
                print(f"  {split}: {sizes}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
