"""Two-stage training: 2-process launch, kill/resume equality, atomic checkpoints, stage 2.

Everything runs the tiny model on a generated dataset on the CPU (train/configs/tiny.yaml).
"""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from frfsr import FRFSR, FRFSRConfig
from frfsr_train.training import checkpoint as ckpt_mod
from frfsr_train.training import load_config
from frfsr_train.training.checkpoint import resolve_checkpoint
from frfsr import FRFSR
from frfsr_train.training.trackers import read_csv_log

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "train" / "configs" / "tiny.yaml"
TINY2 = REPO / "train" / "configs" / "tiny_stage2.yaml"


@pytest.fixture(autouse=True)
def _clean_accelerate():
    """Each in-process run gets a fresh Accelerate state; restore global torch flags."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    torch.use_deterministic_algorithms(deterministic)


def _env(tmp):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["HF_HOME"] = str(tmp / "hf_home")       # no user accelerate config
    env["OMP_NUM_THREADS"] = "1"
    return env


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trainer(config, out, **overrides):
    from frfsr_train.training import Trainer
    over = {"train": {"output_dir": str(out)}}
    for k, v in overrides.items():
        sec, key = k.split("__")
        over.setdefault(sec, {})[key] = v
    return Trainer(load_config(config, over))


def _ckpt_tensors(path):
    opt = torch.load(path / "optimizer.bin", map_location="cpu", weights_only=False)
    sched = torch.load(path / "custom_checkpoint_0.pkl", map_location="cpu", weights_only=False)
    return load_file(str(path / "model.safetensors")), opt, sched, json.loads((path / "trainer_state.json").read_text())


def _assert_same_nested(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_nested(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_nested(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# ---------------------------------------------------------------------- a reference run
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """4 steps of tiny stage 1 in one go, checkpoints at 2 and 4, exported to final/."""
    out = tmp_path_factory.mktemp("run_a")
    tr = _trainer(TINY, out)
    assert tr.fit() is True
    state = {k: v.detach().clone() for k, v in tr.unwrapped_model().state_dict().items()}
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    return out, state


# ---------------------------------------------------------------------- Done 1: two processes
def _two_processes(tmp_path, out, *args):
    """Stage 1 of the tiny config on two gloo ranks, each writing its weight hash."""
    # `accelerate launch --cpu --num_processes 2` starts ONE process in accelerate >= 1.x unless
    # run under mpirun; ACCELERATE_USE_CPU=1 with the multi-process launcher gives two gloo ranks.
    env = _env(tmp_path)
    env["ACCELERATE_USE_CPU"] = "1"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(REPO / "train" / "stage1.py"), "--config", str(TINY), "--output_dir", str(out), *args, "--dump_rank_hashes"]
    return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_two_process_launch_identical_weights_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    r = _two_processes(tmp_path, out, "--max_steps", "3")
    assert r.returncode == 0, r.stderr[-4000:]
    ranks = [json.loads((out / "rank_state" / f"rank{i}.json").read_text()) for i in range(2)]
    assert [x["rank"] for x in ranks] == [0, 1]
    assert ranks[0]["step"] == ranks[1]["step"] == 3
    assert ranks[0]["generator"] == ranks[1]["generator"]
    latest = resolve_checkpoint(out)
    assert latest is not None and latest.name == "ckpt-000003"
    assert (out / "checkpoints" / "latest").read_text().strip() == "ckpt-000003"
    assert (out / "checkpoints" / "ckpt-000002" / "model.safetensors").is_file()
    state = json.loads((latest / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["num_processes"] == 2
    # the exported weights are the ranks' weights and load through the pipeline format
    from frfsr_train.training.loop import state_hash
    assert state_hash(FRFSR.from_pretrained(out / "final")) == ranks[0]["generator"]
    rows = read_csv_log(out / "train_log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3]


def test_two_processes_stop_together_at_max_minutes(tmp_path):
    """train.max_minutes on two gloo ranks: both stop at the same step (no rank waits on a
    collective the other never reaches), checkpoint it and export the weights."""
    out = tmp_path / "run"
    r = _two_processes(tmp_path, out, "--max_steps", "40", "--set", "train.max_minutes=1e-6")
    assert r.returncode == 0, r.stderr[-4000:]
    assert "train.max_minutes" in r.stderr
    ranks = [json.loads((out / "rank_state" / f"rank{i}.json").read_text()) for i in range(2)]
    assert ranks[0]["step"] == ranks[1]["step"] < 40
    assert resolve_checkpoint(out).name == f"ckpt-{ranks[0]['step']:06d}"
    from frfsr_train.training.loop import state_hash
    assert state_hash(FRFSR.from_pretrained(out / "final")) == ranks[0]["generator"] == ranks[1]["generator"]


# ---------------------------------------------------------------------- Done 2: kill / resume
def test_killed_and_resumed_run_equals_uninterrupted(uninterrupted, tmp_path):
    from frfsr_train.training.run import main
    ref_out, ref_state = uninterrupted
    out = tmp_path / "run_b"
    assert main(["--config", str(TINY), "--output_dir", str(out), "--stop_after", "2"], stage=1) == 0
    assert resolve_checkpoint(out).name == "ckpt-000002"
    assert not (out / "final").exists()                 # a killed run exports nothing
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    assert main(["--config", str(TINY), "--output_dir", str(out), "--resume"], stage=1) == 0

    a = _ckpt_tensors(ref_out / "checkpoints" / "ckpt-000004")
    b = _ckpt_tensors(out / "checkpoints" / "ckpt-000004")
    _assert_same_nested(a[0], b[0], "weights")
    _assert_same_nested(a[1], b[1], "optimizer")
    _assert_same_nested(a[2], b[2], "scheduler")
    assert a[3] == b[3] and b[3]["step"] == 4
    assert b[2]["last_epoch"] == 4 and b[2]["_last_lr"][0] == pytest.approx(5e-5)   # milestone 3, gamma 0.5
    final = FRFSR.from_pretrained(out / "final").state_dict()
    for k, v in ref_state.items():
        assert torch.equal(final[k], v), k
    rows_a, rows_b = read_csv_log(ref_out / "train_log.csv"), read_csv_log(out / "train_log.csv")
    assert [r["step"] for r in rows_b] == ["1", "2", "3", "4"]
    assert [r["l1"] for r in rows_a] == [r["l1"] for r in rows_b]



def test_run_stopped_by_max_minutes_exports_and_resumes_to_the_same_weights(uninterrupted, tmp_path):
    """A run out of train.max_minutes checkpoints its step and exports final/; --resume then
    goes on to max_steps and ends with the uninterrupted run's weights."""
    from frfsr_train.training.run import main
    ref_out, ref_state = uninterrupted
    out = tmp_path / "run_t"
    assert main(["--config", str(TINY), "--output_dir", str(out), "--set", "train.max_minutes=1e-6"], stage=1) == 0
    stopped = resolve_checkpoint(out)
    assert stopped.name == "ckpt-000001"                # the deadline had passed after the first step
    exported = FRFSR.from_pretrained(out / "final").state_dict()
    at_stop = {k.removeprefix("model."): v for k, v in load_file(str(stopped / "model.safetensors")).items()}
    assert exported.keys() <= at_stop.keys()
    assert all(torch.equal(v, at_stop[k]) for k, v in exported.items())     # final/ is the step it stopped at
    assert any(not torch.equal(exported[k], ref_state[k]) for k in ref_state)
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    assert main(["--config", str(TINY), "--output_dir", str(out), "--resume"], stage=1) == 0
    assert resolve_checkpoint(out).name == "ckpt-000004"
    final = FRFSR.from_pretrained(out / "final").state_dict()
    for k, v in ref_state.items():
        assert torch.equal(final[k], v), k


