"""`train_step` against references written out by hand: forward and backward of the concatenated
batch, the gradient norm and the bias update computed from the routing."""

import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F

from emomoe import ModelConfig, build_model
from emomoe.model.losses import IGNORE_INDEX, compute_loss
from emomoe.train.config import Precision, TrainConfig
from emomoe.train.optim import build_optimizer
from emomoe.train.schedule import build_scheduler
from emomoe.train.step import TrainingDiverged, check_finite_weights, train_step

SEQ_LEN = 16


def tiny(*overrides: str) -> ModelConfig:
    # No pool: its random draws would differ between a micro-batch and the concatenated batch.
    return ModelConfig.preset("tiny").with_overrides(["moe.router.pool=off", *overrides])


def micro_batch(cfg: ModelConfig, rows: int, seed: int, num_prompt: int = 0) -> dict[str, torch.Tensor]:
    """Random tokens; the first `num_prompt` positions of each row carry no label."""
    tokens = torch.randint(1, cfg.vocab_size, (rows, SEQ_LEN + 1), generator=torch.Generator().manual_seed(seed))
    labels_BS = tokens[:, 1:].clone()
    labels_BS[:, :num_prompt] = IGNORE_INDEX
    return {"input_ids_BS": tokens[:, :-1], "labels_BS": labels_BS}


class KeepGradients(torch.optim.Optimizer):
    """Records the gradients it is stepped with, in `model.parameters()` order, and changes nothing."""

    def __init__(self, model: torch.nn.Module):
        super().__init__(model.parameters(), {})
        self.grads: list[torch.Tensor] | None = None

    def step(self, closure=None):
        self.grads = [p.grad.clone() for group in self.param_groups for p in group["params"]]


def reference(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], logit_z_weight: float):
    """CE, and the gradients of CE + w_z * logit z, of one forward and backward of all `batches`
    concatenated, through the logits (the step uses the fused LM head)."""
    model = copy.deepcopy(model)
    input_ids_BS, labels_BS = (torch.cat([b[k] for b in batches]) for k in ("input_ids_BS", "labels_BS"))
    logits_TV = model(input_ids_BS).logits.flatten(0, 1)
    valid_T = labels_BS.flatten() != IGNORE_INDEX
    ce = F.cross_entropy(logits_TV[valid_T], labels_BS.flatten()[valid_T])
    logit_z = logits_TV[valid_T].logsumexp(-1).square().mean()
    (ce + logit_z_weight * logit_z).backward()
    return ce.item(), [p.grad for p in model.parameters()]


def global_norm(tensors: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().square().sum()) for t in tensors))


# Only CE and logit z are sums over label tokens, so only they accumulate exactly: the LB multiplies
# counts by probabilities, and the router z-loss averages over all tokens, labelled or not.
ADDITIVE = ["loss.lb_weight=0", "loss.router_z_weight=0", "loss.logit_z_weight=0.01"]


def test_micro_batches_accumulate_to_the_gradient_of_the_whole_batch():
    cfg = tiny(*ADDITIVE)
    torch.manual_seed(0)
    model = build_model(cfg)
    # Unequal label counts: a mean of per-micro-batch means would weight the second batch's tokens more.
    batches = [micro_batch(cfg, 2, seed=1), micro_batch(cfg, 2, seed=2, num_prompt=10)]
    ce, ref_grads = reference(model, batches, logit_z_weight=0.01)

    optimizer = KeepGradients(model)
    result = train_step(model, optimizer, batches, functools.partial(compute_loss, loss_cfg=cfg.loss))
    assert result.losses["ce"] == pytest.approx(ce, rel=1e-5)
    assert result.grad_norm == pytest.approx(global_norm(ref_grads), rel=1e-5)
    for (name, _), got, want in zip(model.named_parameters(), optimizer.grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7, msg=name)
    assert all(p.grad is None for p in model.parameters())  # cleared for the next step


def test_windows_the_repetition_filter_dropped_count_as_zero_loss_tokens():
    # OLMo-core adds a filtered instance's tokens to the loss denominator: a step whose micro-batch
    # holds one filtered window among 4 has 3/4 of the CE and gradients of the 3 kept windows alone.
    cfg = tiny(*ADDITIVE)
    torch.manual_seed(0)
    model = build_model(cfg)
    kept = micro_batch(cfg, 3, seed=1)
    dropped = micro_batch(cfg, 1, seed=2)
    dropped["labels_BS"][:] = IGNORE_INDEX
    batch = {k: torch.cat([kept[k], dropped[k]]) for k in kept} | {"filtered_B": torch.tensor([False] * 3 + [True])}
    ce, ref_grads = reference(model, [kept], logit_z_weight=0.01)

    optimizer = KeepGradients(model)
    result = train_step(model, optimizer, [batch], functools.partial(compute_loss, loss_cfg=cfg.loss))
    assert result.losses["ce"] == pytest.approx(ce * 3 / 4, rel=1e-5)
    for (name, _), got, want in zip(model.named_parameters(), optimizer.grads, ref_grads):
        torch.testing.assert_close(got, want * 3 / 4, rtol=1e-4, atol=1e-7, msg=name)


