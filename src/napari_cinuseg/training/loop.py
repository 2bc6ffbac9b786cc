"""The optimisation loop shared by the base and incremental steps (steps.py): crops, SGD with the
poly schedule, the prior's forward pass, out-of-memory handling, typed progress events, the
step's record (loss curve, ATT share, forgetting report) and the atomic save."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..analysis.forgetting import old_class_agreement
from ..datasets.labelled import IGNORE, TrainingPair, labelled_share
from ..losses import LossOutput
from ..methods import StepContext, settings_of
from ..model.file import save_model
from ..model.segmenter import CiNuSegModel, StepRecord, image_batch
from ..runtime import devices
from ..runtime.events import (
    CancelFlag,
    Cancelled,
    Event,
    IterationSkipped,
    MemoryReduced,
    Progress,
    Saved,
    StepFinished,
    StepStarted,
    is_cancelled,
)
from . import distributed
from .crops import CropDataset
from .settings import TrainSettings
from .tally import Tally, crop_stats, loss_curve


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _freeze_batchnorm(net: torch.nn.Module) -> None:
    """Keep BatchNorm's running statistics as the prior learned them (its affine weights still
    train): an incremental step sees only the new class's images, often a handful at batch 1,
    and re-estimating the statistics there shifts every old class's features."""
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def poly_lr(base: float, iteration: int, total: int, power: float) -> float:
    """The poly schedule: base · (1 − it/total)^power, it counted from 0."""
    return base * (1 - iteration / total) ** power


def clip_gradient(
    params: Sequence[torch.nn.Parameter], classifier: torch.nn.Module, rows: Sequence[int], limit: float, factor: float
) -> float:
    """Clip the gradient's global L2 norm to ``limit`` (0 = no clipping), the same for every
    method. The new classes' classifier ``rows`` (zero weights at the start, nothing to keep) are
    clipped on their own, so that the large gradient of the rest cannot shrink theirs to nothing,
    and then step ``factor`` times further (SGD's per-row learning rate). Returns the norm of the
    whole gradient before clipping, the new rows' included (not finite: the step must be skipped)."""
    limit = limit if limit > 0 else float("inf")
    params = [p for p in params if p.grad is not None]
    weight, bias = classifier.weight, classifier.bias
    if not rows or weight.grad is None:
        return float(torch.nn.utils.clip_grad_norm_(params, limit))
    rows = list(rows)
    own = [p for p in (weight, bias) if p is not None and p.grad is not None]
    new_grads = [p.grad[rows].clone() for p in own]
    for p in own:
        p.grad[rows] = 0
    rest = torch.nn.utils.clip_grad_norm_(params, limit)
    new = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in new_grads]))
    scale = (limit / (new + 1e-6)).clamp(max=1.0) if math.isfinite(limit) else torch.ones_like(new)
    for p, g in zip(own, new_grads):
        p.grad[rows] = (g * scale * factor).to(p.grad.dtype)
    return float(torch.sqrt(rest.float() ** 2 + new.float() ** 2))


