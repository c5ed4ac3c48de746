import json
import math

import pytest
import torch
import torch.nn.functional as F

from emomoe.checkpoint import load_model, save_model
from emomoe.checkpoint.selection import SELECTION_FILE
from emomoe.data.pairs import Example, PairLoader, read_pairs
from emomoe.data.store import TokenStore
from emomoe.data.tokenizer import load_tokenizer
from emomoe.errors import ConfigError, DataError
from emomoe.evaluate.loss import evaluate_checkpoint
from emomoe.experiments import finetune as finetune_module
from emomoe.experiments.finetune import FinetuneConfig, FinetuneLoss, finetune_loss, finetune_subset
from emomoe.select.calibration import store_calibration
from emomoe.select.keep import KeepSpec
from emomoe.select.subset import select_subset
from emomoe.train.metrics import METRICS_FILE, read_metrics
from emomoe.train.step import TrainingDiverged
from emomoe.train.trainer import TrainingInterrupted
from tests.fixtures import save_tiny_checkpoint


@pytest.fixture(scope="module")
def legal_subset(tmp_path_factory, checkpoint_dir, store_dir):
    calib = store_calibration(store_dir, ["legal"], num_windows=4, seq_len=32, batch_size=2)
    out = tmp_path_factory.mktemp("sub") / "legal"
    select_subset(checkpoint_dir, out, keep=KeepSpec.parse("3"), method="global", calibration=calib)
    return out


def test_finetune_trains_the_subset_on_its_own_domain(tmp_path, legal_subset, store_dir):
    done = finetune_subset(legal_subset, store_dir, tmp_path / "ft", lr=1e-3, max_steps=3, seq_len=32, batch_size=4,
                           global_batch_size=4)
    assert done["domains"] == ["legal"] and done["num_steps"] == 3
    assert done["num_tokens"] == 3 * 4 * 32  # 3 steps of 4 windows of 32 tokens
    before, cfg = load_model(legal_subset)
    after, after_cfg = load_model(tmp_path / "ft")
    assert after_cfg == cfg
    assert not torch.equal(after.layers[0].moe.experts.w1, before.layers[0].moe.experts.w1)
    record = json.loads((tmp_path / "ft" / SELECTION_FILE).read_text())
    original = json.loads((legal_subset / SELECTION_FILE).read_text())
    assert record["kept_experts"] == original["kept_experts"]
    assert record["finetune"][-1]["num_steps"] == 3 and record["finetune"][-1]["domains"] == ["legal"]


def test_one_epoch_of_steps_of_32_windows_is_the_default_length(tmp_path, legal_subset, store_dir):
    store = TokenStore.open(store_dir)
    windows = (store.num_tokens("train", ["legal"]) - 1) // 32
    done = finetune_subset(legal_subset, store, tmp_path / "ft", seq_len=32, batch_size=8, max_steps=1)
    assert done["num_steps"] == 1 and done["global_batch_size"] == 32
    assert finetune_subset(legal_subset, store, tmp_path / "ft2", seq_len=32, batch_size=16, global_batch_size=16,
                           num_epochs=0.5)["num_steps"] == math.ceil(windows / 2 / 16)


def test_domains_are_needed_when_the_selection_did_not_use_the_store(tmp_path, checkpoint_dir, store_dir):
    select_subset(checkpoint_dir, tmp_path / "rand", keep=KeepSpec.parse("2"), method="random")
    with pytest.raises(ConfigError, match="name the domains"):
        finetune_subset(tmp_path / "rand", store_dir, tmp_path / "ft", max_steps=1, seq_len=32)
    assert not (tmp_path / "ft").exists()


def test_finetuning_lowers_held_out_loss_on_its_domain(tmp_path, legal_subset, store_dir):
    finetune_subset(legal_subset, store_dir, tmp_path / "ft", lr=3e-3, max_steps=20, seq_len=32, batch_size=4,
                    global_batch_size=4)
    held_out = {"domains": ["legal"], "seq_len": 32, "batch_size": 8}
    before = evaluate_checkpoint(legal_subset, store_dir, **held_out)["domains"]["legal"]["loss"]
    after = evaluate_checkpoint(tmp_path / "ft", store_dir, **held_out)["domains"]["legal"]["loss"]
    assert after < before - 0.2, (before, after)


