"""`quantize_checkpoint` and `emomoe quantize`: what the directory holds, that every reader of
checkpoints takes it (dequantized where floats are needed), held-out loss on a trained model,
streaming, refusals and atomic writes."""

import json
import shutil

import pytest
import torch

from emomoe.checkpoint import CheckpointReader, load_for_inference, load_model
from emomoe.checkpoint.quantization import QUANTIZATION_FILE
from emomoe.cli import main
from emomoe.data.tokenizer import TOKENIZER_FILE
from emomoe.deploy.quantize import quantize_checkpoint
from emomoe.errors import ConfigError, DataError
from emomoe.evaluate.loss import evaluate_checkpoint
from emomoe.hf.convert import export_hf
from emomoe.model import build_model
from emomoe.model.quantized import QuantizedWeight, quantize, quantized_bits
from emomoe.select.keep import KeepSpec
from emomoe.select.subset import select_subset
from emomoe.train.provenance import find_tokenizer
from tests.fixtures import small_tmpfs


@pytest.mark.parametrize("bits", [8, 4])
def test_the_integers_are_those_of_each_weight_and_the_rest_is_kept_as_stored(subset, tmp_path, bits):
    out = tmp_path / "q"
    record = quantize_checkpoint(subset, out, bits=bits)
    with CheckpointReader(subset) as source:
        inputs = {source.shape(name)[-1] for name in source.names() if quantized_bits(name, bits)}
    # The default (128 at 8 bits, 32 at 4), or the largest multiple of 32 below it dividing every width.
    fitting = [g for g in range(32, (128 if bits == 8 else 32) + 1, 32) if all(n % g == 0 for n in inputs)]
    assert record.bits == bits and record.group_size == max(fitting)
    saved = json.loads((out / QUANTIZATION_FILE).read_text())
    assert saved["source_checkpoint"] == str(subset.resolve()) and saved["dtype"] == "float32"
    with CheckpointReader(subset) as source, CheckpointReader(out) as quantized:
        assert quantized.names() == source.names() and quantized.config == source.config
        for name in source.names():
            w = source.get(name)
            assert quantized.shape(name) == tuple(w.shape) and quantized.dtype(name) == w.dtype
            bits_here = quantized_bits(name, bits)
            if bits_here is None:
                assert not quantized.is_quantized(name) and torch.equal(quantized.get(name), w)
                continue
            expected = quantize(w, bits_here, record.group_size)
            stored = quantized.get_quantized(name)
            assert torch.equal(stored.qdata, expected.qdata) and torch.equal(stored.scales, expected.scales)
            assert torch.equal(quantized.get(name), expected.dequantize())
            assert torch.equal(quantized.get(name, rows=[1, 0])[0], expected.dequantize()[1])


def test_inference_runs_on_the_integers_and_training_paths_get_floats(subset, tmp_path):
    out = quantize_checkpoint(subset, tmp_path / "q", bits=4) and tmp_path / "q"
    model, cfg = load_for_inference(out)
    # q, k, v, o and the three expert stacks of every layer, and the LM head
    assert sum(isinstance(m, QuantizedWeight) for m in model.modules()) == 7 * cfg.num_layers + 1
    floats, _ = load_model(out)
    assert not any(isinstance(m, QuantizedWeight) for m in floats.modules())
    # The float model is an independent reference: the dequantized weights in a plain model.
    ids_BS = torch.randint(0, cfg.vocab_size, (2, 40))
    with torch.no_grad():
        expected = floats.eval()(ids_BS).logits
        torch.testing.assert_close(model(ids_BS).logits, expected, rtol=1e-5, atol=1e-5)
        cache = model.new_cache(2, 48)
        model.decode(ids_BS[:, :39], cache)
        last = model.decode(ids_BS[:, 39:], cache)  # one row per weight: the decoding kernels
        torch.testing.assert_close(last[:, -1], expected[:, -1], rtol=1e-4, atol=1e-4)


def test_held_out_loss_stays_within_the_budgets(trained, subset, corpus_store, tmp_path):
    """On the trained model and its subset: int8 within 0.005 nats (the issue's target), int4
    reported and loosely bounded."""
    increases = {}
    for name, checkpoint in (("full", trained), ("subset", subset)):
        base = evaluate_checkpoint(checkpoint, corpus_store, progress=False)["all"]["loss"]
        for bits in (8, 4):
            out = tmp_path / f"{name}-{bits}"
            quantize_checkpoint(checkpoint, out, bits=bits)
            increases[name, bits] = evaluate_checkpoint(out, corpus_store, progress=False)["all"]["loss"] - base
    print("held-out loss increase (nats):", increases)
    assert all(abs(increases[name, 8]) < 0.005 for name in ("full", "subset"))
    assert all(increases[name, 4] < 0.1 for name in ("full", "subset"))


