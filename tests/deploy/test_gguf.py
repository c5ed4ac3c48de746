"""`export_gguf` and `emomoe export gguf`: the tensors and types in the file, streaming, refusals,
atomic writes; and llama.cpp itself running the files: logits, greedy decoding, quantized loss."""

import weakref

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from emomoe.checkpoint import CheckpointReader, load_for_inference
from emomoe.cli import main
from emomoe.data.store import Split, TokenStore
from emomoe.deploy.gguf import export_gguf
from emomoe.errors import ConfigError, DataError
from emomoe.generate import GenerationConfig, generate
from emomoe.select.keep import KeepSpec
from emomoe.select.subset import select_subset
from tests.fixtures import small_tmpfs

PROMPT_TOKENS = 64
GREEDY_TOKENS = 32
LOSS_DOMAIN = "code"
LOSS_WINDOWS = 12


def _tensors(path):
    return {t.name: t for t in GGUFReader(path).tensors}


def _values(t):
    return dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))


@pytest.mark.slow
def test_f32_holds_our_weights_exactly_and_f16_and_q8_0_round_them(subset, tmp_path):
    reader = CheckpointReader(subset)
    routed = reader.config.moe.routed_in_layer(0)
    embed = reader.get("embed.weight").numpy()
    gate = reader.get("layers.1.moe.router.gate.weight").numpy()
    w2 = reader.get("layers.1.moe.experts.w2").numpy()
    for kind, tolerance in (("f32", 0), ("f16", 1e-3), ("q8_0", 2e-2)):
        t = _tensors(export_gguf(subset, tmp_path / f"{kind}.gguf", type=kind))
        # Norms and routers stay float32; matrices get the type asked for.
        assert t["blk.1.ffn_gate_inp.weight"].tensor_type == t["output_norm.weight"].tensor_type == GGMLQuantizationType.F32
        assert t["blk.1.ffn_up_exps.weight"].tensor_type.name == kind.upper()
        np.testing.assert_array_equal(_values(t["blk.1.ffn_gate_inp.weight"]), gate[:routed])
        np.testing.assert_allclose(_values(t["token_embd.weight"]), embed, atol=tolerance * np.abs(embed).max())
        down = _values(t["blk.1.ffn_down_exps.weight"])
        np.testing.assert_allclose(down, w2[:routed], atol=tolerance * np.abs(w2).max())
        shared = _values(t["blk.1.ffn_down_shexp.weight"])
        np.testing.assert_allclose(shared, w2[routed:].transpose(1, 0, 2).reshape(w2.shape[1], -1),
                                   atol=tolerance * np.abs(w2).max())


def test_tensors_are_read_one_at_a_time_and_dropped(checkpoint_dir, store_dir, tmp_path, monkeypatch):
    """The exporter never holds two tensors of the checkpoint: each is gone before the next read."""
    alive = []
    original = CheckpointReader.get

    def get(self, name, rows=None):
        tensor = original(self, name, rows)
        assert [ref for ref in alive if ref() is not None] == [], f"still held when reading {name}"
        alive.append(weakref.ref(tensor))
        return tensor

    monkeypatch.setattr(CheckpointReader, "get", get)
    export_gguf(checkpoint_dir, tmp_path / "m.gguf", type="q8_0", tokenizer=TokenStore.open(store_dir).tokenizer_path)
    assert len(alive) == len(_tensors(tmp_path / "m.gguf"))


