"""Stage 2 (paper III-A, eq. 1-4): the feature-reuse model built from a stage-1 export, and
its trainer.

The stage-1 restoration net becomes the frozen ``reuse_net`` whose 64-channel HR feature
the stage-2 net fuses; the texture encoder, the Ref extractor and the SIFE are taken from
stage 1 and frozen too. Only ``model.restoration`` (the stage-2 net) is trained, with L1
during the first ``loss.l1_warmup_steps`` steps, then L1 + perceptual + WGAN-GP with a
discriminator step per generator step (C2-Matching's schedule). With ``loss.disc_shift`` the
critic sees real and generated images moved by a random few pixels, a new draw in each step;
``loss.grid_penalty`` adds the SR's spectrum above the HR's at the LR grid's frequencies
(:func:`~frfsr_train.training.losses.grid_excess`) to the adversarial steps' losses.
"""
from __future__ import annotations

import dataclasses
import warnings
from contextlib import nullcontext

import torch

from frfsr import FRFSRConfig
from frfsr.models import FRFSR

from .build import freeze
from .. import seeds
from .loop import Trainer, state_hash

__all__ = ["stage2_config", "build_stage2_model", "trainable_names", "Stage2Trainer"]


def stage2_config(stage1: FRFSRConfig, reuse: bool = True) -> FRFSRConfig:
    """The architecture of the stage-2 model built from a stage-1 model of config ``stage1``:
    the same with ``stage=2`` (the frozen stage-1 net reused) or, for the ablation without
    reuse, the stage-1 architecture itself."""
    if stage1.stage != 1:
        raise ValueError(f"stage 2 is built from a stage-1 model; got a stage-{stage1.stage} config")
    return dataclasses.replace(stage1, stage=2) if reuse else stage1


def build_stage2_model(stage1_dir, from_stage1: bool = True, reuse: bool = True) -> FRFSR:
    """A stage-2 :class:`FRFSR` from the stage-1 export in ``stage1_dir``.

    ``reuse=False`` (the ablation of feature reuse): a plain stage-1-architecture model with
    the stage-1 weights, everything but ``restoration`` frozen, to be trained with the
    stage-2 losses like the reuse model.

    ``from_stage1`` also copies the stage-1 restoration weights into the stage-2 net where
    names and shapes match (the reuse fusion convs ``reuse_down`` / ``reuse_up`` keep their
    fresh initialisation)."""
    stage1 = FRFSR.from_pretrained(stage1_dir)
    cfg1, state1 = stage1.config, stage1.state_dict()
    if cfg1.stage != 1:
        raise ValueError(f"{stage1_dir} holds a stage-{cfg1.stage} model; stage 2 is built from a stage-1 export")
    model = FRFSR(stage2_config(cfg1, reuse))
    if not reuse:
        model.load_state_dict(state1, strict=True)
        for name, child in model.named_children():
            if name != "restoration":
                freeze(child)
        return model
    own = model.state_dict()
    state = {}
    for k, v in state1.items():
        if k.startswith("restoration."):
            state["reuse_net." + k[len("restoration."):]] = v
            if from_stage1 and k in own and own[k].shape == v.shape:
                state[k] = v
        else:
            state[k] = v
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith("restoration.")
           or (from_stage1 and not k.startswith("restoration.reuse_"))]
    if bad or unexpected:
        raise ValueError(f"{stage1_dir} does not match its config: missing {bad[:6]}, unexpected {unexpected[:6]}")
    for name, child in model.named_children():
        if name != "restoration":
            freeze(child)
    return model


def trainable_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


