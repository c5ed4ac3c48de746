import json

import pytest
import torch

from emomoe.checkpoint import checkpoint_hash, load_model
from emomoe.errors import ConfigError, DataError
from emomoe.select.calibration import store_calibration
from emomoe.select.keep import KeepSpec
from emomoe.select.finetune import finetune_subset
from emomoe.select.merge import merge_subset
from emomoe.select.subset import SELECTION_FILE, select_subset


@pytest.fixture(scope="module")
def calib(store_dir):
    return store_calibration(store_dir, ["code"], num_windows=4, seq_len=32, batch_size=2)


@pytest.mark.parametrize("method", ["layerwise", "global", "easy-ep", "random"])
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


def test_the_api_never_overwrites_without_force(tmp_path, checkpoint_dir, calib, store_dir):
    out = tmp_path / "sub"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"sub: already exists \(pass --force, or force=True, to replace it\)"):
        select_subset(checkpoint_dir, out, keep=KeepSpec.parse("2"), calibration=calib)
    assert (out / "notes.txt").read_text() == "mine"
    select_subset(checkpoint_dir, out, keep=KeepSpec.parse("2"), calibration=calib, force=True)
    assert (out / SELECTION_FILE).is_file() and not (out / "notes.txt").exists()
    for call in (lambda: finetune_subset(out, store_dir, out, max_steps=1),
                 lambda: merge_subset(checkpoint_dir, out, out)):
        with pytest.raises(DataError, match="already exists"):
            call()