@pytest.mark.parametrize("value", [0, -1, "soon", True, float("nan")])
def test_max_minutes_must_be_a_positive_number(value):
    from frfsr_train.training.config import ConfigError
    with pytest.raises(ConfigError, match="train.max_minutes must be"):
        load_config(TINY, {"train": {"max_minutes": value}})


def test_crash_during_save_keeps_latest_and_resumes(uninterrupted, tmp_path, monkeypatch):
    from accelerate import Accelerator
    ref_out, ref_state = uninterrupted
    out = tmp_path / "run_c"
    original = Accelerator.save_state

    def save_then_die(self, output_dir=None, **kw):
        if "ckpt-000004" in str(output_dir):
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"half a file")
            raise RuntimeError("killed during save")
        return original(self, output_dir, **kw)

    monkeypatch.setattr(Accelerator, "save_state", save_then_die)
    with pytest.raises(RuntimeError, match="killed during save"):
        _trainer(TINY, out).fit()
    root = out / "checkpoints"
    assert (root / "latest").read_text().strip() == "ckpt-000002"
    assert not (root / "ckpt-000004").exists() and (root / "ckpt-000004.tmp").exists()
    assert resolve_checkpoint(out).name == "ckpt-000002"

    monkeypatch.setattr(Accelerator, "save_state", original)
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    tr = _trainer(TINY, out)
    assert tr.fit(resume="latest") is True
    assert not (root / "ckpt-000004.tmp").exists()
    assert tr.step == 4
    for k, v in tr.unwrapped_model().state_dict().items():
        assert torch.equal(v, ref_state[k]), k


