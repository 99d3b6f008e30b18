"""The training loop of the restoration net, on Accelerate: :class:`Trainer` (stage 1; stage 2
is its subclass :class:`frfsr_train.training.stage2.Stage2Trainer`).

One optimiser step = ``train.grad_accum`` micro-batches of ``data.batch_size`` per process
(global batch ``batch_size x grad_accum x processes``). Stage 1 minimises the L1
reconstruction loss. Learning rates follow MultiStep milestones counted in optimiser steps.

With ``degradation.kind: realworld`` the LR of every micro-batch is made on the training
device from its HR by :class:`frfsr_train.data.realworld.RealWorldDegradation` (the data's bicubic
LR is dropped); the Ref stays as the data gives it.

Reproducibility: the data order and augmentations are a function of (seed, epoch, index)
only (each epoch's dataset is seeded and its permutation drawn from a seeded generator), so
a resumed run sees exactly the batches an uninterrupted one would; the real-world
degradations come from a generator seeded by (seed, micro-batch, rank), on the training
device; the gradient penalty's interpolation weights come from a generator seeded by
(seed, step, rank) (:mod:`frfsr_train.seeds`, one stream each).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .. import seeds
from ..seeds import mix_seed
from .build import GeneratorNet, build_stage1_model, generator_param_groups
from .checkpoint import (CKPT_DIR, list_checkpoints, read_trainer_state, remove_stale, resolve_checkpoint,
                         save_checkpoint)
from .config import TrainConfig
from .trackers import CSVTracker

logger = logging.getLogger(__name__)

__all__ = ["Trainer", "collate_train", "state_hash"]

_KEYS = ("hr", "lr", "ref")


class ArchitectureMismatch(ValueError):
    """A checkpoint written by a model of another architecture (not a damaged one)."""


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN or Inf; the run stopped before updating the weights."""


def collate_train(items: list[dict]) -> dict:
    """Stack the tensors a training step needs (HR, LR, Ref)."""
    return {k: torch.stack([it[k] for it in items]) for k in _KEYS}


