import json
import shutil

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from emomoe.checkpoint import CheckpointReader, checkpoint_hash, load_model, save_model
from emomoe.checkpoint import writer as writer_module
from emomoe.checkpoint.selection import SELECTION_FILE
from emomoe.data.store import TokenStore
from emomoe.errors import ConfigError, DataError
from emomoe.experiments.finetune import finetune_subset
from emomoe.io import write_checksums
from emomoe.model import build_model
from emomoe.select.calibration import store_calibration
from emomoe.select.keep import KeepSpec
from emomoe.select.merge import merge_subset
from emomoe.select.methods import ExpertSelector
from emomoe.select.routing import moe_layers
from emomoe.select.subset import select_subset, subset_bytes
from tests.fixtures import tiny_config


@pytest.fixture(scope="module")
def calib(store_dir):
    return store_calibration(store_dir, ["code"], num_windows=4, seq_len=32, batch_size=2)


@pytest.mark.parametrize("method", ["layerwise", "global", "easy-ep", "reap", "random"])
def test_select_writes_a_smaller_self_contained_subset(tmp_path, checkpoint_dir, calib, method):
    out = tmp_path / "sub"
    record = select_subset(checkpoint_dir, out, keep=KeepSpec.parse("0.5"), method=method, calibration=calib)
    saved = json.loads((out / SELECTION_FILE).read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["source_sha256"] == checkpoint_hash(checkpoint_dir)
    assert saved["method"] == method and saved["keep"] == "0.5"
    assert [len(k) for k in saved["kept_experts"]] == [4, 4]  # round(0.5 * 7) routed per layer
    assert all(k == sorted(set(k)) and 0 <= min(k) and max(k) < 7 for k in saved["kept_experts"])
    assert (saved["calibration"] is None) == (method == "random")
    sub, sub_cfg = load_model(out)
    full, _ = load_model(checkpoint_dir)
    assert sum(p.numel() for p in sub.parameters()) < sum(p.numel() for p in full.parameters())
    assert (out / "model.safetensors").stat().st_size < (checkpoint_dir / "model.safetensors").stat().st_size
    assert sub_cfg.moe.num_experts_per_layer == [5, 5] and saved["num_params"]["total"] == sub_cfg.num_params()[0]
    kept_w2 = full.layers[1].moe.experts.w2[saved["kept_experts"][1]]
    torch.testing.assert_close(sub.layers[1].moe.experts.w2[:4], kept_w2)


def test_the_router_profile_is_the_global_score_and_optional(tmp_path, checkpoint_dir, calib):
    record = select_subset(checkpoint_dir, tmp_path / "lw", keep="0.5", method="layerwise", calibration=calib)
    global_scores = select_subset(checkpoint_dir, tmp_path / "gl", keep="1.0", method="global", calibration=calib)
    assert record["router_profile"] == global_scores["router_profile"]
    with CheckpointReader(checkpoint_dir) as reader:
        expected = ExpertSelector(reader, calib.batches, "global").scores()
    assert record["router_profile"] == [scores_E.tolist() for scores_E in expected]
    assert all(sum(p) == pytest.approx(1.0) for p in record["router_profile"])
    without = select_subset(checkpoint_dir, tmp_path / "no", keep="0.5", calibration=calib, router_profile=False)
    assert "router_profile" not in without and without["kept_experts"] == record["kept_experts"]
    again = select_subset(checkpoint_dir, tmp_path / "again", selection=tmp_path / "lw")
    assert again["router_profile"] == record["router_profile"]


@pytest.mark.parametrize(
    "keep, error, match",
    [("8", ConfigError, "only 7 routed"), ("0", ConfigError, "at least 1"), ("3,3,3", ConfigError, "per-layer")],
)
def test_bad_keep_writes_nothing(tmp_path, checkpoint_dir, calib, keep, error, match):
    with pytest.raises(error, match=match):
        select_subset(checkpoint_dir, tmp_path / "sub", keep=KeepSpec.parse(keep), calibration=calib)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_without_routers_is_refused(tmp_path, make_tiny_config, calib):
    from emomoe.checkpoint import save_model
    from emomoe.model import build_model

    dense = ["moe.num_experts=1", "moe.top_k=0", "vocab_size=300", "max_seq_len=64"]
    cfg = make_tiny_config(pool="off").with_overrides(dense)
    save_model(tmp_path / "dense", build_model(cfg), cfg)
    with pytest.raises(DataError, match="no MoE layers"):
        select_subset(tmp_path / "dense", tmp_path / "sub", keep=KeepSpec.parse("1"), calibration=calib)
    assert not (tmp_path / "sub").exists()


def test_calibration_is_required_unless_random(tmp_path, checkpoint_dir):
    with pytest.raises(ConfigError, match="calibration"):
        select_subset(checkpoint_dir, tmp_path / "sub", keep=KeepSpec.parse("2"), method="global")
    select_subset(checkpoint_dir, tmp_path / "sub", keep=KeepSpec.parse("2"), method="random", seed=3)
    assert json.loads((tmp_path / "sub" / SELECTION_FILE).read_text())["seed"] == 3


def _tensors(directory):
    with CheckpointReader(directory) as reader:
        return {name: reader.get(name) for name in reader.names()}


@pytest.fixture(scope="module")
def layerwise_subset(tmp_path_factory, checkpoint_dir, calib):
    out = tmp_path_factory.mktemp("made") / "sub"
    select_subset(checkpoint_dir, out, keep=KeepSpec.parse("3"), calibration=calib)
    return out


@pytest.mark.parametrize("given", ["file", "directory"])
def test_a_selection_is_reused_without_calibration(tmp_path, checkpoint_dir, layerwise_subset, given):
    selection = layerwise_subset / SELECTION_FILE if given == "file" else layerwise_subset
    record = select_subset(checkpoint_dir, tmp_path / "again", selection=selection)
    original = json.loads((layerwise_subset / SELECTION_FILE).read_text())
    assert record["kept_experts"] == original["kept_experts"] and record["method"] == "layerwise"
    assert record["reused_from"] == str((layerwise_subset / SELECTION_FILE).resolve())
    again, first = _tensors(tmp_path / "again"), _tensors(layerwise_subset)
    assert sorted(again) == sorted(first) and all(torch.equal(again[k], first[k]) for k in first)


def _other_model(tmp_path, checkpoint_dir):
    """The same architecture with other weights."""
    model, cfg = load_model(checkpoint_dir)
    with torch.no_grad():
        model.layers[0].attn.q_proj.weight.mul_(-1.0)
    save_model(tmp_path / "other", model, cfg)
    return tmp_path / "other"


def test_a_selection_from_another_model_is_refused_and_nothing_changes(tmp_path, checkpoint_dir, layerwise_subset):
    other = _other_model(tmp_path, checkpoint_dir)
    out = tmp_path / "out"
    select_subset(checkpoint_dir, out, keep=KeepSpec.parse("2"), method="random")
    before = _tensors(out)
    with pytest.raises(DataError, match=f"{layerwise_subset / SELECTION_FILE}: was made for another model"):
        select_subset(other, out, selection=layerwise_subset, force=True)
    after = _tensors(out)
    assert sorted(after) == sorted(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "out"]


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda r: r.update(kept_experts=[[1], [0, 9]]), r"layer 1 must be .* ids in \[0, 7\), got \[0, 9\]"),
        (lambda r: r.update(kept_experts=[[2, 1], [1]]), "ascending"),
        (lambda r: r.update(moe_layers=[0]), "MoE layers"),
        (lambda r: r.pop("kept_experts"), "missing 'kept_experts'"),
    ],
)
def test_a_malformed_selection_is_refused(tmp_path, checkpoint_dir, layerwise_subset, edit, match):
    record = json.loads((layerwise_subset / SELECTION_FILE).read_text())
    edit(record)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(record))
    with pytest.raises(DataError, match=match):
        select_subset(checkpoint_dir, tmp_path / "sub", selection=path)
    assert not (tmp_path / "sub").exists()


