"""Dependencies that tell the truth: the core list in pyproject.toml is what inference imports,
training's extra what training imports, and the ComfyUI requirements.txt what the node pack
imports; nothing is declared that nothing imports; and inference runs with the training-only
packages made unimportable."""
import ast
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# distribution name -> the module it installs, where the two differ
MODULE_OF = {"huggingface-hub": "huggingface_hub", "pillow": "PIL", "pypng": "png", "pyyaml": "yaml",
             "scikit-image": "skimage"}
# imported only inside a try / where available: the fused kernels, LPIPS in evaluation, a free-RAM probe,
# matplotlib where it holds the sample photo to fetch (or its wheel is passed), and ComfyUI's own
# modules (the node pack runs inside ComfyUI)
OPTIONAL = {"triton", "lpips", "psutil", "matplotlib", "comfy", "comfy_api", "folder_paths", "server", "comfy_execution",
            "nodes"}
TRAINING_ONLY = ("train/",)
# modules of an extra: imported lazily by the files named, which say which extra to install
EXTRA_ONLY = {"av": ("video", ("frfsr/video.py",)), "ncnn": ("prior", ("train/prior_rrdb.py",))}
# imported by an inference module only where several processes run (accelerate launch / torchrun)
MULTI_PROCESS_ONLY = {"accelerate": ("frfsr/batch.py",)}


def _inference_file(module: str, path: str) -> bool:
    return not path.startswith(TRAINING_ONLY) and path not in MULTI_PROCESS_ONLY.get(module, ())


def _names(reqs) -> set[str]:
    out = set()
    for r in reqs:
        name = re.split(r"[<>=!~;\[ ]", r.strip(), maxsplit=1)[0].lower()
        if name and not name.startswith("#") and name != "frfsr":
            out.add(MODULE_OF.get(name, name.replace("-", "_")))
    return out


def _imports(paths) -> dict[str, set[str]]:
    """Top-level third-party module -> the files that import it (absolute imports only)."""
    std = set(sys.stdlib_module_names)
    found: dict[str, set[str]] = {}
    for path in paths:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for m in mods:
                top = m.split(".")[0]
                if top not in std and top not in ("frfsr", "frfsr_nodes", "frfsr_train", "__future__"):
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _files(*folders):
    return [p for f in folders for p in sorted((ROOT / f).rglob("*.py"))]


def test_core_dependencies_are_what_inference_imports():
    """The core list and the torch extra (torch is kept out of the core list, as out of
    requirements.txt: ComfyUI brings its own torch build)."""
    core = _names(PYPROJECT["project"]["dependencies"]) | _names(PYPROJECT["project"]["optional-dependencies"]["torch"])
    inference = {m: f for m, f in _imports(_files("frfsr")).items() if any(_inference_file(m, x) for x in f)}
    undeclared = set(inference) - core - OPTIONAL - set(EXTRA_ONLY)
    assert not undeclared, {m: sorted(inference[m]) for m in undeclared}
    unused = core - set(inference)
    assert not unused, f"declared but imported by no inference module: {sorted(unused)}"
    assert not {"accelerate", "yaml", "kornia", "xformers"} & core


def test_training_extra_is_what_training_imports():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert "xformers" not in extras                       # FRFSR has no attention (README)
    core, train = _names(PYPROJECT["project"]["dependencies"]) | _names(extras["torch"]), _names(extras["train"])
    used = _imports(_files("frfsr", "train"))
    scripts = {p.stem for p in (ROOT / "train").glob("*.py")}         # train/ scripts import one another
    extra = set(used) - OPTIONAL - set(EXTRA_ONLY) - scripts - core - train
    assert not extra, sorted(extra)
    assert train <= set(used), f"in the train extra but imported nowhere: {sorted(train - set(used))}"
    assert "frfsr[train]" in extras["test"]