def state_hash(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state dict (names and exact bytes)."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Trainer:
    """Builds the model, optimiser, scheduler and data of a :class:`TrainConfig` and runs
    :meth:`fit`. :meth:`train_step` runs one optimiser step on given micro-batches (used by
    the benchmark).

    This class trains stage 1 (the L1 reconstruction loss); what stage 2 adds (the frozen
    stage-1 net, the perceptual and adversarial losses, the discriminator and its step) is
    :class:`frfsr_train.training.stage2.Stage2Trainer`, which ``Trainer(cfg)`` returns for a
    stage-2 config. The stage-specific parts are the methods :meth:`_build_model`,
    :meth:`_build_stage_parts`, :meth:`_prepare`, :meth:`_adversarial`,
    :meth:`_before_generator_step`, :meth:`_generator_losses`, :meth:`_discriminator_step`,
    :meth:`_learning_rates` and :meth:`_rank_state`."""

    def __new__(cls, cfg: TrainConfig, accelerator: Accelerator | None = None):
        if cls is Trainer and cfg.stage == 2:
            from .stage2 import Stage2Trainer
            cls = Stage2Trainer
        return super().__new__(cls)

    def __init__(self, cfg: TrainConfig, accelerator: Accelerator | None = None):
        self.cfg = cfg
        t = cfg.train
        self.stage = cfg.stage
        self.out = Path(t.output_dir)
        if t.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        self.csv = None
        trackers = []
        for name in t.log_with:
            if name == "csv":
                self.csv = CSVTracker(f"frfsr_stage{self.stage}", self.out)
                trackers.append(self.csv)
            else:
                trackers.append(name)
        self.acc = accelerator or Accelerator(mixed_precision=t.mixed_precision, log_with=trackers or None,
                                              project_dir=str(self.out))
        acc = self.acc
        if (acc.num_processes == 1 and "MASTER_ADDR" in os.environ and "RANK" not in os.environ
                and os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")):
            logger.warning("`accelerate launch --cpu --num_processes N` started ONE process: this accelerate "
                           "starts several CPU processes only under mpirun. For N CPU processes run "
                           "`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ...` or "
                           "`ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N ...`")
        set_seed(t.seed)                    # identical initialisation on every process
        self._build_models()
        self._prepare()
        acc.register_for_checkpointing(*self.schedulers)
        set_seed(t.seed, device_specific=True)
        self.degrade = None                 # real-world LR maker (degradation.kind: realworld)
        if cfg.degradation.kind == "realworld":
            from ..data.realworld import RealWorldDegradation
            self.degrade = RealWorldDegradation(cfg.degradation.options())
        self.step = 0                       # optimiser steps done
        self.micro = 0                      # micro-batches consumed per process
        self._data_ready = False

    # ------------------------------------------------------------------ construction
    def _build_models(self) -> None:
        o = self.cfg.optim
        model = self._build_model()
        model.check_inputs = False          # no host syncs for NaN checks in the hot loop
        model.set_ops_backend(self.cfg.train.ops_backend)
        self.model = model
        self.net = GeneratorNet(model).train()
        groups = generator_param_groups(model, o)
        self.opt_g = torch.optim.Adam(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        self.sched_g = torch.optim.lr_scheduler.MultiStepLR(self.opt_g, o.milestones, o.gamma)
        self.schedulers = [self.sched_g]
        self._build_stage_parts()

    def _build_model(self):
        """The :class:`FRFSR` to train."""
        return build_stage1_model(self.cfg)

    def _build_stage_parts(self) -> None:
        """What the stage adds to the generator and its optimiser (stage 1: nothing)."""

    def _prepare(self) -> None:
        """Hand the modules and optimisers to Accelerate (device placement, DDP)."""
        self.net, self.opt_g = self.acc.prepare(self.net, self.opt_g)

    # ------------------------------------------------------------------ data
    def _data_root(self) -> Path | None:
        d = self.cfg.data
        if d.views is not None:             # photos from scikit-image, no folder
            return None
        root = Path(d.root) if d.root else self.out / "data"
        if d.synthetic is not None:         # every process reaches the barrier, whoever generates
            if self.acc.is_main_process and not (root / "input").is_dir():
                import shutil

                from .synthetic import make_cufed_train
                s = d.synthetic
                tmp = root.with_name(root.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                make_cufed_train(tmp, s.num_images, s.size, s.seed)
                root.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(root / "ref", ignore_errors=True)
                os.rename(tmp / "ref", root / "ref")
                os.rename(tmp / "input", root / "input")      # last: its presence marks complete data
                shutil.rmtree(tmp, ignore_errors=True)
            self.acc.wait_for_everyone()
        return root

    def _epoch_seed(self, epoch: int) -> int:
        return mix_seed(seeds.EPOCH, self.cfg.train.seed, epoch) % (2 ** 31)

    def _dataset(self, epoch: int):
        d = self.cfg.data
        if d.views is not None:
            return self._views_dataset(epoch)
        from ..data import CUFEDTrainDataset
        return CUFEDTrainDataset(self.root, patch=d.patch, augment=d.augment, shuffle_level=d.shuffle_level,
                                 ref_jitter=d.ref_jitter, seed=self._epoch_seed(epoch))

    def _views_dataset(self, epoch: int):
        """Ref/LR views of the training photos (never a held-out photo of any source), seeded per epoch."""
        from ..data.photos import split_of
        from ..data.views import TRAIN_PHOTOS, ViewPairDataset, load_photos
        d, v = self.cfg.data, self.cfg.data.views
        if getattr(self, "_photos", None) is None:
            names = list(v.photos or TRAIN_PHOTOS)
            leaked = sorted(str(n) for n in names if split_of(n) == "heldout")
            if leaked:
                raise ValueError(f"data.views.photos includes held-out photo(s) {leaked}; they are for evaluation only")
            self._photos = load_photos(names)
        return ViewPairDataset(self._photos, patch=d.patch, ref_patch=v.ref_patch, length=v.length,
                               flip=d.augment, seed=self._epoch_seed(epoch), **v.view_arguments())

    def _setup_data(self) -> None:
        if self._data_ready:
            return
        self.root = self._data_root()
        dataset = self._dataset(0)
        files = getattr(dataset, "files", None)
        if files is not None:                 # every file opens, before step 1
            from ..data.datasets import check_readable
            check_readable(files())
        n = len(dataset)
        world, bs = self.acc.num_processes, self.cfg.data.batch_size
        self.batches_per_epoch = (n // world) // bs
        if self.batches_per_epoch < 1:
            raise ValueError(f"{self.root or 'data.views'} has {n} training pairs, fewer than batch_size={bs} x {world} processes")
        self._data_ready = True

    def _rank_indices(self, epoch: int, n: int) -> list[int]:
        world, bs = self.acc.num_processes, self.cfg.data.batch_size
        g = torch.Generator().manual_seed(self._epoch_seed(epoch))
        perm = torch.randperm(n, generator=g)[: (n // world) * world]
        return perm[self.acc.process_index::world][: self.batches_per_epoch * bs].tolist()

    def _batches(self, start_micro: int):
        """Micro-batches of this process from micro-batch ``start_micro`` on, forever."""
        self._setup_data()
        d = self.cfg.data
        epoch, offset = divmod(start_micro, self.batches_per_epoch)
        micro = start_micro
        while True:
            ds = self._dataset(epoch)
            indices = self._rank_indices(epoch, len(ds))[offset * d.batch_size:]
            loader = DataLoader(ds, batch_size=d.batch_size, sampler=indices, num_workers=d.num_workers,
                                collate_fn=collate_train, drop_last=True,
                                pin_memory=self.acc.device.type == "cuda")
            for batch in loader:
                batch = {k: v.to(self.acc.device, non_blocking=True) for k, v in batch.items()}
                if self.degrade is not None:
                    batch["lr"] = self.degraded_lr(batch["hr"], micro, clean=batch["lr"])
                micro += 1
                yield batch
            epoch, offset = epoch + 1, 0

    def degraded_lr(self, hr: torch.Tensor, micro: int, clean: torch.Tensor | None = None) -> torch.Tensor:
        """The real-world LR of micro-batch number ``micro`` (of this process) from its HR, on
        the HR's device; the same for the same (seed, micro, rank). ``clean``: the data's LR,
        kept for a share ``degradation.clean_prob`` of the samples."""
        from ..data.realworld import device_generator
        g = device_generator(hr.device, mix_seed(seeds.DEGRADATION, self.cfg.train.seed, micro, self.acc.process_index))
        with torch.no_grad():
            return self.degrade(hr, generator=g, clean=clean)

    # ------------------------------------------------------------------ one step
    def _adversarial(self, step: int) -> bool:
        """Whether optimiser step ``step`` trains against a discriminator (stage 1: never)."""
        return False

    def _before_generator_step(self, adversarial: bool) -> None:
        """Called before the generator's micro-batches of a step (stage 1: nothing to do)."""

    def _generator_losses(self, sr, hr, adversarial: bool) -> dict[str, torch.Tensor]:
        """The generator's losses of one micro-batch (stage 1: the L1 reconstruction loss)."""
        return {"l1": self.cfg.loss.pixel * F.l1_loss(sr, hr)}

    def _discriminator_step(self, batches: list[dict], fakes: list[torch.Tensor], step: int, adversarial: bool,
                            add) -> None:
        """What follows the generator's update in a step (stage 1: nothing)."""

    def train_step(self, batches: list[dict]) -> dict[str, torch.Tensor]:
        """One optimiser step over the given micro-batches (dicts of device tensors ``hr``,
        ``lr``, ``ref``); returns the step's losses averaged over the micro-batches."""
        acc, o = self.acc, self.cfg.optim
        step = self.step + 1
        adversarial = self._adversarial(step)
        k = len(batches)
        logs: dict[str, torch.Tensor] = {}

        def add(name, value):
            logs[name] = logs.get(name, 0.0) + value.detach().float() / k

        self.net.train()
        self._before_generator_step(adversarial)
        self.opt_g.zero_grad(set_to_none=True)
        fakes = []
        for i, b in enumerate(batches):
            with acc.no_sync(self.net) if i < k - 1 else nullcontext():
                with acc.autocast():
                    sr = self.net(b["lr"], b["ref"])
                    losses = self._generator_losses(sr, b["hr"], adversarial)
                    total = sum(losses.values())
                acc.backward(total / k)
            for name, v in losses.items():
                add(name, v)
            add("g_total", total)
            if adversarial:
                fakes.append(sr.detach())
        self._check_finite(step, logs)
        if o.max_grad_norm:
            acc.clip_grad_norm_(self.net.parameters(), o.max_grad_norm)
        self.opt_g.step()
        self.sched_g.step()
        self._discriminator_step(batches, fakes, step, adversarial, add)
        self.step = step
        return logs

    def _check_finite(self, step: int, logs: dict[str, torch.Tensor]) -> None:
        """Stop before the optimiser step when a loss is NaN or Inf on any process: the weights
        and the last checkpoint stay as they were."""
        bad = torch.tensor(0.0 if bool(torch.isfinite(logs["g_total"])) else 1.0, device=self.acc.device)
        if self.acc.num_processes > 1:
            bad = self.acc.reduce(bad, reduction="sum")
        if bad.item():
            values = ", ".join(f"{k}={float(v):.4g}" for k, v in logs.items())
            last = resolve_checkpoint(self.out)
            raise NonFiniteLossError(
                f"the loss is not finite at step {step} ({values}); training stopped before this step's update. "
                f"The last good checkpoint is {last if last else 'none (no checkpoint was saved yet)'}; lower "
                "optim.lr, set optim.max_grad_norm or train.mixed_precision: no, and resume from it")

    # ------------------------------------------------------------------ checkpoints
    def trainer_state(self) -> dict:
        return {"step": self.step, "micro_batches": self.micro, "stage": self.stage,
                "num_processes": self.acc.num_processes, "batch_size": self.cfg.data.batch_size,
                "grad_accum": self.cfg.train.grad_accum, "model_config": self.unwrapped_model().config.to_dict()}

    def save(self) -> Path:
        return save_checkpoint(self.acc, self.out, self.step, self.trainer_state(), self.cfg.train.keep_checkpoints)

    def load(self, ckpt) -> None:
        """Restore models, optimisers, schedulers, RNG states and the step counter."""
        st = read_trainer_state(ckpt)
        if st.get("stage", self.stage) != self.stage:
            raise ArchitectureMismatch(f"{ckpt} is a stage-{st['stage']} checkpoint; this is a stage-{self.stage} run")
        ours = self.unwrapped_model().config.to_dict()
        theirs = st.get("model_config")
        if isinstance(theirs, dict):
            differ = [f"{k} {theirs.get(k)!r} there, {v!r} here" for k, v in ours.items()
                      if k != "name" and theirs.get(k) != v]
            if differ:
                raise ArchitectureMismatch(f"{ckpt} was written by a model of another architecture ({'; '.join(differ)}); "
                                           "resume with the config it was trained with, or train into a new output_dir")
        try:
            self.acc.load_state(str(ckpt))
        except RuntimeError as e:
            if "size mismatch" in str(e) or "Missing key" in str(e) or "Unexpected key" in str(e):
                raise ArchitectureMismatch(f"{ckpt} was written by a model of another architecture (its tensors do not "
                                           "fit this config); resume with the config it was trained with, or train "
                                           "into a new output_dir") from None
            raise
        self.step = int(st["step"])
        self.micro = int(st["micro_batches"])
        same = (st.get("num_processes"), st.get("batch_size")) == (self.acc.num_processes, self.cfg.data.batch_size)
        if not same:                        # keep the number of samples seen, not the per-process count
            seen = self.micro * st["batch_size"] * st["num_processes"]
            self.micro = seen // (self.cfg.data.batch_size * self.acc.num_processes)
            logger.warning("resuming with a different batch size or number of processes: the data order "
                           "differs from an uninterrupted run")
        logger.info("resumed from %s at step %d", ckpt, self.step)

    def _resume(self, resume: str, ckpt_root: Path) -> None:
        """Load ``resume`` ('latest' or a folder). For 'latest', a checkpoint that cannot be
        read (damaged, truncated) is skipped with a warning for the newest one that can."""
        ckpt = resolve_checkpoint(self.out, resume)
        if ckpt is None:
            logger.warning("--resume: no checkpoint in %s, starting from scratch", ckpt_root)
            return
        if resume != "latest":
            self.load(ckpt)
            return
        candidates = [ckpt] + [p for _, p in reversed(list_checkpoints(ckpt_root)) if p != ckpt]
        errors = []
        for p in candidates:
            try:
                self.load(p)
            except ArchitectureMismatch:    # not damaged: another model's checkpoints
                raise
            except Exception as e:          # any reader's error: safetensors, pickle, json
                errors.append(f"{p.name}: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}")
                logger.warning("checkpoint %s cannot be loaded (%s); trying the previous one", p, errors[-1])
                continue
            if errors:
                warnings.warn(f"resumed from {p.name}, the newest checkpoint that loads; skipped the damaged "
                              f"{'; '.join(errors)}", RuntimeWarning, stacklevel=3)
            return
        raise RuntimeError(f"--resume: no checkpoint in {ckpt_root} can be loaded ({'; '.join(errors)}); remove "
                           "the damaged folders or start without --resume")

    def unwrapped_model(self):
        """The :class:`FRFSR` being trained (no DDP wrapper)."""
        return self.acc.unwrap_model(self.net).model

    def dump_rank_state(self, path=None) -> Path:
        """Write this process's weight hashes to ``<output_dir>/rank_state/rank<i>.json`` (tests)."""
        p = Path(path or self.out / "rank_state")
        p.mkdir(parents=True, exist_ok=True)
        info = {"step": self.step, "rank": self.acc.process_index, "generator": state_hash(self.unwrapped_model()),
                **self._rank_state()}
        f = p / f"rank{self.acc.process_index}.json"
        f.write_text(json.dumps(info, indent=2) + "\n")
        return f

    def _agree(self, flag: bool) -> bool:
        """``flag`` of any process, on every process (each reads its own clock; all stop at
        the same step)."""
        if self.acc.num_processes == 1:
            return flag
        return bool(self.acc.reduce(torch.tensor(float(flag), device=self.acc.device), reduction="sum").item() > 0)

    def _rank_state(self) -> dict[str, str]:
        """Hashes of the stage's other trained modules (stage 1: none)."""
        return {}

    # ------------------------------------------------------------------ the loop
    def _learning_rates(self) -> dict[str, float]:
        """The current learning rate of each parameter group, as logged (``lr_<group>``)."""
        return {f"lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(self.opt_g.param_groups)}

    def fit(self, resume: str | None = None, stop_after: int | None = None) -> bool:
        """Train to ``train.max_steps`` (or until ``train.max_minutes`` of wall time have passed
        since this call, counted from its first step), checkpointing every
        ``train.checkpoint_every`` steps and at the end, then export the weights to
        ``<output_dir>/final``; a run stopped by the time limit resumes from its last
        checkpoint to ``max_steps`` with ``--resume``. ``resume``:
        ``'latest'`` or a checkpoint folder. ``stop_after``: return after that step (and
        its checkpoint, if one falls due) without exporting, as a killed run would. Returns
        True when the run completed."""
        acc, t = self.acc, self.cfg.train
        ckpt_root = self.out / CKPT_DIR
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_stale(ckpt_root)
            (self.out / f"config_stage{self.stage}.yaml").write_text(self.cfg.to_yaml())
        acc.wait_for_everyone()
        if resume:
            self._resume(resume, ckpt_root)
        acc.init_trackers(f"frfsr_stage{self.stage}", config=_flat(self.cfg.to_dict()))
        if self.csv is not None and acc.is_main_process:
            self.csv.truncate_after(self.step)
        self._setup_data()
        batches = self._batches(self.micro)
        k, bs = t.grad_accum, self.cfg.data.batch_size
        bar = tqdm(total=t.max_steps, initial=self.step, desc=f"stage {self.stage}", dynamic_ncols=True,
                   disable=not acc.is_local_main_process)
        tick, tick_step = time.perf_counter(), self.step
        deadline = None if t.max_minutes is None else time.perf_counter() + 60 * t.max_minutes
        completed = True
        try:
            while self.step < t.max_steps:
                micro = [next(batches) for _ in range(k)]
                self.micro += k
                logs = self.train_step(micro)
                step = self.step
                if step % t.log_every == 0 or step == t.max_steps or step == 1:
                    values = {name: acc.reduce(v.to(acc.device), reduction="mean").item() for name, v in logs.items()}
                    now = time.perf_counter()
                    values["samples_per_s"] = (step - tick_step) * k * bs * acc.num_processes / max(now - tick, 1e-9)
                    values["epoch"] = self.micro // self.batches_per_epoch
                    values.update(self._learning_rates())
                    tick, tick_step = now, step
                    acc.log(values, step=step)
                    bar.set_postfix({n: f"{values[n]:.4g}" for n in ("l1", "perceptual", "adversarial", "d_loss")
                                     if n in values})
                bar.update(1)
                out_of_time = deadline is not None and self._agree(time.perf_counter() >= deadline)
                if step % t.checkpoint_every == 0 or step == t.max_steps or out_of_time:
                    self.save()
                if out_of_time and step < t.max_steps:
                    logger.info("train.max_minutes (%g) reached at step %d of %d: the weights are exported; "
                                "--resume continues to max_steps", t.max_minutes, step, t.max_steps)
                    break
                if stop_after is not None and step >= stop_after and step < t.max_steps:
                    completed = False
                    break
        finally:
            bar.close()                     # an error is printed on a line of its own
        if completed:
            acc.wait_for_everyone()
            if acc.is_main_process:
                path = self.unwrapped_model().save_pretrained(
                    self.out / "final", description=f"FRFSR stage-{self.stage} weights trained with frfsr_train.training "
                                                    f"({self.step} steps)")
                logger.info("final weights exported to %s", path)
            acc.wait_for_everyone()
        acc.end_training()
        return completed


def _flat(d: dict, prefix: str = "") -> dict:
    """Nested config -> {'section.key': scalar} (trackers take scalars only)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out