def test_not_enough_free_disk_is_refused_before_writing(tmp_path, checkpoint_dir, calib, monkeypatch):
    planned = subset_bytes_of(checkpoint_dir, [4, 4])
    free = planned  # not enough once the margin for headers and the config is added
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 * free, 9 * free, free))
    with pytest.raises(DataError, match=f"{tmp_path / 'sub'}: the subset needs .* MB of free disk, only .* MB is free"):
        select_subset(checkpoint_dir, tmp_path / "sub", keep=KeepSpec.parse("0.5"), calibration=calib)
    assert list(tmp_path.iterdir()) == []


def subset_bytes_of(checkpoint_dir, num_keep):
    with CheckpointReader(checkpoint_dir) as reader:
        return subset_bytes(reader, moe_layers(reader.config), num_keep)


def test_planned_subset_bytes_are_the_tensor_bytes_written(tmp_path, checkpoint_dir, calib):
    select_subset(checkpoint_dir, tmp_path / "sub", keep=KeepSpec.parse("0.5"), calibration=calib)
    written = sum(t.numel() * t.element_size() for t in _tensors(tmp_path / "sub").values())
    assert subset_bytes_of(checkpoint_dir, [4, 4]) == written


EXPERT_BYTES = 4 * (3 * 32 * 32 + 32)
"""One routed expert of the tiny model in float32: its w1, w3 and w2 (d_model 32, hidden 32) and its gate row."""


