"""save_pretrained / from_pretrained / push_to_hub, and Hub downloads against a real HTTP
server on loopback (tests/hub_server.py) that huggingface_hub reaches through HF_ENDPOINT."""
import dataclasses
import hashlib
import json
import os
import time

import pytest
import torch
from safetensors.torch import load_file

import frfsr._fs
from frfsr import FRFSR, FRFSRConfig, FRFSRPipeline
from frfsr import hub as frfsr_hub
from frfsr.checks import check_finite_state_dict, check_state_dict
from frfsr.convert import read_safetensors

from hub_server import FakeHub

REPO = "frfsr-test/tiny"
COMMIT_A = hashlib.sha1(b"A").hexdigest()      # main
COMMIT_B = hashlib.sha1(b"B").hexdigest()      # an older commit, reachable by its sha only


def _model(seed: int, **cfg) -> FRFSR:
    torch.manual_seed(seed)
    return FRFSR(FRFSRConfig.tiny(**cfg)).eval()


def _same_weights(a: FRFSR, b: FRFSR) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Two saved tiny models: A (seed 0) and B (seed 1)."""
    root = tmp_path_factory.mktemp("models")
    models = {name: _model(seed) for name, seed in (("A", 0), ("B", 1))}
    for name, m in models.items():
        m.save_pretrained(root / name, description=f"tiny test model {name}")
    return root, models


@pytest.fixture
def hub(saved, monkeypatch):
    root, _ = saved
    server = FakeHub()
    server.add(REPO, COMMIT_A, root / "A", branches=("main",))
    server.add(REPO, COMMIT_B, root / "B", branches=())
    server.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    yield server
    server.stop()


# ---------------------------------------------------------------- Hub downloads
def test_first_download_then_cache_reuse_without_transfer(hub, saved, tmp_path, monkeypatch):
    _, models = saved
    pipe = FRFSRPipeline.from_pretrained(REPO, cache_dir=tmp_path)
    assert _same_weights(pipe.model, models["A"])
    assert pipe.commit == COMMIT_A and pipe.source == REPO
    assert pipe.description == "tiny test model A"
    assert hub.count("GET") == 2                       # config.json + model.safetensors
    FRFSRPipeline.from_pretrained(REPO, cache_dir=tmp_path)
    assert hub.count("GET") == 2                       # cached: metadata checks only, no second transfer
    # offline, from the cache: not a single request
    n = len(hub.file_requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = FRFSRPipeline.from_pretrained(REPO, cache_dir=tmp_path)
    assert len(hub.file_requests) == n and _same_weights(again.model, models["A"])


def test_pinned_revision(hub, saved, tmp_path):
    _, models = saved
    old = FRFSRPipeline.from_pretrained(REPO, revision=COMMIT_B, cache_dir=tmp_path)
    assert _same_weights(old.model, models["B"]) and old.commit == COMMIT_B
    new = FRFSRPipeline.from_pretrained(REPO, revision="main", cache_dir=tmp_path)
    assert _same_weights(new.model, models["A"])
    n = len(hub.file_requests)
    FRFSRPipeline.from_pretrained(REPO, revision=COMMIT_B, cache_dir=tmp_path)
    assert len(hub.file_requests) == n                      # a cached commit needs no request at all


@pytest.mark.parametrize("how", ["env", "argument"])
def test_offline_and_not_cached_is_a_clear_error(hub, tmp_path, monkeypatch, how):
    kw = {}
    if how == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        kw["local_files_only"] = True
    with pytest.raises(FileNotFoundError, match="not in the local Hub cache and downloads are off"):
        FRFSRPipeline.from_pretrained(REPO, cache_dir=tmp_path, **kw)
    assert hub.file_requests == []


def test_corrupted_download_is_refused_and_not_cached(hub, saved, tmp_path):
    hub.corrupt = True
    with pytest.raises(ValueError, match="model.safetensors .* is corrupt"):
        FRFSRPipeline.from_pretrained(REPO, cache_dir=tmp_path)
    hub.corrupt = False
    pipe = FRFSRPipeline.from_pretrained(REPO, cache_dir=tmp_path)      # the bad blob was dropped: downloads again
    assert _same_weights(pipe.model, saved[1]["A"])


def test_token_is_sent(hub, tmp_path):
    FRFSRPipeline.from_pretrained(REPO, cache_dir=tmp_path, token="hf_testtoken")
    assert {auth for _, _, auth in hub.file_requests} == {"Bearer hf_testtoken"}


def test_hub_errors_are_clear(hub, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a Hub model repository"):
        FRFSRPipeline.from_pretrained("frfsr-test/nope", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="revision 'v9' does not exist"):
        FRFSRPipeline.from_pretrained(REPO, revision="v9", cache_dir=tmp_path)
    n = len(hub.file_requests)
    with pytest.raises(ValueError, match="nor a valid Hub repo id"):
        FRFSRPipeline.from_pretrained("bad--name", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        FRFSRPipeline.from_pretrained("./missing/folder", cache_dir=tmp_path)
    with pytest.raises(TypeError, match="folder path"):
        FRFSRPipeline.from_pretrained(42)
    assert len(hub.file_requests) == n                      # refused before any request


# ---------------------------------------------------------------- local folders and the bundled default
def test_round_trip_gives_bit_identical_outputs(tmp_path):
    torch.manual_seed(3)
    pipe = FRFSRPipeline(_model(0))
    pipe.relevance_threshold = None                  # random weights match poorly: no warning here
    lr, ref = torch.rand(1, 3, 16, 20), torch.rand(1, 3, 48, 40)
    before = pipe(lr, ref, output_type="pt", return_details=True)
    pipe.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = FRFSRPipeline.from_pretrained(tmp_path / "m")
    loaded.relevance_threshold = None
    after = loaded(lr, ref, output_type="pt", return_details=True)
    assert torch.equal(before.images, after.images) and torch.equal(before.confidence, after.confidence)
    before, after = pipe(lr, ref, output_type="pt"), loaded(lr, ref, output_type="pt")
    assert torch.equal(before, after)


def test_stage2_model_carries_its_stage1_net(tmp_path):
    model = _model(0, stage=2)
    model.save_pretrained(tmp_path)
    keys = load_file(str(tmp_path / "model.safetensors")).keys()
    assert any(k.startswith("reuse_net.") for k in keys)
    loaded = FRFSR.from_pretrained(str(tmp_path))
    assert loaded.config.stage == 2 and _same_weights(model, loaded)
    assert "stage-2" in (tmp_path / "README.md").read_text()


def test_model_card_says_what_the_weights_are(tmp_path):
    _model(0).save_pretrained(tmp_path, description="Converted from the authors' release.")
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: frfsr\n") and "pipeline_tag: image-to-image" in card
    assert "Converted from the authors' release." in card
    sha = hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest()
    assert sha in card and "stage-1" in card and "`tiny`" in card
    assert "| matching | whole LR pixels, as the authors' release (`subpixel_match: false`) |" in card
    FRFSR(dataclasses.replace(_model(0).config, subpixel_match=True)).save_pretrained(tmp_path / "sub")
    assert "| matching | `subpixel_match: true`: each match refined" in (tmp_path / "sub" / "README.md").read_text()


def _edit_config(folder, **changes):
    p = folder / "config.json"
    d = json.loads(p.read_text())
    d.update(changes)
    p.write_text(json.dumps(d))


@pytest.mark.parametrize("changes, message", [
    ({"version": 2}, "config version 2"),
    ({"ngf": 32}, "does not fit the config.*wrong shapes.*restoration"),
    ({"sife_blocks": 2}, "does not fit the config.*missing.*sife.body.1"),
    ({"colour": "blue"}, "unknown FRFSR config field"),
    ({"_class_name": "UNet2DModel"}, "not an FRFSR model"),
    ({"ngf": 10}, "ngf must be a multiple of 4"),
])
def test_config_is_validated_on_load(tmp_path, changes, message):
    _model(0).save_pretrained(tmp_path)
    _edit_config(tmp_path, **changes)
    with pytest.raises(ValueError, match=message):
        FRFSRPipeline.from_pretrained(tmp_path)


def test_broken_weights_file_is_refused(tmp_path):
    _model(0).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        FRFSRPipeline.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors missing"):
        FRFSRPipeline.from_pretrained(tmp_path)


def test_bundled_default(tmp_path, monkeypatch):
    monkeypatch.setattr(frfsr_hub, "BUNDLED_DIR", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="bundled weights frfsr-default .* not installed.*Hub repo id"):
        FRFSRPipeline.from_pretrained()
    _model(0).save_pretrained(tmp_path / "default")
    monkeypatch.setattr(frfsr_hub, "BUNDLED_DIR", tmp_path / "default")
    for name in (None, "frfsr-default"):
        pipe = FRFSRPipeline.from_pretrained(name)
        assert pipe.source == "frfsr-default" and _same_weights(pipe.model, _model(0))
    # the second bundled model, by its own name
    monkeypatch.setattr(frfsr_hub, "ROBUST_DIR", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="bundled weights frfsr-robust .* not installed"):
        FRFSRPipeline.from_pretrained("frfsr-robust")
    _model(1).save_pretrained(tmp_path / "robust")
    monkeypatch.setattr(frfsr_hub, "ROBUST_DIR", tmp_path / "robust")
    pipe = FRFSRPipeline.from_pretrained("frfsr-robust")
    assert pipe.source == "frfsr-robust" and _same_weights(pipe.model, _model(1))
    assert not _same_weights(pipe.model, _model(0))


def test_dtype_and_device_options(tmp_path):
    _model(0).to(torch.bfloat16).save_pretrained(tmp_path)
    assert FRFSRPipeline.from_pretrained(tmp_path).dtype == torch.float32
    assert FRFSRPipeline.from_pretrained(tmp_path, torch_dtype="auto").dtype == torch.bfloat16
    pipe = FRFSRPipeline.from_pretrained(tmp_path, torch_dtype="fp16", device="cpu")
    assert pipe.dtype == torch.float16 and pipe.device.type == "cpu"
    assert pipe.to(torch.float32).dtype == torch.float32 and pipe.to("cpu", "bf16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        FRFSRPipeline.from_pretrained(tmp_path, torch_dtype="float8")
    with pytest.raises(ValueError, match="unknown device"):
        FRFSRPipeline.from_pretrained(tmp_path, device="gpu7")


# ---------------------------------------------------------------- push_to_hub
def test_push_to_hub_uploads_the_saved_folder(monkeypatch):
    calls = {}

    class FakeApi:
        def __init__(self, endpoint=None, token=None):
            calls["init"] = (endpoint, token)

        def create_repo(self, repo_id, **kw):
            calls["create_repo"] = (repo_id, kw)

        def upload_folder(self, *, repo_id, folder_path, **kw):
            from pathlib import Path
            files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
            calls["upload_folder"] = (repo_id, files, kw)
            return "commit-info"

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    pipe = FRFSRPipeline(_model(0))
    assert pipe.push_to_hub("me/frfsr-tiny", token="hf_x", private=True, description="test push") == "commit-info"
    assert calls["init"][1] == "hf_x"
    assert calls["create_repo"] == ("me/frfsr-tiny", {"private": True, "exist_ok": True, "repo_type": "model"})
    repo_id, files, kw = calls["upload_folder"]
    assert repo_id == "me/frfsr-tiny" and set(files) == {"config.json", "model.safetensors", "README.md"}
    assert b'pipeline_tag: image-to-image' in files["README.md"] and b"me/frfsr-tiny" in files["README.md"]
    assert json.loads(files["config.json"])["_class_name"] == "FRFSR"
    with pytest.raises(ValueError, match="not a valid Hub repo id"):
        pipe.push_to_hub("a/b/c")


def test_failed_save_keeps_the_model_saved_before(tmp_path, monkeypatch):
    _model(0).save_pretrained(tmp_path, description="first")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {"config.json", "model.safetensors", "README.md"}

    def card_fails(*args, **kwargs):          # the weights are written by then
        raise OSError("No space left on device")
    monkeypatch.setattr(frfsr_hub, "model_card", card_fails)
    with pytest.raises(OSError, match="No space left"):
        _model(1).save_pretrained(tmp_path, description="second")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before    # no temp file left either
    assert FRFSRPipeline.from_pretrained(tmp_path).description == "first"


def test_saved_files_are_readable_by_others_as_the_umask_allows(tmp_path):
    old = os.umask(0o022)
    try:
        _model(0).save_pretrained(tmp_path)
    finally:
        os.umask(old)
    for name in ("config.json", "model.safetensors", "README.md"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


# ---------------------------------------------------------------- saving never loses a model
def _save_loop(model, folder, conn):
    """In a forked child: save again and again, reporting each save's duration, until killed."""
    i = 0
    while True:
        t = time.perf_counter()
        model.save_pretrained(folder, description=f"new {i}")
        conn.send(time.perf_counter() - t)
        i += 1