def test_selection_hf_export_and_lineage_read_it_as_floats(trained, corpus_store, tmp_path):
    out = tmp_path / "q"
    quantize_checkpoint(trained, out, bits=8)
    assert (out / TOKENIZER_FILE).read_text() == (find_tokenizer(trained) / TOKENIZER_FILE).read_text()
    sub = tmp_path / "sub"
    select_subset(out, sub, keep=KeepSpec.parse("0.5"), method="random", seed=0)
    assert find_tokenizer(sub) == out  # followed through the subset's selection.json
    with CheckpointReader(sub) as reader:
        assert reader.quantization is None and reader.dtype("layers.0.moe.experts.w1") == torch.float32
    export_hf(out, tmp_path / "hf")
    model, _ = load_model(tmp_path / "hf")
    floats, _ = load_model(out)
    for (name, a), b in zip(model.state_dict().items(), floats.state_dict().values()):
        assert torch.equal(a, b), name


def test_reading_damaged_integer_weights_names_the_tensor(subset, tmp_path):
    out = tmp_path / "q"
    quantize_checkpoint(subset, out, bits=8)
    record = json.loads((out / QUANTIZATION_FILE).read_text())
    wrong = 2 * record["group_size"]
    (out / QUANTIZATION_FILE).write_text(json.dumps(record | {"group_size": wrong}))
    with pytest.raises(DataError, match=rf"'layers\.0\.attn\.q_proj\.weight\.qdata' int8 .* is not a 8-bit weight in groups of {wrong}"):
        CheckpointReader(out, verify=False)
    (out / QUANTIZATION_FILE).write_text(json.dumps(record | {"bits": 3}))
    with pytest.raises(DataError, match=r"quantization\.json: 'bits' is 3, expected 8 or 4"):
        CheckpointReader(out, verify=False)


def test_refusals_write_nothing(subset, checkpoint_dir, tmp_path):
    quantize_checkpoint(subset, tmp_path / "q", bits=8)
    with pytest.raises(DataError, match="already quantized"):
        quantize_checkpoint(tmp_path / "q", tmp_path / "qq")
    with pytest.raises(DataError, match="already exists"):
        quantize_checkpoint(subset, tmp_path / "q")
    with pytest.raises(ConfigError, match=r"group_size: 48 is not a positive multiple of 32"):
        quantize_checkpoint(subset, tmp_path / "bad", group_size=48)
    with pytest.raises(ConfigError, match=r"group_size: 64 does not divide the 32 inputs"):
        quantize_checkpoint(checkpoint_dir, tmp_path / "bad", group_size=64)  # tiny: d_model 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]


def test_tensors_are_read_one_at_a_time_and_dropped(checkpoint_dir, tmp_path, monkeypatch):
    closes = []
    monkeypatch.setattr(CheckpointReader, "close", lambda self: closes.append(1) or self._handles.clear())
    quantize_checkpoint(checkpoint_dir, tmp_path / "q", bits=8)
    with CheckpointReader(checkpoint_dir) as reader:
        assert len(closes) >= len(reader.names())


def test_a_full_disk_is_one_error_naming_the_directory_and_leaves_nothing(checkpoint_dir, tmp_path):
    with small_tmpfs(tmp_path / "disk", "64k") as mounted:
        if not mounted:
            pytest.skip("needs root to mount a small tmpfs")
        out = tmp_path / "disk" / "q"
        with pytest.raises(DataError, match=rf"^{out}: cannot write: no space left on the device"):
            quantize_checkpoint(checkpoint_dir, out, bits=8)
        assert list(out.parent.iterdir()) == []


def test_cli_quantizes_and_eval_runs_on_the_result(subset, corpus_store, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", "--checkpoint", str(subset), "--bits", "4", "--group-size", "64", "--out", str(out)]) == 0
    assert "4-bit weights in groups of 64" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(out), "--data", str(corpus_store), "--num-eval-windows", "1",
                 "--out", str(tmp_path / "eval.json"), "--no-progress"]) == 0
    capsys.readouterr()
    # Its own copy of the tokenizer: it runs even where the model it came from is gone.
    shutil.move(subset, tmp_path / "moved")
    try:
        assert main(["generate", "--checkpoint", str(out), "--prompt", "def f(x):", "--greedy",
                     "--max-new-tokens", "4"]) == 0
    finally:
        shutil.move(tmp_path / "moved", subset)
    out_text, err = capsys.readouterr()
    assert out_text.strip() and err.startswith("[4 tokens")
    assert main(["quantize", "--checkpoint", str(subset), "--bits", "3", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bits: '3' is not one of 8, 4" in err, err


def test_a_model_with_integer_weights_is_not_saved_as_floats(checkpoint_dir, tmp_path):
    from emomoe.checkpoint import save_model

    quantize_checkpoint(checkpoint_dir, tmp_path / "q", bits=8)
    model, cfg = load_for_inference(tmp_path / "q")
    with pytest.raises(ValueError, match="emomoe quantize"):
        save_model(tmp_path / "copy", model, cfg)
    assert not (tmp_path / "copy").exists()
    assert build_model(cfg)  # the config itself is an ordinary one