@pytest.fixture(scope="module")
def uneven(tmp_path_factory, store_dir):
    """A tiny three-layer checkpoint whose routing is peaked in layer 0 and nearly flat in layer 1."""
    torch.manual_seed(2)
    cfg = tiny_config(num_layers=3).with_overrides([f"vocab_size={TokenStore.open(store_dir).vocab_size}"])
    model = build_model(cfg)
    with torch.no_grad():
        for block, scale in zip(model.layers, (60.0, 0.5, 10.0)):
            block.moe.router.gate.weight.mul_(scale)
    return save_model(tmp_path_factory.mktemp("uneven") / "full", model, cfg)


@pytest.mark.parametrize("method", ["global", "layerwise"])
def test_a_byte_budget_fills_up_along_one_ranking_of_every_layers_experts(tmp_path, uneven, calib, method):
    budget = subset_bytes_of(uneven, [4, 4, 4]) + EXPERT_BYTES // 2
    record = select_subset(uneven, tmp_path / "sub", budget_gb=budget / 1e9, method=method, calibration=calib)
    written = sum(t.numel() * t.element_size() for t in _tensors(tmp_path / "sub").values())
    # The subset fits, and the next expert of any layer would not.
    assert written <= budget < written + EXPERT_BYTES
    assert record["budget"] == {"unit": "bytes", "limit": budget, "used": written}
    counts = [len(kept) for kept in record["kept_experts"]]
    assert record["keep"] == ",".join(map(str, counts)) and sum(counts) == 12 and len(set(counts)) > 1
    assert min(counts) >= 2  # every layer keeps its top-k
    # One ranking: every expert kept beyond its layer's top-k holds at least the share of its layer's
    # router mass that any expert left out holds of its own.
    shares = [sorted(mass_E, reverse=True) for mass_E in record["router_profile"]]
    kept_last = [s[n - 1] for s, n in zip(shares, counts) if n > 2]
    left_first = [s[n] for s, n in zip(shares, counts) if n < 7]
    assert min(kept_last) >= max(left_first)
    if method == "global":
        profile = record["router_profile"]
        top = [sorted(sorted(range(7), key=lambda e: -mass_E[e])[:n]) for mass_E, n in zip(profile, counts)]
        assert record["kept_experts"] == top
    again = select_subset(uneven, tmp_path / "again", selection=tmp_path / "sub")
    assert again["budget"] == record["budget"] and again["kept_experts"] == record["kept_experts"]