class _FakeAccelerator:
    """Enough of Accelerator for save_checkpoint: one process, save_state writes two files."""

    is_main_process = True

    def wait_for_everyone(self):
        pass

    def save_state(self, output_dir):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "model.safetensors").write_bytes(b"weights")
        (Path(output_dir) / "optimizer.bin").write_bytes(b"optimizer")


def test_latest_pointer_survives_crash_before_pointer_update(tmp_path, monkeypatch):
    acc = _FakeAccelerator()
    ckpt_mod.save_checkpoint(acc, tmp_path, 10, {"step": 10, "micro_batches": 10})
    real_replace = os.replace

    def die(src, dst):
        if Path(dst).name == "latest":
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", die)
    with pytest.raises(KeyboardInterrupt):
        ckpt_mod.save_checkpoint(acc, tmp_path, 20, {"step": 20, "micro_batches": 20})
    root = tmp_path / "checkpoints"
    assert (root / "latest").read_text().strip() == "ckpt-000010"
    assert resolve_checkpoint(tmp_path).name == "ckpt-000010"
    monkeypatch.setattr(ckpt_mod.os, "replace", real_replace)
    ckpt_mod.remove_stale(root)
    for step in (30, 40, 50):
        ckpt_mod.save_checkpoint(acc, tmp_path, step, {"step": step, "micro_batches": step}, keep=2)
    assert [p.name for _, p in ckpt_mod.list_checkpoints(root)] == ["ckpt-000040", "ckpt-000050"]
    assert resolve_checkpoint(tmp_path).name == "ckpt-000050"
    assert not list(root.glob("*.tmp"))


# ---------------------------------------------------------------------- Done 3: stage 2
def test_stage2_model_from_stage1_export(uninterrupted):
    from frfsr_train.training.stage2 import build_stage2_model
    export = uninterrupted[0] / "final"
    s1 = FRFSR.from_pretrained(export).state_dict()
    m = build_stage2_model(export, from_stage1=True)
    sd = m.state_dict()
    for k, v in s1.items():
        if k.startswith("restoration."):
            assert torch.equal(sd["reuse_net." + k[len("restoration."):]], v), k
            assert torch.equal(sd[k], v), k
        else:
            assert torch.equal(sd[k], v), k
    trainable = {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"restoration"}
    assert any("reuse_down" in n for n, p in m.named_parameters() if p.requires_grad)
    fresh = build_stage2_model(export, from_stage1=False)
    assert not torch.equal(fresh.state_dict()["restoration.head.weight"], s1["restoration.head.weight"])
    assert torch.equal(fresh.state_dict()["reuse_net.head.weight"], s1["restoration.head.weight"])


