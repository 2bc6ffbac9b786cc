"""The optimisation loop shared by the base and incremental steps (steps.py): crops, SGD with the
poly schedule, the prior's forward pass, out-of-memory handling, typed progress events, the
step's record (loss curve, ATT share, forgetting report) and the atomic save.

The nucleus separation (a network's separation head, model/network.py) is trained here, beside
whatever the method's loss is, since it knows no classes: regressed on the crops whose instances
are known, and in an incremental step distilled from the frozen prior's
(losses/separation.py), each weighted by ``settings.separation_weight``."""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..analysis.forgetting import old_class_agreement
from ..datasets.labelled import TrainingPair, labelled_share
from ..losses import LossOutput
from ..losses.separation import separation_distillation, separation_loss
from ..methods import Method, StepBatch, StepContext, settings_of
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
from .gear import Gear, clip_gradient, make_gear, poly_lr, seed_everything
from .settings import TrainSettings
from .tally import Tally, crop_stats, loss_curve


@dataclass
class StepLoop:
    """One step's optimisation, shared by the base and incremental steps: the ``method``'s hooks
    and its loss on a :class:`~napari_cinuseg.methods.StepBatch` the loop builds at every
    iteration. ``record_as``: the method's name in the step's record (the base step's is "base")."""

    model: CiNuSegModel
    pairs: Sequence[TrainingPair]
    channel_of_target: list[int]  # step target value → channel id (index 0 → 0)
    method: Method
    prior: CiNuSegModel | None
    settings: TrainSettings
    lr: float
    step: int
    record_as: str | None = None
    freeze_bn: bool = False
    new_classes: tuple[int, ...] = ()
    memory_notes: list[str] = field(default_factory=list)  # batches reduced for lack of memory
    # The model the step started from, for the forgetting report (forgetting.py); set for every
    # incremental step, also when the method itself never looks at the prior.
    report_prior: CiNuSegModel | None = None
    # The frozen model whose separation the step keeps (distillation), where both have the head;
    # its forward pass runs also for a method that never looks at the prior.
    separation_prior: CiNuSegModel | None = None
    _extra: list = field(default_factory=list)  # a method's training-only parameters

    def _context(self, device: torch.device, lut: torch.Tensor) -> StepContext:
        def batches():
            for pair in self.pairs:  # whole images, one at a time, no augmentation
                image = image_batch(pair.image, device)
                target = torch.from_numpy(np.require(pair.target, requirements="CW")).long()[None]
                yield self.model.normalize(image), lut[target].to(device)

        share = labelled_share(self.pairs, len(self.channel_of_target))  # the values the table maps
        return StepContext(self.prior, self.model, list(self.new_classes), self.settings, device, batches, share)

    def _batch(self, labels: torch.Tensor, output, old) -> StepBatch:
        """What the method sees of one iteration: the model's output, and the prior's where it
        runs."""
        return StepBatch(
            logits=output.logits,
            features=output.features,
            labels=labels,
            new_classes=list(self.new_classes),
            old_logits=old.logits if old is not None else None,
            old_features=old.features if old is not None else None,
            embedding=output.embedding,
            old_embedding=old.embedding if old is not None else None,
        )

    def _iteration(self, images, target, separation, gear: Gear) -> tuple[LossOutput, str | None, float]:
        """One optimisation step on one batch of crops: (the loss, why the optimiser did not
        step or None, the gradient's norm before clipping). ``separation``: the crops' separation
        targets (crops.CropDataset)."""
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
            result = self.method.loss(self._batch(labels, output, old if self.prior is not None else None))
            result = self._with_separation(result, output, old, separation.to(device, non_blocking=True))
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

    def _with_separation(self, result: LossOutput, output, old, target: torch.Tensor) -> LossOutput:
        """The method's loss plus the separation's terms, where the network has a separation head:
        w · mean_b separation_loss on crops with known instances (term ``separation``), and in a
        step with a separation prior w · mean_b separation_distillation (``separation_kd``)."""
        w = self.settings.separation_weight
        if output.separation is None or w == 0:
            return result
        loss, terms = result.loss, dict(result.terms)
        known = (target >= 0).flatten(1).any(1)
        if bool(known.any()):
            reg = separation_loss(output.separation, target)[known].mean()
            loss = loss + w * reg
            terms["separation"] = float(reg.detach())
        if self.separation_prior is not None and old is not None and old.separation is not None:
            kd = separation_distillation(output.separation, old.separation).mean()
            loss = loss + w * kd
            terms["separation_kd"] = float(kd.detach())
        return LossOutput(loss, terms, result.r, result.t_o, result.t_n)

    def _clip_gradient(self, opt) -> float:
        """:func:`clip_gradient` of every parameter the optimiser holds, with this step's new
        classifier rows. A separation head that learns faster than the rest (its group's
        ``lr_scale`` above 1: a base step teaching it) is clipped on its own, as new classifier
        rows are, so that the large gradient of the trunk cannot shrink its own to nothing."""
        s = self.settings
        fast = [p for g in opt.param_groups if g.get("lr_scale", 1.0) > 1.0 for p in g["params"]]
        held = {id(p) for p in fast}
        params = [p for g in opt.param_groups for p in g["params"] if id(p) not in held]
        rest = clip_gradient(params, self.model.network.classifier, list(self.new_classes), s.grad_clip, s.new_class_lr)
        if not fast:
            return rest
        head = [p for p in fast if p.grad is not None]
        limit = s.grad_clip if s.grad_clip > 0 else float("inf")
        own = float(torch.nn.utils.clip_grad_norm_(head, limit)) if head else 0.0
        return math.sqrt(rest**2 + own**2)

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
        settings["method_settings"] = settings_of(self.method)
        data = {"images": [p.name for p in self.pairs], "num_images": len(self.pairs)}
        if self.report_prior is not None:  # an incremental step: the old classes it was painted with
            old = self.report_prior.num_channels
            painted = set().union(*(np.unique(p.target).tolist() for p in self.pairs))
            refined = [
                self.model.classes[ch - 1].name
                for value, ch in enumerate(self.channel_of_target)
                if 0 < ch < old and value in painted
            ]
            if refined:
                data["refined_classes"] = refined
        return StepRecord(
            step=self.step,
            method=self.record_as or self.method.name,
            new_classes=[c.name for c in self.model.classes if c.step == self.step],
            settings=settings,
            data=data,
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
            magnification_jitter=s.magnification_jitter,
            painted_share=s.painted_crops if self.new_classes else 0.0,
            separation=self.model.network.has_separation,
        )
        per_epoch = max(len(dataset) // s.batch_size, 1)  # the global batch, over all ranks
        total = s.iterations or max(s.epochs * per_epoch, s.min_iterations)
        gear = make_gear(
            self.model,
            self.prior or self.separation_prior,
            self.channel_of_target,
            s,
            self.lr,
            device,
            self.freeze_bn,
            # the head learns fast where it is taught (a base step), and is kept in a step
            head_lr=s.separation_lr if self.report_prior is None else 1.0,
        )
        yield StepStarted(
            step=self.step,
            method=self.record_as or self.method.name,
            device=devices.describe(device),
            total_iterations=total,
            iterations_per_epoch=per_epoch,
            num_images=len(dataset),
            classes=tuple(c.name for c in self.model.classes if c.step == self.step),
            model=self.model,
        )
        tally = Tally(t0=time.perf_counter())
        ctx = self._context(device, gear.lut)
        try:
            self.method.prepare(ctx)
            self._add_extra_parameters(gear.opt)
            done = yield from self._iterations(dataset, total, gear, tally, cancel)
            if not done:
                return None
            self.method.finish(ctx)
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

    def _add_extra_parameters(self, opt) -> None:
        """A method's training-only modules (e.g. a projection head), optimised with the model's."""
        params = [p for p in self.method.extra_parameters() if p.requires_grad]
        if params:
            opt.add_param_group({"params": params})
            self._extra = params

    def _loader(self, dataset: CropDataset, batch: int, gear: Gear):
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

    def _iterations(self, dataset: CropDataset, total: int, gear: Gear, tally: Tally, cancel: CancelFlag):
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
            for images, target, separation, boxes in loader:
                if is_cancelled(cancel):
                    yield Cancelled(step=self.step, iteration=tally.it)
                    return False
                lr = poly_lr(self.lr, tally.it, total, s.poly_power)
                for group in gear.opt.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                try:
                    result, skipped, grad_norm = self._iteration(images, target, separation, gear)
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

    def _results(self, tally: Tally, seconds: float, gear: Gear, forgetting) -> dict:
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
