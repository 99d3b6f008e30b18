"""Model memory inside ComfyUI, tested with a fake ``comfy.model_management`` /
``comfy.model_patcher``: the loader wraps the network in a model patcher, every step asks
``load_models_gpu`` for memory (an estimate at least the measured peak) before the network
runs, the model stays loaded from step to step (ComfyUI unloads it, through its own
``free_memory`` / ``unload_all_models``, never the pack), and the tile is halved on
out-of-memory. Without ComfyUI none of it is imported."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from test_comfy_nodes import MODEL_NAME, REPO_ROOT, models_dir, pack, pack_modules  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------- a fake ComfyUI
class FakePatcher:
    """Records what ComfyUI's ModelPatcher is given."""

    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model, self.load_device, self.offload_device = model, load_device, offload_device


class FakeLoadedModel:
    def __init__(self, patcher, log):
        self.model, self.log = patcher, log

    def model_unload(self, *args, **kwargs):
        self.log.append(("unload", self.model))
        self.model.model.to(self.model.offload_device)
        self.model.model.device = self.model.offload_device       # as current ComfyUI's patcher does


class FakeModelManagement(types.ModuleType):
    """The part of comfy.model_management the pack uses, recording every call in ``log``."""

    def __init__(self):
        super().__init__("comfy.model_management")
        self.log, self.current_loaded_models = [], []

    def load_models_gpu(self, models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                        force_full_load=False):
        self.log.append(("load", list(models), memory_required, force_full_load))
        for m in models:
            if any(lm.model is m for lm in self.current_loaded_models):
                continue                                                # loaded already: as ComfyUI, not again
            self.log.append(("device", m))
            m.model.to(m.load_device)
            m.model.device = m.load_device                              # as current ComfyUI's patcher does
            m.model.model_loaded_weight_memory = 1
            self.current_loaded_models.insert(0, FakeLoadedModel(m, self.log))

    def unload_all_models(self):
        """ComfyUI's own way to free everything (its /free endpoint)."""
        while self.current_loaded_models:
            self.current_loaded_models.pop().model_unload()

    def get_torch_device(self):
        return torch.device("cpu")

    def unet_offload_device(self):
        return torch.device("cpu")

    def intermediate_device(self):
        return torch.device("cpu")

    def soft_empty_cache(self, force=False):
        pass

    def throw_exception_if_processing_interrupted(self):
        pass


@pytest.fixture
def comfy(pack, monkeypatch):
    _, cc = pack_modules(pack)
    mm = FakeModelManagement()
    monkeypatch.setattr(cc, "model_management", mm)
    monkeypatch.setattr(cc, "model_patcher", types.SimpleNamespace(ModelPatcher=FakePatcher))
    return mm


def _images(b, h, w, seed):
    return torch.rand(b, h, w, 3, generator=torch.Generator().manual_seed(seed))


def _run_steps(m, handle, lr, ref, tile=0):
    match, _ = m["FRFSRMatchReference"]().match(handle, lr, ref)
    tex, _ = m["FRFSRAlignTextures"]().align(handle, match)
    (sr,) = m["FRFSRSuperResolve"]().upscale(handle, lr, tex, tile, 4)
    return sr


