"""Load a script of benchmarks/ or train/ as a module, to call its functions from a test."""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def load_script(folder: str, name: str):
    """``<folder>/<name>.py`` of the repository as the module ``name`` (registered in
    sys.modules while it runs, so that dataclasses defined there can look their module up)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / folder / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as the module ``name``."""
    return load_script("benchmarks", name)