def test_a_parameter_budget_counts_the_subsets_parameters(tmp_path, uneven, calib):
    uniform = select_subset(uneven, tmp_path / "uniform", keep="3", method="random")["num_params"]["total"]
    record = select_subset(uneven, tmp_path / "sub", keep_params=uniform + 100, method="easy-ep", calibration=calib)
    total = record["num_params"]["total"]
    sub, _ = load_model(tmp_path / "sub")
    assert total == sum(p.numel() for p in sub.parameters()) == record["budget"]["used"]
    assert total <= uniform + 100 < total + EXPERT_BYTES // 4
    assert sum(len(kept) for kept in record["kept_experts"]) == 9


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"budget_gb": 1e-6}, r"^budget_gb 1e-06: the smallest subset \(the top-k routed experts in every layer, "
                              r"the shared experts and everything outside the experts\) takes 0\.2 MB "
                              r"\(\d{3},\d{3} bytes\)$"),
        ({"keep_params": 1000}, r"^keep_params 1,000: the smallest subset .* takes \d{2},\d{3} parameters$"),
        ({"keep": "2", "budget_gb": 1.0}, r"^keep and budget_gb: give one of them$"),
        ({"keep_params": -5}, r"^keep_params: expected an integer > 0, got -5$"),
    ],
)
def test_a_budget_that_cannot_be_met_writes_nothing(tmp_path, uneven, calib, fields, match):
    with pytest.raises(ConfigError, match=match):
        select_subset(uneven, tmp_path / "sub", calibration=calib, **fields)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_mid_write_leaves_the_previous_output_intact(tmp_path, checkpoint_dir, calib, monkeypatch):
    out = tmp_path / "sub"
    select_subset(checkpoint_dir, out, keep=KeepSpec.parse("2"), method="random")
    before = _tensors(out)
    calls = []

    def full_disk(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:  # what safetensors raises when the disk is full
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(writer_module, "save_file", full_disk)
    with pytest.raises(DataError, match=f"{out}: cannot write: no space left on the device"):
        select_subset(
            checkpoint_dir, out, keep=KeepSpec.parse("0.5"), calibration=calib, max_shard_bytes=20_000, force=True
        )
    assert len(calls) == 2
    after = _tensors(out)
    assert sorted(after) == sorted(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert [p.name for p in tmp_path.iterdir()] == ["sub"]


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_a_damaged_shard_is_named_and_nothing_is_written(tmp_path, checkpoint_dir, calib, damage):
    model, cfg = load_model(checkpoint_dir)
    save_model(tmp_path / "sharded", model, cfg, max_shard_bytes=20_000)
    shard = sorted((tmp_path / "sharded").glob("model-*.safetensors"))[1]
    with open(shard, "r+b") as f:
        if damage == "truncate":
            f.truncate(shard.stat().st_size - 100)
        else:
            f.seek(8)
            f.write(b"not json")
    # Checksums of the damaged files, as a broken writer would leave them: the damage is found reading the shard.
    write_checksums(tmp_path / "sharded")
    with pytest.raises(DataError, match=f"{shard}: not a readable safetensors file"):
        select_subset(tmp_path / "sharded", tmp_path / "sub", keep=KeepSpec.parse("2"), calibration=calib)
    assert not (tmp_path / "sub").exists()


def test_the_api_never_overwrites_without_force(tmp_path, checkpoint_dir, calib, store_dir):
    out = tmp_path / "sub"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"sub: already exists \(pass --force, or force=True, to replace it\)"):
        select_subset(checkpoint_dir, out, keep=KeepSpec.parse("2"), calibration=calib)
    # --force replaces a subset emomoe wrote, never a folder of the user's.
    with pytest.raises(DataError, match=r"sub: is a folder emomoe did not write \(no \.emomoe-output inside\)"):
        select_subset(checkpoint_dir, out, keep=KeepSpec.parse("2"), calibration=calib, force=True)
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    select_subset(checkpoint_dir, out, keep=KeepSpec.parse("2"), calibration=calib)
    (out / "notes.txt").write_text("added later")
    select_subset(checkpoint_dir, out, keep=KeepSpec.parse("2"), calibration=calib, force=True)
    assert (out / SELECTION_FILE).is_file() and (out / "notes.txt").read_text() == "added later"
    for call in (lambda: finetune_subset(out, store_dir, out, max_steps=1),
                 lambda: merge_subset(checkpoint_dir, out, out)):
        with pytest.raises(DataError, match="already exists"):
            call()