class Stage2Trainer(Trainer):
    """The stage-2 :class:`~frfsr_train.training.loop.Trainer` (``Trainer(cfg)`` returns one
    for a stage-2 config): the model from :func:`build_stage2_model`, a discriminator with its
    own Adam and MultiStep schedule, and the perceptual and adversarial generator losses after
    the L1 warm-up."""

    def _build_model(self) -> FRFSR:
        i = self.cfg.init
        return build_stage2_model(i.stage1, i.from_stage1, reuse=i.reuse)

    def _build_stage_parts(self) -> None:
        from .losses import PerceptualLoss, build_discriminator
        o, l = self.cfg.optim, self.cfg.loss
        self.disc = build_discriminator(l.disc, l.disc_ndf).train()
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=o.lr_d, betas=tuple(o.betas_d))
        self.sched_d = torch.optim.lr_scheduler.MultiStepLR(self.opt_d, o.milestones, o.gamma)
        self.schedulers.append(self.sched_d)
        if l.perceptual == 0:
            self.perceptual = None           # no perceptual net is built or loaded
        elif l.perceptual_net == "ref_extractor":
            from .perceptual import TrunkPerceptualLoss
            self.perceptual = TrunkPerceptualLoss(self.model.ref_extractor.vgg, l.perceptual_layer,
                                                  weight=l.perceptual, criterion=l.perceptual_criterion)
        elif l.perceptual_net == "rrdb":
            from .perceptual import RRDBPerceptualLoss, load_rrdb_trunk
            self.perceptual = RRDBPerceptualLoss(load_rrdb_trunk(l.rrdb_weights), l.perceptual_layer,
                                                 weight=l.perceptual, criterion=l.perceptual_criterion)
        else:
            self.perceptual = PerceptualLoss(l.perceptual_layer, weight=l.perceptual,
                                             criterion=l.perceptual_criterion, vgg_weights=l.vgg19_weights)

    def _prepare(self) -> None:
        self.net, self.disc, self.opt_g, self.opt_d = self.acc.prepare(self.net, self.disc, self.opt_g, self.opt_d)
        if self.perceptual is not None:
            self.perceptual.to(self.acc.device)

    def _adversarial(self, step: int) -> bool:
        return step > self.cfg.loss.l1_warmup_steps

    def _shift_generator(self, step: int, phase: int) -> torch.Generator:
        """The CPU generator of ``loss.disc_shift``'s draws in step ``step``: phase 0 the
        generator's update, 1 the critic's."""
        return torch.Generator().manual_seed(
            seeds.mix_seed(seeds.CRITIC_SHIFT, self.cfg.train.seed, step, phase, self.acc.process_index))

    def _before_generator_step(self, adversarial: bool) -> None:
        if adversarial:
            self.disc.requires_grad_(False)
            self.shift_g = self._shift_generator(self.step + 1, 0)

    def _generator_losses(self, sr, hr, adversarial: bool) -> dict[str, torch.Tensor]:
        losses = super()._generator_losses(sr, hr, adversarial)
        l = self.cfg.loss
        if adversarial:
            from .losses import detail_strength_gap, grid_excess, random_shift, wgan_generator_loss
            if self.perceptual is not None:
                losses["perceptual"] = self.perceptual(sr, hr)
            if l.adversarial > 0:
                seen = random_shift(sr, l.disc_shift, self.shift_g)
                losses["adversarial"] = l.adversarial * wgan_generator_loss(self.acc.unwrap_model(self.disc)(seen))
            if l.grid_penalty > 0:
                losses["grid"] = l.grid_penalty * grid_excess(sr, hr)
            if l.detail > 0:
                losses["detail"] = l.detail * detail_strength_gap(sr, hr, l.detail_cell)
        return losses

    def _discriminator_step(self, batches, fakes, step, adversarial, add) -> None:
        """A WGAN-GP step of the discriminator on the step's fakes (after the warm-up); its
        schedule counts every step, warm-up included."""
        acc, k = self.acc, len(batches)
        if adversarial and self.cfg.loss.adversarial > 0:
            from .losses import random_shift, wgan_gp_losses
            self.disc.requires_grad_(True)
            self.opt_d.zero_grad(set_to_none=True)
            g = torch.Generator().manual_seed(seeds.mix_seed(seeds.GRADIENT_PENALTY, self.cfg.train.seed, step, acc.process_index))
            shift, sg = self.cfg.loss.disc_shift, self._shift_generator(step, 1)
            for i, (b, fake) in enumerate(zip(batches, fakes)):
                with acc.no_sync(self.disc) if i < k - 1 else nullcontext():
                    with acc.autocast():
                        d = wgan_gp_losses(self.disc, random_shift(b["hr"], shift, sg), random_shift(fake, shift, sg),
                                           gp_weight=self.cfg.loss.gradient_penalty, generator=g)
                    acc.backward(d["d_loss"] / k)
                for name in ("d_loss", "d_wgan", "gp", "d_real", "d_fake"):
                    add(name, d[name])
            self.opt_d.step()
            self._sync_disc_buffers()
        with warnings.catch_warnings():     # during the warm-up the scheduler steps without the optimiser
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            self.sched_d.step()

    def _sync_disc_buffers(self) -> None:
        """Give every process rank 0's BatchNorm running statistics of the discriminator (DDP
        broadcasts them only at the start of its own forwards)."""
        if self.acc.num_processes > 1:
            for buf in self.acc.unwrap_model(self.disc).buffers():
                torch.distributed.broadcast(buf.data, src=0)

    def _rank_state(self) -> dict[str, str]:
        return {"discriminator": state_hash(self.acc.unwrap_model(self.disc))}

    def _learning_rates(self) -> dict[str, float]:
        return {**super()._learning_rates(), "lr_d": self.opt_d.param_groups[0]["lr"]}