def test_the_loader_registers_a_patcher_and_each_step_asks_for_memory_before_running(pack, models_dir, comfy,
                                                                                     monkeypatch):
    nodes, cc = pack_modules(pack)
    assert cc.uses_comfy_memory_management()
    m = pack.NODE_CLASS_MAPPINGS
    (handle,) = m["LoadFRFSR"]().load(MODEL_NAME, "auto", "float32")
    patcher = handle.placement.patcher
    assert isinstance(patcher, FakePatcher) and patcher.model.net is handle.model     # the network, held as it is
    assert patcher.load_device == torch.device("cpu") and patcher.offload_device == torch.device("cpu")
    assert comfy.log == []                                   # loading the file does not load it on the device
    for step in ("match", "align", "restore"):              # the network's work, in the same log
        real = getattr(handle.model, step)
        monkeypatch.setattr(handle.model, step, lambda *a, _s=step, _f=real, **k: (comfy.log.append(("run", _s)),
                                                                                    _f(*a, **k))[1])
    _run_steps(m, handle, _images(1, 16, 20, 1), _images(1, 16, 16, 2))
    kinds = [e[0] for e in comfy.log]
    # memory asked for before every step; the weights moved to the device once, then kept there
    assert kinds == ["load", "device", "run", "load", "run", "load", "run"], kinds
    for entry in (e for e in comfy.log if e[0] == "load"):
        _, models, memory, full = entry
        assert models == [patcher] and memory > 0 and full is True
    assert [lm.model for lm in comfy.current_loaded_models] == [patcher]     # still loaded after use
    (sr,) = m["FRFSRUpscale"]().upscale(handle, _images(1, 16, 20, 1), _images(1, 16, 16, 2))
    assert [e[0] for e in comfy.log[7:]] == ["load", "run", "run", "run"]   # the next node: not loaded again
    comfy.unload_all_models()                                # ComfyUI frees the memory: the pack follows
    assert comfy.log[-1] == ("unload", patcher) and comfy.current_loaded_models == []
    (sr,) = m["FRFSRUpscale"]().upscale(handle, _images(1, 16, 20, 1), _images(1, 16, 16, 2))
    assert [e[0] for e in comfy.log[12:]] == ["load", "device", "run", "run", "run"]     # loaded again when needed


def test_older_load_models_gpu_without_force_full_load(pack, models_dir, comfy, monkeypatch):
    """Early-2024 ComfyUI: load_models_gpu(models, memory_required=0) only."""
    calls = []
    monkeypatch.setattr(comfy, "load_models_gpu", lambda models, memory_required=0: calls.append(memory_required))
    m = pack.NODE_CLASS_MAPPINGS
    (handle,) = m["LoadFRFSR"]().load(MODEL_NAME, "cpu", "float32")
    m["FRFSRUpscale"]().upscale(handle, _images(1, 16, 16, 1), _images(1, 16, 16, 2))
    assert len(calls) == 1 and calls[0] > 0


# ---------------------------------------------------------------------- the estimate against a measurement
class LiveBytes(TorchDispatchMode):
    """Peak bytes of the tensors that aten ops create and that are still alive."""

    def __init__(self):
        super().__init__()
        self.live, self.now, self.peak = {}, 0, 0

    def _track(self, t):
        if not isinstance(t, torch.Tensor):
            return
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self.live or storage.nbytes() == 0:
            return
        self.live[key] = storage.nbytes()
        self.now += storage.nbytes()
        self.peak = max(self.peak, self.now)
        weakref.finalize(storage, self._free, key)

    def _free(self, key):
        self.now -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tree_map(self._track, out)
        return out


@pytest.mark.parametrize("lr_hw,ref_hw,tile", [((16, 20), (16, 16), 0), ((32, 32), (48, 48), 0), ((40, 40), (24, 24), 16)])
def test_the_memory_asked_for_covers_the_measured_peak(pack, models_dir, comfy, lr_hw, ref_hw, tile):
    m = pack.NODE_CLASS_MAPPINGS
    (handle,) = m["LoadFRFSR"]().load(MODEL_NAME, "cpu", "float32")
    lr, ref = _images(1, *lr_hw, 1), _images(1, *ref_hw, 2)
    peaks = []
    match, _ = m["FRFSRMatchReference"]().match(handle, lr, ref)      # warm-up: lazily built buffers
    steps = [lambda: m["FRFSRMatchReference"]().match(handle, lr, ref),
             lambda: m["FRFSRAlignTextures"]().align(handle, match),
             lambda: m["FRFSRSuperResolve"]().upscale(handle, lr, m["FRFSRAlignTextures"]().align(handle, match)[0],
                                                      tile, 4)]
    for step in steps:
        comfy.log.clear()
        with LiveBytes() as meter:
            step()
        peaks.append(meter.peak)
        asked = [e[2] for e in comfy.log if e[0] == "load"]
        assert asked and min(asked) >= meter.peak, (asked, meter.peak)
    restore_asked = [e[2] for e in comfy.log if e[0] == "load"][-1]
    assert restore_asked <= 8 * peaks[-1], "the estimate should stay near the measured restoration peak"


