"""Trainer on views of scikit-image photos: trainable Ref extractor, stage 2 with and without reuse."""
import pytest
import torch

pytest.importorskip("skimage")

from frfsr_train.training import load_config  # noqa: E402
from frfsr_train.training.config import ConfigError  # noqa: E402

VIEWS = {"photos": ["camera", "coins", "brick"], "length": 8, "p_unrelated": 0.5, "p_shuffle": 0.5}


@pytest.fixture(autouse=True)
def _clean_accelerate():
    yield
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)


def _cfg(tmp_path, stage, **extra):
    d = {"stage": stage, "data": {"views": VIEWS, "patch": 64, "batch_size": 2, "num_workers": 0},
         "optim": {"milestones": [10]}, "loss": {"l1_warmup_steps": 1, "disc_ndf": 8},
         "train": {"max_steps": 2, "checkpoint_every": 2, "log_every": 1, "output_dir": str(tmp_path / f"s{stage}"),
                   "log_with": []}}
    if stage == 1:
        d["model"] = {"preset": "tiny", "train_ref_extractor": True}
    else:
        d["init"] = {"stage1": str(tmp_path / "s1" / "final")}
    for k, v in extra.items():
        sec, key = k.split("__")
        d.setdefault(sec, {})[key] = v
    p = tmp_path / f"cfg{stage}.yaml"
    import yaml
    p.write_text(yaml.safe_dump(d))
    return load_config(p)


def test_views_stage1_trains_the_ref_extractor_then_stage2_with_and_without_reuse(tmp_path):
    from frfsr_train.training import Trainer
    t = Trainer(_cfg(tmp_path, 1))
    before = {k: v.clone() for k, v in t.unwrapped_model().ref_extractor.state_dict().items()}
    enc_before = {k: v.clone() for k, v in t.unwrapped_model().texture_encoder.state_dict().items()}
    assert t.fit()
    m = t.unwrapped_model()
    assert any(not torch.equal(before[k], v) for k, v in m.ref_extractor.state_dict().items())
    assert all(torch.equal(enc_before[k], v) for k, v in m.texture_encoder.state_dict().items())
    from accelerate.state import AcceleratorState
    for reuse, stage in ((True, 2), (False, 1)):
        AcceleratorState._reset_state(reset_partial_state=True)
        cfg = _cfg(tmp_path, 2, init__reuse=reuse, loss__perceptual_net="ref_extractor",
                   loss__perceptual_layer="relu3_1", loss__perceptual_criterion="l1", loss__perceptual=0.05)
        cfg.train.output_dir = str(tmp_path / f"s2_{reuse}")
        t2 = Trainer(cfg)
        assert t2.unwrapped_model().config.stage == stage
        trainable = {n.split(".")[0] for n, p in t2.unwrapped_model().named_parameters() if p.requires_grad}
        assert trainable == {"restoration"}
        assert t2.fit()
        assert (tmp_path / f"s2_{reuse}" / "final" / "model.safetensors").is_file()
        # train/export_default.py reads the stage-2 checkpoint back as the same model
        from benchmark_scripts import load_script

        from frfsr import FRFSR
        got = load_script("train", "export_default").from_checkpoint(tmp_path / f"s2_{reuse}" / "checkpoints" / "ckpt-000002")
        final = FRFSR.from_pretrained(tmp_path / f"s2_{reuse}" / "final")
        assert got.config == final.config and got.config.stage == stage
        want = final.state_dict()
        assert all(torch.equal(v, want[k]) for k, v in got.state_dict().items())


def test_views_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="p_unrelated"):
        _cfg(tmp_path, 1, data__views={"p_unrelated": 1.5})
    with pytest.raises(ConfigError, match="data.views.p_aligned must be in"):
        _cfg(tmp_path, 1, data__views={"p_aligned": -0.1})
    with pytest.raises(ConfigError, match="perceptual_net"):
        _cfg(tmp_path, 1, loss__perceptual_net="resnet")
    with pytest.raises(ConfigError, match="loss.disc must be one of release, patch, patch_aa; got 'unet'"):
        _cfg(tmp_path, 2, loss__disc="unet")
    with pytest.raises(ConfigError, match="loss.grid_penalty must be a finite number >= 0; got -1.0"):
        _cfg(tmp_path, 2, loss__grid_penalty=-1.0)
    with pytest.raises(ConfigError, match="loss.detail must be a finite number >= 0; got -1.0"):
        _cfg(tmp_path, 2, loss__detail=-1.0)
    with pytest.raises(ConfigError, match=r"loss.detail_cell must be from 2 to data.patch - 2 \(62\); got 1"):
        _cfg(tmp_path, 2, loss__detail_cell=1)
    with pytest.raises(ConfigError, match="loss.disc_shift must be >= 0"):
        _cfg(tmp_path, 2, loss__disc_shift=-1)
    with pytest.raises(ConfigError, match=r"loss.disc_shift must be below half of data.patch \(32\); got 32"):
        _cfg(tmp_path, 2, loss__disc_shift=32)
    with pytest.raises(ConfigError, match="needs loss.rrdb_weights"):
        _cfg(tmp_path, 2, loss__perceptual_net="rrdb", loss__perceptual_layer="block2")
    with pytest.raises(ConfigError, match="perceptual_layer: an RRDB perceptual layer is conv_first or block<N>"):
        _cfg(tmp_path, 2, loss__perceptual_net="rrdb", loss__perceptual_layer="relu3_1", loss__rrdb_weights="x")
    with pytest.raises(ConfigError, match="loss.rrdb_weights: no file at"):
        _cfg(tmp_path, 2, loss__perceptual_net="rrdb", loss__perceptual_layer="block2",
             loss__rrdb_weights=str(tmp_path / "missing.safetensors"))


