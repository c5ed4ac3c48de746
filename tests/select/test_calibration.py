import json

import pytest
import torch

from emomoe.data.store import TokenStore
from emomoe.data.tokenizer import load_tokenizer
from emomoe.errors import ConfigError, DataError
from emomoe.select.calibration import load_calibration, store_calibration, valid_tokens


def _domains_seen(calib, store):
    return {store.domains[int(d)] for b in calib.batches for d in b["domain_ids_BS"].unique()}


def test_store_windows_come_from_the_domain_training_split(store_dir):
    store = TokenStore.open(store_dir)
    calib = store_calibration(store, ["math"], num_windows=5, seq_len=16, batch_size=2)
    assert calib.info["num_windows"] == 5 == sum(b["input_ids_BS"].shape[0] for b in calib.batches)
    assert _domains_seen(calib, store) == {"math"}
    assert calib.info["split"] == "train" and calib.info["domains"] == ["math"]
    assert calib.info["num_tokens"] == sum(int(valid_tokens(b).sum()) for b in calib.batches)


def test_several_domains_share_the_windows(store_dir):
    store = TokenStore.open(store_dir)
    calib = load_calibration("code,legal", store=store_dir, tokenizer=None, num_windows=4, seq_len=16, batch_size=8)
    assert _domains_seen(calib, store) == {"code", "legal"} and calib.info["num_windows"] == 4


def test_unknown_domain_is_named(store_dir):
    with pytest.raises(DataError, match="'poetry'"):
        load_calibration("poetry", store=store_dir, tokenizer=None, num_windows=4, seq_len=16, batch_size=2)


def test_domain_without_a_store_is_an_error():
    with pytest.raises(ConfigError, match="--data"):
        load_calibration("code", store=None, tokenizer=None, num_windows=4, seq_len=16, batch_size=2)


def test_text_files_are_packed_with_eos_using_the_store_tokenizer(tmp_path, store_dir):
    texts = ["theorem proof lemma", "def return self import", "licensee shall grant " * 20]
    path = tmp_path / "calib.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    calib = load_calibration(str(path), store=store_dir, tokenizer=None, num_windows=3, seq_len=8, batch_size=2)
    tok = load_tokenizer(TokenStore.open(store_dir).tokenizer_path)
    stream = [i for t in texts for i in tok.encode(t) + [tok.eos_id]][: 3 * 8]
    got = torch.cat([b["input_ids_BS"].flatten() for b in calib.batches]).tolist()
    assert got == stream
    first = calib.batches[0]
    eos_before = torch.cumsum(first["input_ids_BS"] == tok.eos_id, dim=1) - (first["input_ids_BS"] == tok.eos_id).long()
    assert torch.equal(first["doc_ids_BS"], eos_before)
    assert calib.info["source"] == "files" and calib.info["num_windows"] == 3


def test_text_files_need_a_tokenizer(tmp_path):
    path = tmp_path / "calib.jsonl"
    path.write_text(json.dumps({"text": "hello"}) + "\n")
    with pytest.raises(DataError, match="--tokenizer"):
        load_calibration(str(path), store=None, tokenizer=None, num_windows=1, seq_len=8, batch_size=1)


def test_examples_are_padded_rows_whose_padding_changes_no_statistic(tiny):
    from emomoe.data.pairs import Example
    from emomoe.select.calibration import example_calibration
    from emomoe.select.methods import ExpertSelector
    from emomoe.select.weight_source import ModelWeights

    model, cfg = tiny
    gen = torch.Generator().manual_seed(3)
    examples = [Example(torch.randint(1, cfg.vocab_size, (n,), generator=gen).tolist(), [5, 6]) for n in (3, 11, 7, 20)]
    calib = example_calibration(examples, 0, seq_len=16, batch_size=3, info={"source": "task", "task": "t",
                                                                              "num_examples": 4})
    lengths = sorted((min(len(e.prompt_ids) + 2, 16) for e in examples), reverse=True)  # cut to 16, longest first
    assert [valid_tokens(b).view(b["input_ids_BS"].shape).sum(1).tolist() for b in calib.batches] == [lengths[:3],
                                                                                                      lengths[3:]]
    assert calib.batches[0]["input_ids_BS"].shape == (3, 16) and calib.info["num_tokens"] == sum(lengths)
    # The reference: each example alone, no padding, through the whole model; the token-mean router probability.
    sums = None
    with torch.no_grad():
        for e in examples:
            ids = torch.tensor([(e.prompt_ids + e.answer_ids)[:16]])
            routing = model(ids, return_routing=True).routing
            probs = [r.router_logits_TE.float().softmax(-1).sum(0).double() for r in routing]
            sums = probs if sums is None else [s + p for s, p in zip(sums, probs)]
    expected = [s / sum(lengths) for s in sums]
    got = ExpertSelector(ModelWeights(model, cfg), calib.batches, "global").scores()
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)