def _load_description(folder, paper_model):
    """What from_pretrained checks before building the model: config, every tensor, shapes, finiteness."""
    files = frfsr_hub.resolve_model_files(folder)
    assert FRFSRConfig.from_json(files.config) == paper_model.config
    state, meta = read_safetensors(files.weights)
    check_state_dict(state, paper_model, str(folder))
    check_finite_state_dict(state, str(folder))
    return meta[frfsr_hub._DESCRIPTION_KEY]


def test_save_killed_at_any_moment_leaves_a_loadable_model(tmp_path):
    """SIGKILL a process in the middle of saving paper-size weights (128 MB) over a saved
    model, at several points of the save: the folder always loads, as the old or the new model."""
    import multiprocessing
    import signal
    folder = tmp_path / "model"
    paper = FRFSR(FRFSRConfig.paper())
    paper.save_pretrained(folder, description="old")
    assert _load_description(folder, paper) == "old"
    ctx = multiprocessing.get_context("fork")          # the child shares the built model: no start-up cost
    for fraction in (0.05, 0.3, 0.55, 0.8, 0.95):
        receive, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_save_loop, args=(paper, folder, send), daemon=True)
        proc.start()
        try:
            assert receive.poll(120), "the saving child did not report"
            duration = receive.recv()                  # one whole save done; the next one is under way
            time.sleep(fraction * duration)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(60)
        desc = _load_description(folder, paper)       # old or new, never half of one
        assert desc.startswith("new "), desc
        assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    _model(0).save_pretrained(folder, description="after")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]        # no staging folder left beside it
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert FRFSRPipeline.from_pretrained(folder).description == "after"