def test_finetuning_reports_held_out_loss_writes_metrics_and_resumes_exactly(tmp_path, legal_subset, store_dir, monkeypatch):
    args = {"lr": 3e-3, "max_steps": 6, "seq_len": 32, "batch_size": 4, "global_batch_size": 4, "checkpoint_every": 2,
            "num_threads": 1}
    straight = finetune_subset(legal_subset, store_dir, tmp_path / "a", **args)
    assert set(straight["val_after"]) == {"legal"} and straight["val_after"]["legal"] < straight["val_before"]["legal"]
    records = read_metrics(tmp_path / "a" / METRICS_FILE)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6, 6] and records[-1]["val/legal"] == straight["val_after"]["legal"]

    work = tmp_path / ".b.finetune"

    class StopAfterThreeSteps:  # stands in for Ctrl-C / SIGTERM arriving during step 3
        requested = property(lambda self: len(read_metrics(work / METRICS_FILE)) >= 3)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    with monkeypatch.context() as patch:
        patch.setattr(finetune_module, "StopRequest", StopAfterThreeSteps)
        with pytest.raises(TrainingInterrupted, match="stopped at step 3"):
            finetune_subset(legal_subset, store_dir, tmp_path / "b", **args)
    assert not (tmp_path / "b").exists() and work.is_dir()
    with pytest.raises(DataError, match="pass --resume to continue it or --force to start over"):
        finetune_subset(legal_subset, store_dir, tmp_path / "b", **args)
    with pytest.raises(DataError, match="cannot resume, the interrupted run had another lr"):
        finetune_subset(legal_subset, store_dir, tmp_path / "b", **{**args, "lr": 1e-3}, resume=True)
    resumed = finetune_subset(legal_subset, store_dir, tmp_path / "b", **args, resume=True)
    assert resumed["val_after"] == straight["val_after"] and resumed["val_before"] == straight["val_before"]
    timing = ("tokens_per_s",)
    assert [{k: v for k, v in r.items() if k not in timing} for r in read_metrics(tmp_path / "b" / METRICS_FILE)] == [
        {k: v for k, v in r.items() if k not in timing} for r in records
    ]
    assert all(r["threads"] == 1 and r["tokens_per_s"] > 0 for r in records if "ce" in r)
    a, b = load_model(tmp_path / "a")[0].state_dict(), load_model(tmp_path / "b")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not work.exists()


def test_a_non_finite_step_stops_the_finetuning_without_saving_a_model(tmp_path, legal_subset, store_dir, monkeypatch):
    real, calls = finetune_module.finetune_loss, []

    def poisoned(out, labels_BS, weights):
        terms = real(out, labels_BS, weights)
        calls.append(1)
        if len(calls) == 2:
            terms["total"] = terms["total"] * math.nan
        return terms

    monkeypatch.setattr(finetune_module, "finetune_loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"^step 2: loss nan, grad norm .* is not finite; .*ft was not written") as caught:
        finetune_subset(legal_subset, store_dir, tmp_path / "ft", lr=1e-3, max_steps=3, seq_len=32, batch_size=4,
                        global_batch_size=4)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "ft").exists()
    assert read_metrics(tmp_path / ".ft.finetune" / METRICS_FILE)[-1]["total"] == "nan"


def test_a_last_update_that_breaks_the_model_saves_nothing(tmp_path, legal_subset, store_dir):
    # Every step's loss and gradient are finite: only the weights after the last update are broken.
    with pytest.raises(TrainingDiverged, match=r"^step 1: the held-out loss is not finite \(\{'legal': nan\}\); "
                                               r".*ft was not written"):
        finetune_subset(legal_subset, store_dir, tmp_path / "ft", lr=1e9, max_steps=1, warmup_fraction=0.0,
                        seq_len=32, batch_size=4)
    assert not (tmp_path / "ft").exists()