def test_stage2_config():
    """The one rule for a stage-2 architecture (the trainer and train/export_default.py use it)."""
    from frfsr_train.training.stage2 import stage2_config
    c1 = FRFSRConfig.tiny()
    c2 = stage2_config(c1)
    assert c2.stage == 2 and dataclasses.replace(c2, stage=1) == c1
    assert stage2_config(c1, reuse=False) == c1
    with pytest.raises(ValueError, match="stage 2 is built from a stage-1 model; got a stage-2 config"):
        stage2_config(c2)


def test_reused_feature_changes_stage2_output():
    torch.manual_seed(0)
    m = FRFSR(FRFSRConfig.tiny(stage=2)).eval()
    g = torch.Generator().manual_seed(1)
    lr, ref = torch.rand(1, 3, 16, 16, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    with torch.no_grad():
        tex = m.align(m.match(lr, ref))
        feat = m.reuse_feature(lr, tex)
        own = m.restore(lr, tex).sr
        same = m.restore(lr, tex, reuse_feature=feat).sr
        other = m.restore(lr, tex, reuse_feature=torch.randn(feat.shape, generator=g)).sr
    assert feat.shape == (1, m.config.ngf, 64, 64)
    assert torch.equal(own, same)
    assert (own - other).abs().max() > 1e-4


@pytest.mark.filterwarnings("ignore:PerceptualLoss uses a VGG19 with random weights")
def test_stage2_training_frozen_reuse_net_and_all_losses(uninterrupted, tmp_path):
    export = uninterrupted[0] / "final"
    tr = _trainer(TINY2, tmp_path / "s2", init__stage1=str(export))
    model = tr.unwrapped_model()
    frozen_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("restoration.")}
    restoration_before = {k: v.clone() for k, v in model.restoration.state_dict().items()}
    disc_before = {k: v.clone() for k, v in tr.acc.unwrap_model(tr.disc).state_dict().items()}
    assert tr.fit() is True and tr.step == 3
    after = model.state_dict()
    for k, v in frozen_before.items():          # reuse net, SIFE, texture encoder, extractor
        assert torch.equal(after[k], v), k
    for n, p in model.named_parameters():
        if not n.startswith("restoration."):
            assert p.grad is None and not p.requires_grad, n
    assert not model.reuse_net.training
    assert any(not torch.equal(model.restoration.state_dict()[k], v) for k, v in restoration_before.items())
    assert any(not torch.equal(tr.acc.unwrap_model(tr.disc).state_dict()[k], v) for k, v in disc_before.items())
    rows = read_csv_log(tmp_path / "s2" / "train_log.csv")
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    assert rows[0]["l1"] and not rows[0]["perceptual"] and not rows[0]["d_loss"]     # L1-only warm-up
    for r in rows[1:]:
        for key in ("l1", "perceptual", "adversarial", "d_loss", "gp"):
            assert r[key] and torch.isfinite(torch.tensor(float(r[key]))), (r["step"], key)
    exported = FRFSR.from_pretrained(tmp_path / "s2" / "final")
    assert exported.config.stage == 2
    for k, v in exported.state_dict().items():
        assert torch.equal(v, after[k]), k


# ---------------------------------------------------------------------- config and optimiser
def test_config_errors_are_clear(tmp_path):
    from frfsr_train.training import ConfigError
    with pytest.raises(ConfigError, match=r"unknown key\(s\) data.pach"):
        load_config(TINY, {"data": {"pach": 64}})
    with pytest.raises(ConfigError, match="train.max_steps must be int"):
        load_config(TINY, ["train.max_steps=abc"])
    with pytest.raises(ConfigError, match="multiple of 4"):
        load_config(TINY, {"data": {"patch": 62}})
    with pytest.raises(ConfigError, match="needs init.stage1"):
        load_config(TINY2, {"init": {"stage1": None}})
    with pytest.raises(ConfigError, match="remove the model section"):
        load_config(TINY2, {"model": {"preset": "tiny"}})
    p = tmp_path / "c.yaml"
    p.write_text("stage: 1\nmodel: {preset: tiny}\ndata: {root: x}\noptim: {lr: 2e-4}\n")
    cfg = load_config(p)
    assert cfg.optim.lr == 2e-4 and cfg.optim.betas == [0.9, 0.999]
    for name in ("paper_stage1.yaml", "paper_stage2.yaml"):
        c = load_config(REPO / "train" / "configs" / name)
        assert c.data.patch == 160 and c.data.batch_size == 9 and c.optim.milestones == [72545, 211040]
    c2 = load_config(REPO / "train" / "configs" / "paper_stage2.yaml")
    assert (c2.loss.perceptual, c2.loss.adversarial, c2.loss.gradient_penalty, c2.loss.l1_warmup_steps) == (
        1e-4, 1e-6, 10.0, 10000)


