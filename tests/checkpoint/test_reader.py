import json
from pathlib import Path

import pytest
import torch
from hypothesis import given
from safetensors.torch import load_file

from emomoe.checkpoint import CheckpointReader, TensorSource, load_model, register_format, save_model
from emomoe.checkpoint.formats import _FORMATS, CONFIG_FILE, EmomoeFormat
from emomoe.checkpoint.writer import INDEX_FILE, SINGLE_FILE
from emomoe.errors import DataError
from emomoe.io import CHECKSUMS_FILE, write_checksums
from emomoe.model import ModelConfig, build_model
from tests.fixtures import damaged, fuzz_settings, only_our_errors


def tiny(seed=0):
    cfg = ModelConfig.preset("tiny")
    torch.manual_seed(seed)
    return build_model(cfg), cfg


@pytest.fixture(params=["single", "sharded"])
def checkpoint(request, tmp_path):
    model, cfg = tiny()
    shard = 10**9 if request.param == "single" else 20_000
    return save_model(tmp_path / "ckpt", model, cfg, max_shard_bytes=shard), model


def test_reads_every_tensor_by_name_in_its_stored_dtype(checkpoint):
    directory, model = checkpoint
    with CheckpointReader(directory) as reader:
        assert reader.format == "emomoe"
        assert sorted(reader.names()) == sorted(model.state_dict())
        for name, tensor in model.state_dict().items():
            assert reader.shape(name) == tuple(tensor.shape)
            assert torch.equal(reader.get(name), tensor)


def test_rows_reads_only_the_requested_experts_in_order(checkpoint):
    directory, model = checkpoint
    w1 = model.state_dict()["layers.1.moe.experts.w1"]
    with CheckpointReader(directory) as reader:
        for rows in ([3], [0, 1, 2], [5, 6, 2, 7], []):
            assert torch.equal(reader.get("layers.1.moe.experts.w1", rows=rows), w1[rows])


def test_sharded_checkpoint_has_an_index_and_loads_the_same_model(tmp_path):
    model, cfg = tiny()
    save_model(tmp_path / "a", model, cfg, max_shard_bytes=20_000)
    assert (tmp_path / "a" / INDEX_FILE).is_file() and not (tmp_path / "a" / SINGLE_FILE).exists()
    loaded, _ = load_model(tmp_path / "a")
    ids_BS = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(ids_BS).logits, model.eval()(ids_BS).logits, rtol=0, atol=0)


def test_stored_dtype_is_kept_on_request(tmp_path):
    model, cfg = tiny()
    save_model(tmp_path / "bf16", model.to(torch.bfloat16), cfg)
    with CheckpointReader(tmp_path / "bf16") as reader:
        assert reader.dtype("embed.weight") == torch.bfloat16
    stored, _ = load_model(tmp_path / "bf16", dtype="stored")
    assert stored.embed.weight.dtype == torch.bfloat16
    default, _ = load_model(tmp_path / "bf16")
    assert default.embed.weight.dtype == torch.float32
    assert torch.equal(default.embed.weight, model.embed.weight.float())


def test_fingerprint_tells_models_of_the_same_shape_apart(tmp_path):
    for seed in (0, 1):
        save_model(tmp_path / f"m{seed}", *tiny(seed))
    save_model(tmp_path / "again", *tiny(0))
    prints = [CheckpointReader(tmp_path / d).fingerprint() for d in ("m0", "m1", "again")]
    assert prints[0] != prints[1] and prints[0] == prints[2]


def test_fingerprint_of_large_files_samples_the_data(tmp_path, monkeypatch):
    import emomoe.checkpoint.reader as reader_module

    monkeypatch.setattr(reader_module, "_FULL_HASH_BYTES", 1000)
    monkeypatch.setattr(reader_module, "_BLOCK_BYTES", 64)
    for seed in (0, 1):
        save_model(tmp_path / f"m{seed}", *tiny(seed))
    assert CheckpointReader(tmp_path / "m0").fingerprint() != CheckpointReader(tmp_path / "m1").fingerprint()


def test_missing_shard_is_named(tmp_path):
    save_model(tmp_path / "c", *tiny(), max_shard_bytes=20_000)
    index = json.loads((tmp_path / "c" / INDEX_FILE).read_text())
    victim = sorted(set(index["weight_map"].values()))[1]
    (tmp_path / "c" / victim).unlink()
    with pytest.raises(DataError, match=f"{victim}: missing \\(listed in checksums.sha256\\)"):
        CheckpointReader(tmp_path / "c")
    with pytest.raises(DataError, match=f"names shard {victim}, which does not exist"):  # unverified: the index says it
        CheckpointReader(tmp_path / "c", verify=False)