def test_interrupted_two_rename_save_is_recovered(tmp_path, monkeypatch):
    # where the system has no atomic folder exchange, a save renames twice; a kill between the
    # two renames leaves the old model beside the target, and loading or saving puts it back
    monkeypatch.setattr(frfsr._fs, "_exchange", lambda a, b: False)     # where the folder swap now lives
    folder = tmp_path / "m"
    _model(0).save_pretrained(folder, description="old")
    real_rename = os.rename
    calls = []

    def die_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_rename(src, dst)

    monkeypatch.setattr(frfsr_hub.os, "rename", die_on_second)
    with pytest.raises(KeyboardInterrupt):
        _model(1).save_pretrained(folder, description="new")
    monkeypatch.setattr(frfsr_hub.os, "rename", real_rename)
    assert not folder.exists() and [p.name.split(".frfsr-")[1].split("-")[0] for p in tmp_path.iterdir()] == ["old"]
    assert FRFSRPipeline.from_pretrained(folder).description == "old"
    _model(1).save_pretrained(folder, description="new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert FRFSRPipeline.from_pretrained(folder).description == "new"


def test_save_refuses_bad_targets_and_keeps_foreign_files(tmp_path):
    with pytest.raises(ValueError, match="save_directory must be a folder path, got ''"):
        _model(0).save_pretrained("")
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"user data")
    with pytest.raises(ValueError, match="exists and is a file, not a folder"):
        _model(0).save_pretrained(a_file)
    assert a_file.read_bytes() == b"user data"
    other = tmp_path / "diffusers_model"
    other.mkdir()
    (other / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    with pytest.raises(FileExistsError, match="is not an FRFSR config.*will not overwrite"):
        _model(0).save_pretrained(other)
    assert (other / "config.json").read_text() == '{"_class_name": "UNet2DModel"}'
    # a user's README.md and other files in a model folder stay as they are
    folder = tmp_path / "mine"
    _model(0).save_pretrained(folder)
    (folder / "README.md").write_text("# my notes\n")
    (folder / "samples").mkdir()
    (folder / "samples" / "a.png").write_bytes(b"png")
    with pytest.warns(UserWarning, match="is not an FRFSR model card; it is kept"):
        _model(1).save_pretrained(folder, description="second")
    assert (folder / "README.md").read_text() == "# my notes\n"
    assert (folder / "samples" / "a.png").read_bytes() == b"png"
    assert FRFSRPipeline.from_pretrained(folder).description == "second"


def test_non_finite_empty_and_foreign_weights_are_refused_clearly(tmp_path):
    model = _model(0)
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    from safetensors.torch import save_file
    state = {k: v.clone() for k, v in model.state_dict().items()}
    bad = sorted(k for k, v in state.items() if v.is_floating_point())[:2]
    state[bad[0]][0] = float("nan")
    state[bad[1]].fill_(float("inf"))
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=rf"non-finite weights \(NaN or Inf\) in 2 tensor\(s\): {bad[0]}, {bad[1]}"):
        FRFSRPipeline.from_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"model.safetensors is empty \(0 bytes\)"):
        FRFSRPipeline.from_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="is not a valid safetensors file"):
        FRFSRPipeline.from_pretrained(folder)
    from frfsr.convert import load_checkpoint
    for name, data in (("empty.pth", b""), ("text.pth", b"not a checkpoint at all"), ("empty.safetensors", b"")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=rf"{name} is (empty \(0 bytes\)|not a readable PyTorch checkpoint)"):
            load_checkpoint(tmp_path / name)