def test_offset_branches_get_their_learning_rates():
    from frfsr_train.training.build import generator_param_groups
    cfg = load_config(REPO / "train" / "configs" / "paper_stage1.yaml")
    m = FRFSR(FRFSRConfig.tiny())
    m.texture_encoder.requires_grad_(False)
    groups = {g["name"]: g for g in generator_param_groups(m, cfg.optim)}
    names = {id(p): n for n, p in m.named_parameters()}
    assert {k: g["lr"] for k, g in groups.items()} == {"base": 1e-4, "large": 1e-4, "medium": 1e-5, "small": 1e-6}
    stages = {k: sorted({names[id(p)].split(".")[2] for p in g["params"]}) for k, g in groups.items() if k != "base"}
    assert stages == {"large": ["0", "4"], "medium": ["1", "3"], "small": ["2"]}
    for k in ("large", "medium", "small"):
        kinds = {names[id(p)].split(".align.")[1].rsplit(".", 1)[0] for p in groups[k]["params"]}
        assert kinds == {"offset_conv1", "offset_conv2", "dcn.offset_mask"}
    base = {names[id(p)] for p in groups["base"]["params"]}
    assert "restoration.stages.0.align.dcn.weight" in base and "sife.conv_first.weight" in base
    assert not any(n.startswith("texture_encoder.") for n in base)


def test_stage1_initialisers(tmp_path):
    """init.sife (ESRGAN names), init.encoder (C2-Matching extractor names) and init.vgg19
    (torchvision indices) land in the right modules; encoder and extractor are frozen."""
    from frfsr_train.training.build import build_stage1_model
    torch.manual_seed(1)
    donor = FRFSR(FRFSRConfig.tiny())
    esrgan = {k: v for k, v in donor.sife.state_dict().items()}
    esrgan["conv_up1.weight"] = torch.zeros(1)                      # the upsampler is dropped
    torch.save({"params_ema": esrgan}, tmp_path / "esrgan.pth")
    c2 = {f"feature_extraction_image{1 if t == 'lr_trunk' else 2}.model.{k}": v
          for t in ("lr_trunk", "ref_trunk") for k, v in getattr(donor.texture_encoder, t).state_dict().items()}
    torch.save(c2, tmp_path / "encoder.pth")
    idx = {"conv1_1": 0, "conv1_2": 2, "conv2_1": 5, "conv2_2": 7, "conv3_1": 10}
    tv = {f"features.{i}.{kind}": getattr(donor.ref_extractor.vgg, n).state_dict()[kind]
          for n, i in idx.items() for kind in ("weight", "bias")}
    torch.save(tv, tmp_path / "vgg19.pth")
    cfg = load_config(TINY, {"init": {"sife": str(tmp_path / "esrgan.pth"), "encoder": str(tmp_path / "encoder.pth"),
                                      "vgg19": str(tmp_path / "vgg19.pth")}})
    torch.manual_seed(2)
    m = build_stage1_model(cfg)
    for part in ("sife", "texture_encoder", "ref_extractor"):
        for k, v in getattr(donor, part).state_dict().items():
            assert torch.equal(getattr(m, part).state_dict()[k], v), f"{part}.{k}"
    assert not any(p.requires_grad for p in m.texture_encoder.parameters())
    assert not any(p.requires_grad for p in m.ref_extractor.parameters())
    assert all(p.requires_grad for p in m.sife.parameters()) and all(p.requires_grad for p in m.restoration.parameters())
    # train/encoder.py's output: texture_encoder.* keys in a safetensors file
    from safetensors.torch import save_file
    save_file({"texture_encoder." + k: v.contiguous() for k, v in donor.texture_encoder.state_dict().items()},
              str(tmp_path / "texture_encoder.safetensors"))
    cfg = load_config(TINY, {"init": {"encoder": str(tmp_path / "texture_encoder.safetensors")}})
    m = build_stage1_model(cfg)
    for k, v in donor.texture_encoder.state_dict().items():
        assert torch.equal(m.texture_encoder.state_dict()[k], v), k