@dataclass
class _Loop:
    """One step's optimisation, shared by the base and incremental steps."""

    model: CiNuSegModel
    pairs: Sequence[TrainingPair]
    channel_of_target: list[int]  # step target value → channel id (index 0 → 0)
    loss_fn: Callable[[torch.Tensor, object, torch.Tensor], LossOutput]
    prior: CiNuSegModel | None
    settings: TrainSettings
    lr: float
    step: int
    method: str
    hooks: object | None = None  # the Method, for its optional prepare/finish hooks
    freeze_bn: bool = False
    new_classes: tuple[int, ...] = ()
    memory_notes: list[str] = field(default_factory=list)  # batches reduced for lack of memory
    # The model the step started from, for the forgetting report (forgetting.py); set for every
    # incremental step, also when the method itself never looks at the prior.
    report_prior: CiNuSegModel | None = None
    _extra: list = field(default_factory=list)  # a method's training-only parameters

    def _context(self, device: torch.device, lut: torch.Tensor) -> StepContext:
        def batches():
            for pair in self.pairs:  # whole images, one at a time, no augmentation
                image = image_batch(pair.image, device)
                target = torch.from_numpy(np.require(pair.target, requirements="CW")).long()[None]
                yield self.model.normalize(image), lut[target].to(device)

        share = labelled_share(self.pairs, len(self.channel_of_target))  # the values the table maps
        return StepContext(self.prior, self.model, list(self.new_classes), self.settings, device, batches, share)

    def _iteration(self, images, target, gear: _Gear) -> tuple[LossOutput, str | None, float]:
        """One optimisation step on one batch of crops: (the loss, why the optimiser did not
        step or None, the gradient's norm before clipping)."""
        device, amp, opt, scaler = gear.device, gear.amp, gear.opt, gear.scaler
        net, prior_net = gear.train_net, gear.prior_net
        images = images.to(device, non_blocking=True)
        labels = gear.lut[target].to(device, non_blocking=True)
        x = self.model.normalize(images)
        with devices.autocast(device, amp):
            old = None
            if prior_net is not None:
                with torch.no_grad():
                    old = prior_net(x)
            output = net(x)
            result = self.loss_fn(labels, output, old)
        opt.zero_grad(set_to_none=True)
        # Backward also on a non-finite loss: under torchrun every rank must take part in the
        # gradients' all-reduce, and the non-finite gradient then tells every rank to skip.
        scaler.scale(result.loss).backward()
        distributed.average_gradients(self._extra)  # DDP averages the network's own
        scaler.unscale_(opt)  # clipping acts on the true gradient (a no-op without fp16)
        norm = self._clip_gradient(opt)
        skipped = None
        if not bool(torch.isfinite(result.loss.detach())):
            skipped = "loss"
        elif not math.isfinite(norm) and not scaler.is_enabled():
            skipped = "gradient"  # (with fp16 the scaler skips such a step itself and rescales)
        if skipped is None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.zero_grad(set_to_none=True)
            if scaler.is_enabled():
                scaler.update()
        return result, skipped, norm

    def _clip_gradient(self, opt) -> float:
        """:func:`clip_gradient` of every parameter the optimiser holds, with this step's new
        classifier rows."""
        params = [p for g in opt.param_groups for p in g["params"]]
        s = self.settings
        return clip_gradient(params, self.model.network.classifier, list(self.new_classes), s.grad_clip, s.new_class_lr)

    def _smaller_batch(self, batch: int, device, world: int, rank: int) -> int:
        """The batch after running out of memory at ``batch``: half of it, or a clear error where
        it cannot shrink (one crop, or one rank of several)."""
        devices.release(device)
        if world > 1:
            raise MemoryError(
                f"the {devices.describe(device)} of rank {rank} ran out of memory with a batch "
                f"of {batch // world} crops; run again with a smaller --batch-size"
            )
        if batch == 1:
            raise MemoryError(
                f"the {devices.describe(device)} ran out of memory with a batch of one "
                f"{self.settings.crop_size}-px crop; choose a smaller crop size, or the CPU"
            ) from None
        self.memory_notes.append(f"out of memory at batch {batch}: went on with {batch // 2}")
        return batch // 2

    def _skipped(self, skips: list[dict], it: int, reason: str, value: float) -> IterationSkipped:
        """Record an iteration whose ``reason`` (the loss, or the gradient) was not finite and
        whose SGD step was not taken; too many of them end the step with a clear error."""
        limit = self.settings.max_skipped
        skips.append({"iteration": it, "reason": reason, "value": value})
        if len(skips) > limit:
            raise FloatingPointError(
                f"the loss or its gradient was not finite in {len(skips)} iterations "
                f"(the first at iteration {skips[0]['iteration']}, the last at {it}); nothing "
                "was saved and the prior model is unchanged. Lower the learning rate "
                "(lr_step) or check the annotations"
            )
        return IterationSkipped(
            step=self.step,
            iteration=it,
            reason=reason,
            value=value,
            skipped=len(skips),
            message=(
                f"iteration {it}: the {reason} was {value}; the weights were left as they "
                f"were ({len(skips)} iteration(s) skipped so far, at most {limit})"
            ),
        )

    def _record(self, results: dict) -> StepRecord:
        """The step's record in the model: method, classes, settings (with every setting of the
        method's own, as it trained), images and ``results``."""
        settings = self.settings.to_dict()
        settings["method_settings"] = settings_of(self.hooks) if self.hooks is not None else {}
        return StepRecord(
            step=self.step,
            method=self.method,
            new_classes=[c.name for c in self.model.classes if c.step == self.step],
            settings=settings,
            data={"images": [p.name for p in self.pairs], "num_images": len(self.pairs)},
            results=results,
        )

    def run(self, cancel: CancelFlag, out) -> Generator[Event, None, CiNuSegModel | None]:
        """The step: its crops and networks made ready, the iterations (cancel checked before
        each), the method's finish hook and the forgetting report, then its record and save."""
        s = self.settings
        seed_everything(s.seed)
        device = distributed.init_from_env(devices.resolve_device(s.device))  # torchrun: this rank's
        dataset = CropDataset(
            self.pairs,
            s.crop_size,
            s.seed,
            length=s.batch_size,
            stain_jitter=s.stain_jitter,
            scale_jitter=s.scale_jitter,
            painted_share=s.painted_crops if self.new_classes else 0.0,
        )
        per_epoch = max(len(dataset) // s.batch_size, 1)  # the global batch, over all ranks
        total = s.iterations or max(s.epochs * per_epoch, s.min_iterations)
        gear = self._gear(device)
        yield StepStarted(
            step=self.step,
            method=self.method,
            device=devices.describe(device),
            total_iterations=total,
            iterations_per_epoch=per_epoch,
            num_images=len(dataset),
            classes=tuple(c.name for c in self.model.classes if c.step == self.step),
            model=self.model,
        )
        tally = Tally(t0=time.perf_counter())
        prepare = getattr(self.hooks, "prepare", None)
        finish = getattr(self.hooks, "finish", None)
        ctx = self._context(device, gear.lut) if (prepare or finish) else None
        try:
            if prepare is not None:
                prepare(ctx)
            self._add_extra_parameters(gear.opt)
            done = yield from self._iterations(dataset, total, gear, tally, cancel)
            if not done:
                return None
            if finish is not None:
                finish(ctx)
            forgetting = None
            if self.report_prior is not None and not is_cancelled(cancel):
                forgetting = old_class_agreement(self.report_prior, self.model, self.pairs, device)
        finally:
            # Release the device whatever happened: finished, cancelled, failed or closed.
            gear.net.cpu()
            if gear.prior_net is not None:
                gear.prior_net.cpu()
            devices.release(device)

        seconds = time.perf_counter() - tally.t0
        self.model.steps.append(self._record(self._results(tally, seconds, gear, forgetting)))
        path = None
        if out is not None and distributed.is_main():  # one writer under torchrun
            path = str(save_model(self.model, out))
            yield Saved(path)
        yield StepFinished(step=self.step, model=self.model, seconds=seconds, path=path)
        return self.model

    def _gear(self, device: torch.device) -> _Gear:
        """The networks on the device (the prior frozen in eval mode, BatchNorm frozen where the
        step keeps it), the optimiser, the fp16 scaler and the target → channel table."""
        s = self.settings
        world, rank = distributed.world_size(), distributed.rank()
        amp = devices.amp_dtype(device, s.amp)
        lut = torch.full((256,), IGNORE, dtype=torch.long)
        for local, ch in enumerate(self.channel_of_target):
            lut[local] = ch
        net = self.model.network.to(device).train()
        if self.freeze_bn:
            _freeze_batchnorm(net)
        prior_net = None
        if self.prior is not None:
            # The prior runs under no_grad; its parameters' own flags are left alone, so a later
            # child() of the same model object can still learn.
            prior_net = self.prior.network.to(device).eval()
        opt = torch.optim.SGD(net.parameters(), lr=self.lr, momentum=s.momentum, weight_decay=s.weight_decay)
        train_net = net
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            train_net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
        scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
        return _Gear(device, world, rank, amp, lut, net, train_net, prior_net, opt, scaler)

    def _add_extra_parameters(self, opt) -> None:
        """A method's training-only modules (e.g. a projection head), optimised with the model's."""
        extra = getattr(self.hooks, "extra_parameters", None)
        if extra is not None:
            params = [p for p in extra() if p.requires_grad]
            if params:
                opt.add_param_group({"params": params})
                self._extra = params

    def _loader(self, dataset: CropDataset, batch: int, gear: _Gear):
        sampler = distributed.GlobalBatchSampler(len(dataset), batch, self.settings.seed, gear.rank, gear.world)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=sampler.local_batch,
            sampler=sampler,
            drop_last=True,
            num_workers=self.settings.num_workers,
            pin_memory=gear.device.type == "cuda",
            persistent_workers=False,  # workers must see set_epoch: crops differ per epoch
        )
        return loader, sampler

    def _iterations(self, dataset: CropDataset, total: int, gear: _Gear, tally: Tally, cancel: CancelFlag):
        """Epochs of crops until ``total`` iterations: each one optimised, skipped when not
        finite, or (out of memory) the epoch begun again with half the batch. Yields the events;
        returns False when cancelled."""
        s = self.settings
        batch = s.batch_size
        loader, sampler = self._loader(dataset, batch, gear)
        while tally.it < total:
            dataset.set_epoch(tally.epoch)
            sampler.set_epoch(tally.epoch)
            reduced = False
            for images, target, boxes in loader:
                if is_cancelled(cancel):
                    yield Cancelled(step=self.step, iteration=tally.it)
                    return False
                lr = poly_lr(self.lr, tally.it, total, s.poly_power)
                for group in gear.opt.param_groups:
                    group["lr"] = lr
                try:
                    result, skipped, grad_norm = self._iteration(images, target, gear)
                except Exception as exc:  # noqa: BLE001 - only an allocation failure is retried
                    if not devices.is_out_of_memory(exc):
                        raise
                    result = None  # handled below, once the exception (and its frames' tensors) is gone
                if result is None:
                    gear.opt.zero_grad(set_to_none=True)
                    before, batch = batch, self._smaller_batch(batch, gear.device, gear.world, gear.rank)
                    yield MemoryReduced(
                        "batch",
                        before,
                        batch,
                        f"the {devices.describe(gear.device)} ran out of memory with a batch of {before}; "
                        f"going on with {batch} (the same number of iterations, each on fewer crops)",
                    )
                    (loader, sampler), reduced = self._loader(dataset, batch, gear), True
                    break  # the same epoch again, with the smaller batch
                tally.it += 1
                it = tally.it
                loss = distributed.all_reduce_mean(float(result.loss.detach()), gear.device)
                if skipped is None and not math.isfinite(loss):
                    skipped = "loss"  # another rank's loss was not finite
                if skipped is not None:
                    yield self._skipped(tally.skips, it, skipped, loss if skipped == "loss" else grad_norm)
                    if it >= total:
                        break
                    continue
                tally.add(loss, result, grad_norm)
                if it % s.log_every == 0 or it == total:
                    yield Progress(
                        step=self.step,
                        epoch=tally.epoch,
                        iteration=it,
                        total=total,
                        loss=loss,
                        terms=dict(result.terms),
                        lr=lr,
                        seconds=time.perf_counter() - tally.t0,
                        crops=crop_stats(boxes, result),
                    )
                if it >= total:
                    break
            if not reduced:
                tally.epoch += 1
        return True

    def _results(self, tally: Tally, seconds: float, gear: _Gear, forgetting) -> dict:
        """The step record's results: iterations, time, final loss, device, loss curve, ATT
        share, forgetting report, memory notes and skipped iterations."""
        att_seen, att_fired = tally.att
        return {
            "iterations": tally.it,
            "epochs": tally.epoch,
            "seconds": round(seconds, 2),
            "final_loss": float(np.mean(tally.recent)) if tally.recent else None,
            "device": devices.describe(gear.device) + (f" × {gear.world} processes" if gear.world > 1 else ""),
            "loss_curve": loss_curve(tally.history),
            **({"att_fired_share": round(att_fired / att_seen, 4)} if att_seen else {}),
            **({"forgetting": forgetting} if forgetting is not None else {}),
            **({"memory": list(self.memory_notes)} if self.memory_notes else {}),
            "skipped_iterations": [{**k, "value": str(k["value"])} for k in tally.skips],
        }


@dataclass
class _Gear:
    """What one step trains with, on its device."""

    device: torch.device
    world: int
    rank: int
    amp: object
    lut: torch.Tensor  # step target value → channel id
    net: torch.nn.Module
    train_net: torch.nn.Module  # net, or its DistributedDataParallel wrapper under torchrun
    prior_net: torch.nn.Module | None
    opt: torch.optim.Optimizer
    scaler: object