def test_missing_local_folder_fails_at_once_without_the_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")      # nothing listens: a request would hang or retry

    def no_network(*args, **kwargs):
        raise AssertionError("the Hub was asked for a local folder path")
    monkeypatch.setattr(frfsr_hub, "_download", no_network)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for name in ("no_such_model", "./no_such_model", str(tmp_path / "gone"), "models/mine", "a/b/c"):
        with pytest.raises(FileNotFoundError, match="no such model folder"):
            FRFSRPipeline.from_pretrained(name)
    with pytest.raises(FileNotFoundError, match=r"the folder models exists but holds no 'mine'"):
        FRFSRPipeline.from_pretrained("models/mine")
    with pytest.raises(ValueError, match="nor a valid Hub repo id"):
        FRFSRPipeline.from_pretrained("näme/model")


def test_unresolvable_hub_host_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://frfsr-no-such-host.invalid")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    import huggingface_hub
    real, asked = huggingface_hub.hf_hub_download, []

    def spy(*args, **kwargs):
        asked.append(kwargs.get("local_files_only"))
        return real(*args, **kwargs)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    with pytest.raises(ConnectionError, match="does not resolve.*no cached copy"):
        FRFSRPipeline.from_pretrained("someone/model", cache_dir=tmp_path)
    assert asked and all(asked)              # the cache only: no request, so no retries