def test_a_full_emo_checkpoint_is_fine_tuned_without_its_pool(tmp_path, checkpoint_dir, store_dir):
    model, cfg = load_model(checkpoint_dir)
    assert cfg.moe.router.pool == "2..8"
    save_model(tmp_path / "no-pool", model, cfg.with_overrides(["moe.router.pool=off"]))
    args = dict(domains=["legal"], lr=1e-3, max_steps=2, seq_len=32, batch_size=4, global_batch_size=4, num_threads=1)
    finetune_subset(checkpoint_dir, store_dir, tmp_path / "a", **args)
    finetune_subset(tmp_path / "no-pool", store_dir, tmp_path / "b", **args)
    a, a_cfg = load_model(tmp_path / "a")
    b, _ = load_model(tmp_path / "b")
    assert a_cfg == cfg  # saved as the model it was: the pool-free routing is the recipe's
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def reference_lb(routing, valid_T):
    """Switch LB of one layer over the valid tokens, written out with loops."""
    probs = routing.router_logits_TE[valid_T].softmax(-1)
    experts = routing.experts_TK[valid_T]
    num_tokens, num_experts, k = probs.shape[0], probs.shape[1], experts.shape[1]
    total = 0.0
    for e in range(num_experts):
        frac = sum(int((experts[t] == e).sum()) for t in range(num_tokens)) / (k * num_tokens)
        total += frac * float(probs[:, e].mean())
    return num_experts * total


def test_the_loss_is_ce_plus_lb_at_0_01_averaged_over_layers(checkpoint_dir):
    model, _ = load_model(checkpoint_dir, overrides=["moe.router.pool=off"])
    ids = torch.randint(1, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.roll(-1, dims=1)
    labels[0, :5] = -100  # a prompt
    with torch.no_grad():
        out = model(ids, return_routing=True)
    terms = finetune_loss(out, labels, FinetuneLoss())
    valid = labels.reshape(-1) != -100
    ce = F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1])[valid], labels.reshape(-1)[valid])
    lb = sum(reference_lb(r, valid) for r in out.routing) / len(out.routing)
    assert float(terms["ce"]) == pytest.approx(float(ce), rel=1e-6)
    assert float(terms["lb"]) == pytest.approx(lb, rel=1e-5)
    assert float(terms["total"]) == pytest.approx(float(ce) + 0.01 * lb, rel=1e-6)  # no z-losses
    asked = finetune_loss(out, labels, FinetuneLoss(lb_weight=0.0, router_z_weight=0.5))
    assert float(asked["total"]) == pytest.approx(float(ce) + 0.5 * float(out.router_z_loss) / 2, rel=1e-6)


def test_prompt_answer_pairs_train_on_the_answers(tmp_path, legal_subset, store_dir):
    pairs = tmp_path / "qa.jsonl"
    words = "licensee shall grant warranty permission notice".split()
    with open(pairs, "w") as f:
        for i in range(16):
            f.write(json.dumps({"prompt": " ".join(words[i % 6 :] + words[: i % 6]), "answer": " hereby"}) + "\n")
    done = finetune_subset(legal_subset, store_dir, tmp_path / "ft", pairs=pairs, lr=1e-3, max_steps=4,
                           seq_len=32, batch_size=4, global_batch_size=4)
    assert done["pairs"] == str(pairs) and done["answer_only"] and done["num_steps"] == 4

    # The first step's CE is the CE of the answer tokens (and EOS) of its batch, nothing else.
    model, _ = load_model(legal_subset)
    store = TokenStore.open(store_dir)
    examples = read_pairs(pairs, load_tokenizer(store.tokenizer_path))
    batch = next(PairLoader(examples, store.eos_id, seq_len=32, batch_size=4, answer_only=True))
    with torch.no_grad():
        logits = model(batch["input_ids_BS"]).logits
    answer = batch["labels_BS"] != -100
    assert int(answer.sum()) == 4 * (len(load_tokenizer(store.tokenizer_path).encode(" hereby")) + 1)
    expected = F.cross_entropy(logits[answer], batch["labels_BS"][answer])
    assert done["first_ce"] == pytest.approx(float(expected), rel=1e-5)


