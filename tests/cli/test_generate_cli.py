import json
import shutil

import pytest

from emomoe.cli import main
from emomoe.data.store import TokenStore
from emomoe.data.tokenizer import load_tokenizer
from emomoe.generate import GenerationConfig, generate_text
from emomoe.train.provenance import load_with_tokenizer
from tests.fixtures import build_store, save_tiny_checkpoint, word_documents


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random checkpoint with the real BPE tokenizer of its store beside it."""
    root = tmp_path_factory.mktemp("gen")
    words = {"en": ["alpha", "beta", "gamma"], "zh": ["专家", "模型", "路由"]}
    docs = word_documents(words, 8, num_words=(10, 30))
    store = build_store(docs, root / "store", vocab_size=280)
    ckpt = save_tiny_checkpoint(root / "ckpt", store)
    shutil.copytree(TokenStore.open(store).tokenizer_path, ckpt / "tokenizer")
    return ckpt


def test_a_prompt_streams_its_greedy_continuation_to_stdout(checkpoint, capsys):
    assert main(["generate", "--checkpoint", str(checkpoint), "--prompt", "alpha 专家", "--greedy",
                 "--max-new-tokens", "12"]) == 0
    out, err = capsys.readouterr()
    model, _, tok = load_with_tokenizer(checkpoint)
    [expected] = generate_text(model, tok, ["alpha 专家"], GenerationConfig(max_new_tokens=12, greedy=True))
    assert out == expected.text + "\n"
    assert f"[{expected.num_tokens} tokens, {expected.finish_reason}" in err


def test_a_prompts_file_gives_one_json_line_per_prompt_in_order(checkpoint, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "alpha"}\n{"prompt": "模型 路由 专家"}\n"gamma beta"\n')
    out_file = tmp_path / "out.jsonl"
    args = ["generate", "--checkpoint", str(checkpoint), "--prompts", str(prompts), "--max-new-tokens", "6",
            "--temperature", "0.8", "--top-p", "0.9", "--seed", "5", "--batch-size", "2"]
    assert main([*args, "--out", str(out_file)]) == 0
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["alpha", "模型 路由 专家", "gamma beta"]
    assert all(r["num_tokens"] <= 6 and r["finish_reason"] in ("eos", "length") for r in records)
    capsys.readouterr()
    assert main(args) == 0  # the same seed samples the same completions, printed to stdout
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == records


def test_no_tokenizer_is_a_one_line_error(tmp_path, checkpoint, capsys):
    lonely = shutil.copytree(checkpoint, tmp_path / "lonely", ignore=shutil.ignore_patterns("tokenizer"))
    assert main(["generate", "--checkpoint", str(lonely), "--prompt", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lonely: no tokenizer found" in err


def test_an_hf_export_generates_what_its_source_checkpoint_does(checkpoint, tmp_path, capsys):
    from emomoe.hf.convert import export_hf

    hf_dir = export_hf(checkpoint, tmp_path / "hf", tokenizer=checkpoint / "tokenizer")
    outputs = []
    for source in (checkpoint, hf_dir):
        args = ["generate", "--checkpoint", str(source), "--prompt", "beta 模型", "--greedy", "--max-new-tokens", "8"]
        assert main(args) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].strip()



def _completions(capsys, *args):
    """The JSON lines `generate --prompts` prints."""
    capsys.readouterr()
    assert main(["generate", *args]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _held_out_prompts(store, path, num_tokens=24):
    """One line per domain: the start of a held-out document."""
    tok = load_tokenizer(store.tokenizer_path)
    docs = [next(iter(store.documents("val", [d])))[1][:num_tokens].tolist() for d in store.domains]
    path.write_text("".join(tok.decode(ids).replace("\n", " ") + "\n" for ids in docs))
    return path


def test_a_selection_generates_what_the_sliced_subset_does(store_dir, checkpoint_dir, domain_subsets, tmp_path, capsys):
    store = TokenStore.open(store_dir)
    prompts = _held_out_prompts(store, tmp_path / "prompts.txt")
    common = ["--prompts", str(prompts), "--greedy", "--max-new-tokens", "8", "--tokenizer", str(store.tokenizer_path)]
    subset = str(domain_subsets["math"])
    sliced = _completions(capsys, "--checkpoint", subset, *common)
    masked = _completions(capsys, "--checkpoint", str(checkpoint_dir), "--selection", subset, *common)
    full = _completions(capsys, "--checkpoint", str(checkpoint_dir), *common)
    assert [r["completion"] for r in masked] == [r["completion"] for r in sliced]
    assert [r["completion"] for r in full] != [r["completion"] for r in sliced]
    assert all(r["selection"] == "math" for r in masked) and "selection" not in full[0]


def test_auto_generates_each_prompt_with_the_subset_it_chooses(
    store_dir, checkpoint_dir, domain_subsets, tmp_path, capsys
):
    store = TokenStore.open(store_dir)
    prompts = _held_out_prompts(store, tmp_path / "prompts.txt")
    common = ["--greedy", "--max-new-tokens", "6", "--tokenizer", str(store.tokenizer_path)]
    spec = ["--selection", "auto", *(str(p) for p in domain_subsets.values()), "--auto-tokens", "12"]
    records = _completions(capsys, "--checkpoint", str(checkpoint_dir), "--prompts", str(prompts), *spec, *common)
    assert len({r["selection"] for r in records}) > 1  # the prompts of different domains choose differently
    for record in records:
        capsys.readouterr()
        subset = str(domain_subsets[record["selection"]])
        assert main(["generate", "--checkpoint", subset, "--prompt", record["prompt"], *common]) == 0
        assert capsys.readouterr().out == record["completion"] + "\n"