def test_an_existing_file_is_kept_unless_forced_and_a_refusal_writes_nothing(subset, tmp_path):
    out = tmp_path / "m.gguf"
    out.write_text("keep me")
    with pytest.raises(DataError, match=rf"^{out}: already exists"):
        export_gguf(subset, out)
    assert out.read_text() == "keep me"
    uneven = tmp_path / "uneven"
    select_subset(subset, uneven, keep=KeepSpec.parse("3,5,2,4"), method="random")
    with pytest.raises(ConfigError, match=r"^moe.num_experts_per_layer: \[4, 6, 3, 5\] cannot be exported"):
        export_gguf(uneven, tmp_path / "uneven.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "uneven"]


def test_cli_writes_the_file_and_refuses_in_one_line(subset, tmp_path, capsys):
    out = tmp_path / "s.gguf"
    assert main(["export", "gguf", "--checkpoint", str(subset), "--out", str(out), "--type", "q8_0"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert main(["export", "gguf", "--checkpoint", str(subset), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"emomoe export: error: {out}: already exists (pass --force, or force=True, to replace it)"
    ]
    assert main(["export", "gguf", "--checkpoint", str(subset), "--out", str(out), "--force", "--type", "q3"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == "emomoe export: error: type: 'q3' is not one of f32, f16, q8_0, q4_k"


def _llama(llama_cpp, path, n_ctx=128):
    # float32 KV cache and one thread: the cache's default float16 alone moves logits by ~1e-3.
    return llama_cpp.Llama(
        model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=1, logits_all=True,
        type_k=0, type_v=0, flash_attn=False, verbose=False,
    )


def _llama_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float64)


def _prompt(corpus_store):
    _, tokens = next(TokenStore.open(corpus_store).documents(Split.VAL, ["math"]))
    return [int(t) for t in tokens[:PROMPT_TOKENS]]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["trained", "subset"])
def test_llama_cpp_gives_our_logits_and_greedy_tokens(llama_cpp, request, which, corpus_store, tmp_path):
    checkpoint = request.getfixturevalue(which)
    llm = _llama(llama_cpp, export_gguf(checkpoint, tmp_path / "m.gguf", type="f32"))
    model, _ = load_for_inference(checkpoint)
    ids = _prompt(corpus_store)
    with torch.no_grad():
        ours_SV = model(torch.tensor([ids])).logits[0].double().numpy()
    diff = np.abs(_llama_logits(llm, ids) - ours_SV).max()
    print(f"{which}: max |llama.cpp - emomoe| logit over {len(ids)} positions x {ours_SV.shape[1]} tokens: {diff:.2e}")
    assert diff < 1e-3
    [ours] = generate(model, [ids], GenerationConfig(max_new_tokens=GREEDY_TOKENS, greedy=True))
    theirs = []
    llm.reset()
    llm.eval(ids)
    for _ in range(GREEDY_TOKENS):
        theirs.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([theirs[-1]])
    assert theirs == ours.tokens


def _held_out_windows(corpus_store):
    """Windows of 64 held-out tokens of one domain, each inside one document (no EOS)."""
    windows = []
    for _, tokens in TokenStore.open(corpus_store).documents(Split.VAL, [LOSS_DOMAIN]):
        tokens = [int(t) for t in tokens]
        windows += [tokens[i : i + PROMPT_TOKENS] for i in range(0, len(tokens) - PROMPT_TOKENS, PROMPT_TOKENS)]
    return windows[:LOSS_WINDOWS]


def _mean_nll(logits_SV, ids):
    logits_SV = logits_SV[:-1]
    log_z = np.log(np.exp(logits_SV - logits_SV.max(-1, keepdims=True)).sum(-1)) + logits_SV.max(-1)
    return float((log_z - logits_SV[np.arange(len(ids) - 1), ids[1:]]).mean())


@pytest.mark.slow
def test_quantized_files_lose_little_held_out_loss_in_llama_cpp(llama_cpp, subset, corpus_store, tmp_path):
    windows = _held_out_windows(corpus_store)
    assert len(windows) == LOSS_WINDOWS
    model, _ = load_for_inference(subset)
    with torch.no_grad():
        ours = np.mean([_mean_nll(model(torch.tensor([w])).logits[0].double().numpy(), w) for w in windows])
    losses = {}
    for kind in ("f32", "q8_0", "q4_k"):
        llm = _llama(llama_cpp, export_gguf(subset, tmp_path / f"{kind}.gguf", type=kind))
        losses[kind] = np.mean([_mean_nll(_llama_logits(llm, w), w) for w in windows])
    print(f"held-out {LOSS_DOMAIN} loss (nats): emomoe {ours:.4f}, " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
    assert abs(losses["f32"] - ours) < 1e-4
    assert losses["q8_0"] - ours < 0.01
    assert losses["q4_k"] - ours < 0.1


def test_a_full_disk_is_one_error_naming_the_file_and_leaves_nothing(checkpoint_dir, store_dir, tmp_path):
    with small_tmpfs(tmp_path / "disk", "64k") as mounted:
        if not mounted:
            pytest.skip("needs root to mount a small tmpfs")
        out = tmp_path / "disk" / "m.gguf"
        with pytest.raises(DataError, match=rf"^{out}: cannot write: no space left on the device"):
            export_gguf(checkpoint_dir, out, type="f32", tokenizer=TokenStore.open(store_dir).tokenizer_path)
        assert list(out.parent.iterdir()) == []