# ---------------------------------------------------------------------- out of memory
def test_the_tile_is_halved_on_out_of_memory(pack, models_dir, comfy, monkeypatch):
    m = pack.NODE_CLASS_MAPPINGS
    (handle,) = m["LoadFRFSR"]().load(MODEL_NAME, "cpu", "float32")
    lr, ref = _images(1, 40, 40, 1), _images(1, 16, 16, 2)
    match, _ = m["FRFSRMatchReference"]().match(handle, lr, ref)
    tex, _ = m["FRFSRAlignTextures"]().align(handle, match)
    expected = m["FRFSRSuperResolve"]().upscale(handle, lr, tex, 20, 4)[0]
    real, sizes = handle.model.restore, []

    def restore(lr_tile, textures, *a, **k):
        sizes.append(max(lr_tile.shape[-2:]))
        if max(lr_tile.shape[-2:]) > 20:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(lr_tile, textures, *a, **k)

    monkeypatch.setattr(handle.model, "restore", restore)
    with pytest.warns(RuntimeWarning, match="out of memory with the whole 40x40 image; retrying with tile 20"):
        (sr,) = m["FRFSRSuperResolve"]().upscale(handle, lr, tex, 40, 4)
    assert sizes[0] == 40 and set(sizes[1:]) == {20}
    torch.testing.assert_close(sr, expected, atol=1e-5, rtol=0)
    assert len(comfy.current_loaded_models) == 1      # loaded once, kept after the retry too


# ---------------------------------------------------------------------- imports
_CHECK = textwrap.dedent("""
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("frfsr_pack", sys.argv[1] + "/__init__.py")
    pack = importlib.util.module_from_spec(spec)
    sys.modules["frfsr_pack"] = pack
    spec.loader.exec_module(pack)
    cc = sys.modules["frfsr_pack.frfsr_nodes.comfy_compat"]
    comfy = sorted(m for m in sys.modules if m == "comfy" or m.startswith("comfy.") or m == "folder_paths")
    print(comfy, cc.uses_comfy_memory_management())
    if comfy:
        import torch
        handle = pack.NODE_CLASS_MAPPINGS["LoadFRFSR"]().load("frfsr-default", "cpu", "float32")[0]
        print(type(handle.placement.patcher).__module__ + "." + type(handle.placement.patcher).__name__)
""")

_FAKE_COMFY = {
    "comfy/__init__.py": "",
    "comfy/model_management.py": """
import torch
current_loaded_models = []
def load_models_gpu(models, memory_required=0): pass
def get_torch_device(): return torch.device("cpu")
def unet_offload_device(): return torch.device("cpu")
def intermediate_device(): return torch.device("cpu")
""",
    "comfy/model_patcher.py": """
class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model = model
""",
}


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """The pack imported in two fresh interpreters at once: plain, and with a fake ComfyUI
    (comfy.model_management + comfy.model_patcher) on the path. Their printed lines."""
    fake = tmp_path_factory.mktemp("fake_comfy")
    for rel, text in _FAKE_COMFY.items():
        (fake / rel).parent.mkdir(parents=True, exist_ok=True)
        (fake / rel).write_text(textwrap.dedent(text))
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    procs = {name: subprocess.Popen([sys.executable, "-c", _CHECK, str(REPO_ROOT)], env=env, cwd=REPO_ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, env in (("plain", base), ("comfy", {**base, "PYTHONPATH": str(fake)}))}
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, stderr
        out[name] = stdout.strip().splitlines()
    return out


def test_without_comfyui_nothing_of_it_is_imported(imported):
    assert imported["plain"] == ["[] False"]


def test_with_comfyui_the_loader_uses_its_model_patcher(imported):
    assert imported["comfy"] == ["['comfy', 'comfy.model_management', 'comfy.model_patcher'] True",
                                 "comfy.model_patcher.ModelPatcher"]