def test_comfyui_requirements_list_every_module_the_pack_imports():
    reqs = _names((ROOT / "requirements.txt").read_text().splitlines())
    used = {m: f for m, f in _imports(_files("frfsr_nodes", "frfsr")).items()
            if any(x.startswith("frfsr_nodes") or _inference_file(m, x) for x in f)}
    missing = set(used) - reqs - OPTIONAL - set(EXTRA_ONLY) - {"torch"}   # ComfyUI ships its own torch build
    assert not missing, {m: sorted(used[m]) for m in missing}
    assert "torch" not in reqs
    # the package's own list is the same (the Comfy Registry reads that one)
    assert reqs == _names(PYPROJECT["project"]["dependencies"])


def test_extras_declare_what_their_modules_import():
    """Each extra-only module is declared in its extra (and in the test extra, so CI runs its
    tests), is imported only by the files that belong to it, and only lazily (inside a
    function, so ``import frfsr.video`` works without it)."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    used = _imports(_files("frfsr", "frfsr_nodes", "train"))
    for module, (extra, owners) in EXTRA_ONLY.items():
        assert module in _names(extras[extra]), (module, extra)
        assert f"frfsr[{extra}]" in extras["test"], extra
        assert used.get(module, set()) <= set(owners), sorted(used.get(module, set()) - set(owners))
        for owner in owners:
            tree = ast.parse((ROOT / owner).read_text())
            top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
            assert not any(module in (a.name.split(".")[0] for a in n.names) if isinstance(n, ast.Import)
                           else (n.module or "").split(".")[0] == module for n in top), f"{owner} imports {module} at top"


def test_inference_runs_without_the_training_packages(tmp_path):
    """accelerate, kornia and xformers unimportable, and yaml refused to frfsr's own modules
    (huggingface_hub needs it for model cards): the package imports, the pipeline runs and the
    CLI saves and upscales, one file and a folder."""
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        BLOCKED = {{"accelerate", "kornia", "xformers"}}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                top = name.split(".")[0]
                if top in BLOCKED:
                    raise ImportError(f"{{name}} is not installed (blocked)")
                if top == "yaml":
                    f = sys._getframe(1)
                    while f and f.f_globals.get("__name__", "").startswith(("importlib", "_frozen")):
                        f = f.f_back
                    if f and f.f_globals.get("__name__", "").startswith("frfsr"):
                        raise ImportError(f"frfsr imported yaml from {{f.f_globals['__name__']}}")
                return None
        sys.meta_path.insert(0, Block())
        import numpy as np, torch
        from PIL import Image
        from frfsr import FRFSR, FRFSRConfig, FRFSRPipeline, cli
        import frfsr.convert, frfsr.demo, frfsr.image_files, frfsr.metrics, frfsr_nodes.nodes
        FRFSR(FRFSRConfig.tiny()).save_pretrained(r"{tmp_path}/m")
        pipe = FRFSRPipeline.from_pretrained(r"{tmp_path}/m")
        pipe.relevance_threshold = None
        assert pipe(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 32, 32), output_type="pt").shape == (1, 3, 64, 64)
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(r"{tmp_path}/lr.png")
        code = cli.main(["upscale", r"{tmp_path}/lr.png", "--ref", r"{tmp_path}/lr.png", "-o", r"{tmp_path}/sr.png",
                         "--model", r"{tmp_path}/m", "--no-progress", "--dtype", "float32"])
        assert code == 0 and Image.open(r"{tmp_path}/sr.png").size == (64, 64)
        import os
        os.makedirs(r"{tmp_path}/lrs")
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(r"{tmp_path}/lrs/a.png")
        code = cli.main(["upscale", r"{tmp_path}/lrs", "--ref", r"{tmp_path}/lr.png", "-o", r"{tmp_path}/out",
                         "--model", r"{tmp_path}/m", "--no-progress", "--dtype", "float32"])
        assert code == 0 and Image.open(r"{tmp_path}/out/a.png").size == (64, 64)
        assert not {{"accelerate", "kornia", "xformers"}} & set(sys.modules)
        print("ran")
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0 and "ran" in proc.stdout, proc.stderr[-3000:]