def test_the_recipe_is_hf_trainers_optimizer_and_schedule_with_the_official_scripts_settings():
    import dataclasses

    from transformers import TrainingArguments

    hf = {f.name: f.default for f in dataclasses.fields(TrainingArguments)}
    config = FinetuneConfig()
    recipe = config.train_config(num_steps=40)
    assert (recipe.beta1, recipe.beta2, recipe.eps) == (hf["adam_beta1"], hf["adam_beta2"], hf["adam_epsilon"])
    assert (recipe.weight_decay, recipe.grad_clip, config.lr) == (hf["weight_decay"], hf["max_grad_norm"], hf["learning_rate"])
    assert hf["lr_scheduler_type"] == "linear" and recipe.schedule == "linear" and recipe.final_lr_ratio == 0.0
    assert recipe.warmup_from_zero and recipe.warmup_steps == 4  # the scripts' warmup_ratio 0.1, rounded up as HF does
    # launch_selective_hf.sh: batch_size=32 (micro-batch 8, accumulated), num_epochs=1, lr=5e-5.
    assert (config.global_batch_size, config.batch_size, config.num_epochs, config.lr) == (32, 8, 1.0, 5e-5)


def _word_examples(num, tokenizer):
    words = "licensee shall grant warranty permission notice".split()
    return [Example(tokenizer.encode(" ".join(words[i % 6 :] + words[: i % 6 + i % 3])), tokenizer.encode(" hereby"))
            for i in range(num)]


@pytest.fixture(scope="module")
def model_with_eos(tmp_path_factory, store_dir):
    """A tiny model whose config names the store's EOS, which ends tokenized examples."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("eos") / "model", store_dir)


def test_accumulated_forwards_make_the_step_of_one_whole_batch(tmp_path, model_with_eos, store_dir):
    examples = _word_examples(12, load_tokenizer(TokenStore.open(store_dir).tokenizer_path))
    common = dict(pairs=examples, max_steps=1, lr=1e-3, warmup_fraction=0.0, seq_len=32, global_batch_size=12,
                  loss=FinetuneLoss(lb_weight=0.0))  # the LB loss is per forward by design
    whole = finetune_subset(model_with_eos, None, tmp_path / "whole", batch_size=12, **common)
    parts = finetune_subset(model_with_eos, None, tmp_path / "parts", batch_size=4, **common)
    assert parts["first_ce"] == pytest.approx(whole["first_ce"], rel=1e-5)
    # AdamW moves each weight by about lr, with the sign of its gradient: another batch would flip
    # many signs (a difference of 2 lr), rounding differences move a weight by a hair of it.
    a, b = load_model(tmp_path / "whole")[0].state_dict(), load_model(tmp_path / "parts")[0].state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 0.01 * 1e-3


def test_an_epoch_of_examples_ends_with_a_short_step(tmp_path, model_with_eos, store_dir, monkeypatch):
    examples = _word_examples(10, load_tokenizer(TokenStore.open(store_dir).tokenizer_path))
    sizes, take = [], PairLoader.take
    monkeypatch.setattr(PairLoader, "take", lambda self, n: sizes.append(n) or take(self, n))
    done = finetune_subset(model_with_eos, None, tmp_path / "ft", pairs=examples, seq_len=32, batch_size=3,
                           global_batch_size=4)
    assert done["num_steps"] == 3 and sizes == [3, 1, 3, 1, 2]  # 10 = 4 + 4 + 2, in forwards of at most 3
    assert done["pairs"]["num_examples"] == 10 and done["store"] is None