def test_stage1_initialisers_refuse_files_of_another_layout(tmp_path):
    from frfsr_train.training.build import build_stage1_model
    donor = FRFSR(FRFSRConfig.tiny())
    torch.save({f"RRDB_trunk.{k}": v for k, v in donor.sife.state_dict().items()}, tmp_path / "odd.pth")
    for key, layout in (("vgg19", "torchvision VGG19"), ("encoder", "C2-Matching feature extractor"),
                        ("sife", "ESRGAN RRDB")):
        cfg = load_config(TINY, {"init": {key: str(tmp_path / "odd.pth")}})
        with pytest.raises(ValueError, match=rf"init\.{key}=.*odd\.pth: this checkpoint is not in the {layout} layout"):
            build_stage1_model(cfg)


def test_gradient_accumulation_matches_the_larger_batch(tmp_path):
    """2 micro-batches of 1 give the update of one batch of 2 (same samples, mean L1 loss)."""
    states = []
    for name, bs, k in (("big", 2, 1), ("accum", 1, 2)):
        from accelerate.state import AcceleratorState
        AcceleratorState._reset_state(reset_partial_state=True)
        tr = _trainer(TINY, tmp_path / name, data__batch_size=bs, train__grad_accum=k, train__max_steps=1,
                      train__log_with=[])
        assert tr.fit() is True
        states.append(tr.unwrapped_model().state_dict())
    for key, v in states[0].items():
        torch.testing.assert_close(states[1][key], v, rtol=1e-4, atol=1e-6, msg=key)
    from accelerate.utils import set_seed
    set_seed(0)
    initial = FRFSR(FRFSRConfig.tiny()).state_dict()            # what the trainer starts from
    assert not torch.equal(initial["restoration.head.weight"], states[0]["restoration.head.weight"])
    assert torch.equal(initial["texture_encoder.lr_trunk.conv1_1.weight"], states[0]["texture_encoder.lr_trunk.conv1_1.weight"])


# ---------------------------------------------------------------------- failures keep what was saved
@pytest.mark.parametrize("value", [float("inf"), float("nan"), "-.inf"])
def test_non_finite_learning_rates_are_refused(value):
    from frfsr_train.training import ConfigError
    with pytest.raises(ConfigError, match=r"optim.lr must be a finite number > 0; got (inf|nan|-inf)"):
        load_config(TINY, {"optim": {"lr": value}} if not isinstance(value, str) else [f"optim.lr={value}"])
    with pytest.raises(ConfigError, match="optim.lr_d must be a finite number"):
        load_config(TINY, ["optim.lr_d=.nan"])


def test_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from frfsr_train.training.loop import NonFiniteLossError, Trainer
    original = Trainer._generator_losses

    def nan_at_step_3(self, sr, hr, full):
        losses = original(self, sr, hr, full)
        if self.step + 1 == 3:
            losses["l1"] = losses["l1"] * float("nan")
        return losses

    monkeypatch.setattr(Trainer, "_generator_losses", nan_at_step_3)
    tr = _trainer(TINY, tmp_path / "run")
    with pytest.raises(NonFiniteLossError, match=r"not finite at step 3 \(l1=nan.*last good checkpoint is .*ckpt-000002"):
        tr.fit()
    assert tr.step == 2                                   # stopped before the update of step 3
    assert all(bool(torch.isfinite(p).all()) for p in tr.unwrapped_model().parameters())
    root = tmp_path / "run" / "checkpoints"
    assert resolve_checkpoint(tmp_path / "run").name == "ckpt-000002"
    assert [p.name for _, p in ckpt_mod.list_checkpoints(root)] == ["ckpt-000002"]
    assert not (tmp_path / "run" / "final").exists()