@pytest.mark.parametrize("damage, message", [
    pytest.param(lambda index: index.update(weight_map=5),
                 r"not a safetensors index \(expected a 'weight_map' of tensor names", id="weight-map-5"),
    pytest.param(lambda index: index["weight_map"].update({"embed.weight": "../../elsewhere.safetensors"}),
                 r"not a safetensors index", id="shard-outside-the-folder"),
    pytest.param(lambda index: index["weight_map"].pop(sorted(index["weight_map"])[3]),
                 r"does not list tensor 'layers\.0\.attn\.q_proj\.weight', which model-\d+-of-\d+\.safetensors holds",
                 id="entry-missing"),
])
def test_a_damaged_index_is_one_error_naming_it(tmp_path, damage, message):
    save_model(tmp_path / "c", *tiny(), max_shard_bytes=20_000)
    index_file = tmp_path / "c" / INDEX_FILE
    index = json.loads(index_file.read_text())
    damage(index)
    index_file.write_text(json.dumps(index))
    write_checksums(tmp_path / "c")  # damaged as the writer left it: the index itself is wrong
    with pytest.raises(DataError, match=rf"{INDEX_FILE}: {message}"):
        CheckpointReader(tmp_path / "c")


def test_truncated_weights_are_named(tmp_path):
    save_model(tmp_path / "c", *tiny())
    path = tmp_path / "c" / SINGLE_FILE
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=str(path)):
        load_model(tmp_path / "c")


def test_wrong_shape_names_the_file_and_the_tensor(tmp_path):
    save_model(tmp_path / "c", *tiny())
    cfg_path = tmp_path / "c" / CONFIG_FILE
    cfg_path.write_text(cfg_path.read_text().replace("d_model: 32", "d_model: 64"))
    with pytest.raises(DataError, match=r"model.safetensors: tensor '.*' has shape \[.*\], the config implies"):
        CheckpointReader(tmp_path / "c", verify=False)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(DataError, match="not a model checkpoint"):
        CheckpointReader(tmp_path)
    with pytest.raises(DataError, match="no such checkpoint directory"):
        CheckpointReader(tmp_path / "nope")


class PerExpertFormat(EmomoeFormat):
    """A test layout: stacked expert banks stored as one tensor per expert, like HF's."""

    name = "per-expert"

    def detect(self, directory: Path) -> bool:
        return (directory / "per_expert").is_file()

    def sources(self, cfg, keys):
        sources, banks = {}, {}
        for key in keys:
            bank, _, j = key.rpartition("#")
            if bank:
                banks.setdefault(bank, {})[int(j)] = key
            else:
                sources[key] = TensorSource.whole(key)
        for bank, rows in banks.items():
            sources[bank] = TensorSource.rows([rows[j] for j in range(len(rows))])
        return sources


def test_a_registered_format_maps_per_expert_files_onto_stacked_tensors(tmp_path):
    model, cfg = tiny()
    save_model(tmp_path / "c", model, cfg)
    (tmp_path / "c" / CHECKSUMS_FILE).unlink()  # the files are rewritten below, as another tool would
    state = load_file(str(tmp_path / "c" / SINGLE_FILE))
    split = {}
    for name, t in state.items():
        if ".experts." in name:
            split.update({f"{name}#{j}": t[j].clone() for j in range(t.shape[0])})
        else:
            split[name] = t
    from safetensors.torch import save_file

    save_file(split, str(tmp_path / "c" / SINGLE_FILE), metadata={"format": "pt"})
    (tmp_path / "c" / "per_expert").touch()
    register_format(PerExpertFormat())
    try:
        with CheckpointReader(tmp_path / "c") as reader:
            assert reader.format == "per-expert"
            w2 = model.state_dict()["layers.0.moe.experts.w2"]
            assert reader.shape("layers.0.moe.experts.w2") == tuple(w2.shape)
            assert torch.equal(reader.get("layers.0.moe.experts.w2", rows=[6, 1]), w2[[6, 1]])
        loaded, _ = load_model(tmp_path / "c")
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    finally:
        _FORMATS[:] = [f for f in _FORMATS if f.name != "per-expert"]


@pytest.mark.parametrize("part", ["header", "index"])
def test_fuzz_a_damaged_safetensors_header_or_index_raises_only_our_errors(tmp_path, part):
    directory = save_model(tmp_path / "c", *tiny(), max_shard_bytes=20_000 if part == "index" else 10**9)
    path = directory / (INDEX_FILE if part == "index" else SINGLE_FILE)
    whole = path.read_bytes()
    # A header: its 8-byte length and the JSON after it; the tensor data is left as it is.
    end = len(whole) if part == "index" else 8 + int.from_bytes(whole[:8], "little")

    @fuzz_settings()
    @given(damaged(whole[:end]))
    def read(data):
        path.write_bytes(data + whole[end:])
        write_checksums(directory)
        reader = only_our_errors(CheckpointReader, directory)
        if reader is not None:
            only_our_errors(lambda: [reader.get(name) for name in reader.names()])

    read()