def test_heldout_photos_are_refused(tmp_path):
    from frfsr_train.training import Trainer
    t = Trainer(_cfg(tmp_path, 1, data__views={"photos": ["camera", "coffee"]}))
    with pytest.raises(ValueError, match="held-out"):
        t.fit()


def test_stage2_with_the_rrdb_perceptual_loss(tmp_path):
    """``loss.perceptual_net: rrdb``: stage 2 measures its outputs with the first blocks of RRDB weights."""
    from accelerate.state import AcceleratorState
    from safetensors.torch import save_file

    from frfsr.models.sife import RRDBNet
    from frfsr_train.training import Trainer
    from frfsr_train.training.perceptual import RRDBPerceptualLoss
    assert Trainer(_cfg(tmp_path, 1)).fit()
    torch.manual_seed(0)
    rrdb = tmp_path / "rrdb.safetensors"
    save_file(RRDBNet(n_blocks=3, feat=8, grow=4).state_dict(), str(rrdb))
    AcceleratorState._reset_state(reset_partial_state=True)
    t = Trainer(_cfg(tmp_path, 2, loss__perceptual_net="rrdb", loss__perceptual_layer="block2",
                     loss__rrdb_weights=str(rrdb), loss__perceptual=0.05))
    assert isinstance(t.perceptual, RRDBPerceptualLoss) and len(t.perceptual.features) == 3   # conv_first + 2 blocks
    assert t.fit()
    assert (tmp_path / "s2" / "final" / "model.safetensors").is_file()


def test_stage2_critic_sees_shifted_images(tmp_path, monkeypatch):
    """``loss.disc: patch_aa`` with ``loss.disc_shift``: the critic of the generator's update and
    of its own update sees shifted images (real and generated), with draws that differ by step
    and phase and repeat for the same seed; ``loss.grid_penalty`` adds its term to the
    adversarial step's generator losses."""
    from accelerate.state import AcceleratorState

    from frfsr_train.training import Trainer, losses
    from frfsr_train.training.losses import BlurDown, PatchCritic
    assert Trainer(_cfg(tmp_path, 1)).fit()
    AcceleratorState._reset_state(reset_partial_state=True)
    calls, real_shift = [], losses.random_shift

    def spy(x, max_shift, generator=None):
        out = real_shift(x, max_shift, generator)
        calls.append((tuple(x.shape), max_shift, x.requires_grad, not torch.equal(out, x)))
        return out

    monkeypatch.setattr(losses, "random_shift", spy)
    grid_terms, real_grid = [], losses.grid_excess
    monkeypatch.setattr(losses, "grid_excess", lambda sr, hr: grid_terms.append(real_grid(sr, hr)) or grid_terms[-1])
    t = Trainer(_cfg(tmp_path, 2, loss__disc="patch_aa", loss__disc_shift=4, loss__perceptual_net="ref_extractor",
                     loss__perceptual_layer="relu3_1", loss__perceptual_criterion="l1", loss__grid_penalty=2.0))
    critic = t.acc.unwrap_model(t.disc)
    assert isinstance(critic, PatchCritic) and any(isinstance(m, BlurDown) for m in critic.modules())
    assert t.fit()
    # step 1 is the L1 warm-up; step 2: the generator's sr, then the critic's real and fake
    assert [c[:3] for c in calls] == [((2, 3, 64, 64), 4, True), ((2, 3, 64, 64), 4, False),
                                      ((2, 3, 64, 64), 4, False)]
    assert all(c[3] for c in calls)     # every one moved (two samples, 81 offsets each)
    assert len(grid_terms) == 1 and grid_terms[0].requires_grad and grid_terms[0] >= 0   # step 2 only
    draws = [torch.randint(0, 9, (4,), generator=t._shift_generator(s, ph)).tolist() for s, ph in
             ((2, 0), (2, 1), (3, 0))]
    assert len({tuple(d) for d in draws}) == 3
    assert torch.randint(0, 9, (4,), generator=t._shift_generator(2, 0)).tolist() == draws[0]


def test_stage2_detail_term_without_a_critic(tmp_path, monkeypatch):
    """``loss.detail`` adds its term to every generator step after the warm-up; with
    ``loss.adversarial: 0`` and ``loss.perceptual: 0`` no perceptual net is built, the critic is
    not used, and the critic's weights stay as they were."""
    from accelerate.state import AcceleratorState

    from frfsr_train.training import Trainer, losses
    assert Trainer(_cfg(tmp_path, 1)).fit()
    AcceleratorState._reset_state(reset_partial_state=True)
    terms, real = [], losses.detail_strength_gap
    monkeypatch.setattr(losses, "detail_strength_gap",
                        lambda sr, hr, cell: terms.append((cell, real(sr, hr, cell))) or terms[-1][1])
    t = Trainer(_cfg(tmp_path, 2, loss__adversarial=0.0, loss__perceptual=0.0, loss__detail=2.0,
                     loss__detail_cell=16, train__max_steps=3))
    assert t.perceptual is None                                  # not built at weight 0
    critic = {k: v.clone() for k, v in t.acc.unwrap_model(t.disc).state_dict().items()}
    assert t.fit()
    assert [c for c, _ in terms] == [16, 16]                  # steps 2 and 3 (step 1 is the warm-up)
    assert all(v.requires_grad and v > 0 for _, v in terms)
    assert all(torch.equal(v, critic[k]) for k, v in t.acc.unwrap_model(t.disc).state_dict().items())