def test_resume_skips_a_damaged_latest_checkpoint(uninterrupted, tmp_path):
    import shutil
    ref_out, ref_state = uninterrupted
    out = tmp_path / "run_d"
    shutil.copytree(ref_out / "checkpoints", out / "checkpoints")
    latest = out / "checkpoints" / "ckpt-000004"
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])      # truncated, as by a full disk
    tr = _trainer(TINY, out)
    with pytest.warns(RuntimeWarning, match=r"resumed from ckpt-000002.*skipped the damaged ckpt-000004"):
        assert tr.fit(resume="latest") is True
    assert tr.step == 4
    for k, v in tr.unwrapped_model().state_dict().items():   # steps 3-4 redone: the same weights
        assert torch.equal(v, ref_state[k]), k


def test_a_pretrained_model_takes_a_new_sife(tmp_path):
    """init.pretrained with another SIFE than the model's: every other tensor comes from it, the
    SIFE from init.sife, the fusion conv keeps its U-Net weights and starts at zero on the new
    SIFE's channels (so the model starts as the pretrained one without its SIFE);
    model.freeze_sife keeps the new SIFE fixed."""
    from frfsr_train.training.build import build_stage1_model
    torch.manual_seed(3)
    old = FRFSR(FRFSRConfig.tiny())                        # SIFE: 1 block, 16 features
    old.save_pretrained(tmp_path / "old")
    torch.manual_seed(4)
    donor = FRFSR(FRFSRConfig.tiny(sife_blocks=2, sife_feat=24, sife_grow=8))
    torch.save({"params": donor.sife.state_dict()}, tmp_path / "rrdb.pth")
    over = {"model": {"overrides": {"sife_blocks": 2, "sife_feat": 24, "sife_grow": 8}, "freeze_sife": True},
            "init": {"pretrained": str(tmp_path / "old"), "sife": str(tmp_path / "rrdb.pth")}}
    m = build_stage1_model(load_config(TINY, over))
    for k, v in donor.sife.state_dict().items():
        assert torch.equal(m.sife.state_dict()[k], v), k
    for k, v in old.state_dict().items():
        if not k.startswith("sife.") and "sife_fuse.weight" not in k:
            assert torch.equal(m.state_dict()[k], v), k
    w_new, w_old = m.restoration.sife_fuse.weight, old.restoration.sife_fuse.weight
    assert w_new.shape[1] == 24 + w_old.shape[1] - 16
    assert torch.equal(w_new[:, 24:], w_old[:, 16:]) and not w_new[:, :24].any()
    assert not any(p.requires_grad for p in m.sife.parameters())
    assert all(p.requires_grad for p in m.restoration.parameters())
    # the restoration net's output equals the pretrained model's with its SIFE's channels at zero
    lr, ref = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        tex = old.align(old.match(lr, ref))
        a = m.restoration(lr, m.sife(lr), tex)[0]
        b = old.restoration(lr, torch.zeros_like(old.sife(lr)), tex)[0]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="has another SIFE than model: set init.sife"):
        build_stage1_model(load_config(TINY, {"model": over["model"], "init": {"pretrained": str(tmp_path / "old")}}))
    with pytest.raises(ValueError, match="has another architecture than model"):
        build_stage1_model(load_config(TINY, {"model": {"overrides": {"ngf": 8}}, "init": over["init"]}))


