"""One optimizer step: the one `emomoe train`, `emomoe finetune` and the benches run.

Legend: B batch, S sequence.

`train_step` takes the micro-batches of a step and, for each, runs the forward (under bf16
autocast with `Precision.BF16`) with the labels, so that the model's fused LM head computes the CE
without materialising the logits, and backpropagates the loss weighted by the micro-batch's share
of the step's label tokens: the step's CE is the mean over all its label tokens, not a mean of
micro-batch means. Under DDP gradients are all-reduced on the last micro-batch only; FSDP
reduce-scatters each one, so that no rank holds them unsharded (`parallel.gradient_sync`). Then it
clips the global gradient norm, averages the loss values over ranks, refuses a non-finite loss or
norm before the weights change (`TrainingDiverged`), and steps the optimizer and the schedule,
clears the gradients and applies the routers' bias-balancing updates.

What a caller measures around it (throughput, routing health, the pool schedule) stays with the caller.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from emomoe import distributed
from emomoe.errors import EmomoeError
from emomoe.model.losses import IGNORE_INDEX
from emomoe.model.transformer import LayerRouting, ModelOutput
from emomoe.train import parallel
from emomoe.train.config import Precision

LossFn = Callable[[ModelOutput, torch.Tensor], dict[str, torch.Tensor]]
"""(model output, labels_BS) -> named loss terms, each a mean over the micro-batch's label tokens
(or its tokens); "total" is the one backpropagated (`compute_loss`, or fine-tuning's loss)."""


class TrainingDiverged(EmomoeError):
    """A step's loss or gradient norm is not finite. Raised before the optimizer step, so the
    weights are those from before the step; `values` and `grad_norm` are what it measured."""

    def __init__(self, values: dict[str, float], grad_norm: float, message: str | None = None):
        self.values, self.grad_norm = values, grad_norm
        super().__init__(message or f"loss {values['total']:.4g}, grad norm {grad_norm:.4g} is not finite")

    def in_run(self, step: int, outcome: str) -> TrainingDiverged:
        """This error as a run reports it, in one line: which step (counted from 1), and what
        became of the run (`outcome`)."""
        return TrainingDiverged(self.values, self.grad_norm, f"step {step}: {self}; {outcome}")


@dataclasses.dataclass
class StepResult:
    losses: dict[str, float]
    """Each term of the loss, averaged over the step's label tokens and then over ranks."""
    grad_norm: float
    """The global gradient norm before clipping."""
    routing: list[LayerRouting] | None
    """The first micro-batch's routing, when asked for (`keep_routing`)."""


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[dict[str, torch.Tensor]],
    loss_fn: LossFn,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    grad_clip: float = 0.0,
    precision: Precision = Precision.FP32,
    keep_routing: bool = False,
) -> StepResult:
    """One optimizer step of `model` (plain, or wrapped by `parallel.wrap_model`) over `micro_batches`
    (dicts of `input_ids_BS`, `labels_BS` and optionally `doc_ids_BS`, moved to the model's device
    one at a time). `grad_clip` 0 leaves the gradients unclipped (the norm is still measured)."""
    device = next(model.parameters()).device
    # CPU counts: the loader's tensors, before they move to the device.
    label_counts = [int((b["labels_BS"] != IGNORE_INDEX).sum()) for b in micro_batches]
    total_labels = max(1, loss_denominator(micro_batches))
    sums, keys, routing = None, None, None
    for i, batch in enumerate(micro_batches):
        batch = {k: v.to(device) for k, v in batch.items()}
        with parallel.gradient_sync(model, enabled=i == len(micro_batches) - 1):
            with _autocast(precision, device):
                # The routing costs nothing more (the model builds it anyway), and a loss may use it.
                out = model(
                    batch["input_ids_BS"], doc_ids_BS=batch.get("doc_ids_BS"), return_routing=True,
                    labels_BS=batch["labels_BS"],
                )
            losses = loss_fn(out, batch["labels_BS"])
            weight = label_counts[i] / total_labels
            (losses["total"] * weight).backward()
        keys = keys or list(losses)
        weighted = torch.stack([losses[k].detach().float().cpu() for k in keys]) * weight
        sums = weighted if sums is None else sums + weighted
        if keep_routing and i == 0:
            routing = out.routing
    grad_norm = _clip_gradients(model, grad_clip)
    means = distributed.all_reduce_sum_(sums) / distributed.get_world_size()
    values = dict(zip(keys, means.tolist()))
    if not (math.isfinite(values["total"]) and math.isfinite(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        raise TrainingDiverged(values, grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    parallel.unwrap(model).update_router_biases()
    return StepResult(values, grad_norm, routing)


def loss_denominator(micro_batches: Sequence[dict[str, torch.Tensor]]) -> int:
    """The tokens a step's loss is averaged over on this rank: its label tokens, plus every token of
    the windows the repetition filter took out of the loss (`filtered_B`), as OLMo-core's trainer
    counts them: as tokens of zero loss, so that a rank holding filtered windows weighs as much in
    the average over ranks as any other (its loss comes out lower, by the filtered share)."""
    labels = sum(int((b["labels_BS"] != IGNORE_INDEX).sum()) for b in micro_batches)
    filtered = sum(int(b["filtered_B"].sum()) * b["labels_BS"].shape[1] for b in micro_batches if "filtered_B" in b)
    return labels + filtered


def check_finite_weights(model: nn.Module) -> None:
    """TrainingDiverged unless every weight is finite (a collective: every rank calls it). A step
    checks its loss and gradients before it updates, but no later step checks the last update:
    whatever saves weights calls this first, so that a run that diverged saves nothing."""
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(_local(p.detach())).all()]
    if distributed.all_reduce_max_(torch.tensor([float(bool(bad))])).item():
        nan = float("nan")
        where = f" ('{bad[0]}')" if bad else ""
        raise TrainingDiverged({"total": nan}, nan, f"the weights are not finite after the update{where}")


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (FSDP), or the tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _clip_gradients(model: nn.Module, grad_clip: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or math.inf)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
        norm = norm.full_tensor()
    return float(norm)


def _autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision is Precision.BF16)