def test_clipping_scales_the_gradient_down_to_the_cap():
    cfg = tiny(*ADDITIVE)
    torch.manual_seed(0)
    model = build_model(cfg)
    batches = [micro_batch(cfg, 2, seed=1)]
    _, ref_grads = reference(model, batches, logit_z_weight=0.01)
    norm = global_norm(ref_grads)
    cap = norm / 10

    optimizer = KeepGradients(model)
    result = train_step(model, optimizer, batches, functools.partial(compute_loss, loss_cfg=cfg.loss), grad_clip=cap)
    assert result.grad_norm == pytest.approx(norm, rel=1e-5)  # the norm before clipping
    assert global_norm(optimizer.grads) == pytest.approx(cap, rel=1e-5)
    for got, want in zip(optimizer.grads, ref_grads):
        torch.testing.assert_close(got, want / 10, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("poison", ["loss", "gradient"])
def test_a_non_finite_step_raises_and_leaves_weights_optimizer_and_schedule_as_they_were(poison):
    cfg = tiny("moe.router.bias_update_rate=0.01")
    torch.manual_seed(0)
    model = build_model(cfg)
    recipe = TrainConfig(warmup_steps=2, max_steps=10)
    optimizer = build_optimizer(model, recipe)
    scheduler = build_scheduler(optimizer, recipe)
    before, lr = copy.deepcopy(model.state_dict()), scheduler.get_last_lr()

    def loss_fn(out, labels_BS):
        losses = compute_loss(out, labels_BS, cfg.loss)
        if poison == "loss":
            losses["total"] = losses["total"] * math.nan
        return losses

    if poison == "gradient":  # a finite loss whose gradient overflows
        model.lm_head.weight.register_hook(lambda grad: grad * math.inf)
    with pytest.raises(TrainingDiverged, match="not finite") as caught:
        train_step(model, optimizer, [micro_batch(cfg, 2, seed=1)], loss_fn, scheduler=scheduler, grad_clip=1.0)
    error = caught.value
    assert math.isfinite(error.values["ce"])
    if poison == "loss":
        assert math.isnan(error.values["total"])
    else:
        assert math.isfinite(error.values["total"]) and not math.isfinite(error.grad_norm)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the router biases included
    assert not optimizer.state and scheduler.get_last_lr() == lr
    assert all(p.grad is None for p in model.parameters())
    assert str(error.in_run(7, "no checkpoint")).startswith("step 7: loss ")
    assert str(error.in_run(7, "no checkpoint")).endswith("is not finite; no checkpoint")


def test_the_step_updates_the_router_biases_from_its_expert_counts():
    rate = 0.01
    cfg = tiny(f"moe.router.bias_update_rate={rate}")
    torch.manual_seed(0)
    model = build_model(cfg)
    batches = [micro_batch(cfg, 2, seed=1), micro_batch(cfg, 2, seed=2)]
    # The biases start at zero, so the step routes as the unbiased model does.
    routing = [copy.deepcopy(model)(b["input_ids_BS"], return_routing=True).routing for b in batches]

    optimizer = KeepGradients(model)
    result = train_step(
        model, optimizer, batches, functools.partial(compute_loss, loss_cfg=cfg.loss), keep_routing=True
    )
    for layer, block in enumerate(model.layers):
        router = block.moe.router
        counts_E = sum(torch.bincount(r[layer].experts_TK.flatten(), minlength=router.num_routed) for r in routing)
        expected_E = rate * torch.sign(counts_E.float().mean() - counts_E.float())
        assert expected_E.abs().sum() > 0  # the routing is not balanced, so the check has teeth
        torch.testing.assert_close(router.score_bias_E, expected_E)
        assert router.pending_counts_E.sum() == 0
        assert torch.equal(result.routing[layer].experts_TK, routing[0][layer].experts_TK)  # the first micro-batch's


def test_bf16_autocast_computes_the_cross_entropy_of_its_logits_in_float32():
    cfg = tiny("vocab_size=32768")
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = micro_batch(cfg, 2, seed=1, num_prompt=3)
    loss_fn = functools.partial(compute_loss, loss_cfg=cfg.loss)
    ce = {}
    for precision in Precision:
        trained = copy.deepcopy(model)
        ce[precision] = train_step(trained, KeepGradients(trained), [batch], loss_fn, precision=precision).losses["ce"]
    # With autograd on, as in the step: the forward's float32 rounding then matches the step's.
    logits_fp32_BSV = model(batch["input_ids_BS"]).logits.detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits_bf16_BSV = model(batch["input_ids_BS"]).logits.detach()
    assert logits_bf16_BSV.dtype == torch.bfloat16
    valid_BS = batch["labels_BS"] != IGNORE_INDEX
    labels_T = batch["labels_BS"][valid_BS]

    # The CE adds no bf16 error: it is the float64 CE of the bf16 logits, to float32 precision. (In
    # bf16 the logsumexp of 32k logits, about 10.4, would be rounded to steps of 1/16.)
    of_bf16_logits = F.cross_entropy(logits_bf16_BSV[valid_BS].double(), labels_T).item()
    assert ce[Precision.BF16] == pytest.approx(of_bf16_logits, rel=1e-6, abs=0)
    # So bf16 moves the CE only as far as the bf16 matmuls move the logits. Per token,
    # nll = logsumexp(z) - z_label, and both terms move by at most max_v |dz_v|: the CE moves by at
    # most twice the mean over label tokens of that largest logit error (plus float32 rounding).
    logit_error_T = (logits_bf16_BSV.float() - logits_fp32_BSV)[valid_BS].abs().amax(-1)
    bound = 2 * logit_error_T.mean().item()
    assert abs(ce[Precision.BF16] - ce[Precision.FP32]) <= bound + 1e-5
    assert ce[Precision.BF16] != ce[Precision.FP32]  # autocast did run in bf16


def test_weights_made_non_finite_by_the_last_update_are_caught():
    model = build_model(tiny())
    check_finite_weights(model)
    with torch.no_grad():
        model.layers[1].attn.q_proj.weight[3, 4] = math.inf
    with pytest.raises(TrainingDiverged, match=r"^the weights are not finite after the update \('layers\.1\.attn\.q_proj\.weight'\)$"):
        check_finite_weights(model)