def test_a_pretrained_model_takes_a_whole_prior_and_starts_as_it_was(tmp_path):
    """model.overrides.sife_upsampler with init.sife a whole RRDBNet x4 (upsampler included) and
    init.pretrained a model without one: the U-Net comes from init.pretrained, its head starts at
    zero on the prior's image, the prior's share of the base (its own Adam group) at zero, and the
    SIFE fusion conv at zero on the new SIFE's channels, so the model
    starts as the pretrained one without its SIFE; freeze_sife keeps the upsampler fixed too."""
    from frfsr.models.sife import RRDBNet
    from frfsr_train.training.build import build_stage1_model
    torch.manual_seed(3)
    old = FRFSR(FRFSRConfig.tiny())
    old.save_pretrained(tmp_path / "old")
    torch.manual_seed(4)
    prior = RRDBNet(2, 24, 8).eval()
    torch.save({"params_ema": prior.state_dict()}, tmp_path / "x4.pth")
    over = {"model": {"overrides": {"sife_blocks": 2, "sife_feat": 24, "sife_grow": 8, "sife_upsampler": True},
                      "freeze_sife": True},
            "init": {"pretrained": str(tmp_path / "old"), "sife": str(tmp_path / "x4.pth")}}
    m = build_stage1_model(load_config(TINY, over)).eval()
    assert not any(p.requires_grad for p in m.sife.parameters())
    assert all(p.requires_grad for p in m.restoration.parameters())
    head, old_head = m.restoration.head.weight, old.restoration.head.weight
    assert head.shape[1] == 6 and torch.equal(head[:, :3], old_head) and not head[:, 3:].any()
    assert not m.restoration.prior_mix.any()
    from frfsr_train.training.build import generator_param_groups
    groups = {g["name"]: g for g in generator_param_groups(m, load_config(TINY, over).optim)}
    assert groups["prior_mix"]["params"] == [m.restoration.prior_mix] and groups["prior_mix"]["lr"] == 1e-2
    for k, v in prior.state_dict().items():
        assert torch.equal(m.sife.state_dict()[k], v), k
    lr, ref = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        tex = old.align(old.match(lr, ref))
        expected = old.restoration(lr, torch.zeros_like(old.sife(lr)), tex)[0]
        torch.testing.assert_close(m(lr, ref), expected, atol=1e-5, rtol=1e-4)
    torch.save({"params_ema": {k: v for k, v in prior.state_dict().items() if not k.startswith(("conv_up", "conv_hr",
                                                                                               "conv_last"))}},
               tmp_path / "trunk.pth")
    over["init"]["sife"] = str(tmp_path / "trunk.pth")
    with pytest.raises(ValueError, match=r"init.sife=.*trunk.pth holds an RRDB trunk without its x4 upsampler"):
        build_stage1_model(load_config(TINY, over))


def test_export_default_reads_a_training_checkpoint(uninterrupted, tmp_path):
    """train/export_default.py on ckpt-N: the model of that step (architecture from the run's
    config), saved as a model folder with its card; the size limit is checked."""
    from benchmark_scripts import load_script
    out, final_state = uninterrupted
    export = load_script("train", "export_default")
    (tmp_path / "card.md").write_text("Test weights.")
    dest = tmp_path / "exported"
    assert export.main([str(out / "checkpoints" / "ckpt-000004"), "--card", str(tmp_path / "card.md"),
                        "--out", str(dest)]) == 0
    got = FRFSR.from_pretrained(dest).state_dict()
    for k, v in final_state.items():
        assert torch.equal(got[k], v.to(got[k].dtype)), k
    assert "Test weights." in (dest / "README.md").read_text()
    early = export.from_checkpoint(out / "checkpoints" / "ckpt-000002").state_dict()
    assert any(not torch.equal(early[k], v) for k, v in final_state.items() if v.is_floating_point())


def test_the_ops_backend_is_the_trained_models_not_the_process(tmp_path):
    """``train.ops_backend`` reaches every operator of the trained model and nothing outside it."""
    from frfsr import ops
    tr = _trainer(TINY, tmp_path / "run", train__ops_backend="reference")
    assert tr.model.ops_backend == "reference"
    assert {m.ops_backend for m in tr.model.modules() if hasattr(m, "ops_backend")} == {"reference"}
    assert not hasattr(ops, "set_backend") and not hasattr(ops, "use_backend")
    assert FRFSR(FRFSRConfig.tiny()).ops_backend is None       # a model built beside it is untouched
