import json

import pytest
import torch

from emomoe.checkpoint import load_model, save_model
from emomoe.checkpoint.selection import SELECTION_FILE
from emomoe.errors import DataError
from emomoe.io import write_checksums
from emomoe.select.keep import KeepSpec
from emomoe.select.merge import merge_subset
from emomoe.select.subset import select_subset


@pytest.fixture
def changed_subset(tmp_path, checkpoint_dir):
    """A subset whose every weight was shifted by +1, standing in for a fine-tuned one."""
    select_subset(checkpoint_dir, tmp_path / "sub", keep=KeepSpec.parse("2,3"), method="random", seed=5)
    sub, cfg = load_model(tmp_path / "sub")
    with torch.no_grad():
        for p in sub.parameters():
            p.add_(1.0)
    record = json.loads((tmp_path / "sub" / SELECTION_FILE).read_text())
    save_model(tmp_path / "changed", sub, cfg)
    (tmp_path / "changed" / SELECTION_FILE).write_text(json.dumps(record))
    write_checksums(tmp_path / "changed")
    return tmp_path / "changed", record["kept_experts"]


def test_only_routed_experts_go_back_by_default(tmp_path, checkpoint_dir, changed_subset):
    subset_dir, kept = changed_subset
    merge_subset(checkpoint_dir, subset_dir, tmp_path / "merged")
    full, _ = load_model(checkpoint_dir)
    sub, _ = load_model(subset_dir)
    merged, _ = load_model(tmp_path / "merged")
    for i, ids in enumerate(kept):
        m, f, s = (x.layers[i].moe for x in (merged, full, sub))
        others = [e for e in range(8) if e not in ids]
        torch.testing.assert_close(m.experts.w3[ids], s.experts.w3[: len(ids)])
        torch.testing.assert_close(m.experts.w3[others], f.experts.w3[others])
        torch.testing.assert_close(m.router.gate.weight, f.router.gate.weight)
    torch.testing.assert_close(merged.embed.weight, full.embed.weight)


def test_router_shared_and_blending_on_request(tmp_path, checkpoint_dir, changed_subset):
    subset_dir, kept = changed_subset
    merge_subset(checkpoint_dir, subset_dir, tmp_path / "m", alpha=0.25, router=True, shared=True, non_moe=True)
    full, _ = load_model(checkpoint_dir)
    merged, _ = load_model(tmp_path / "m")
    ids = kept[1] + [7]
    gate = merged.layers[1].moe.router.gate.weight
    torch.testing.assert_close(gate[ids], full.layers[1].moe.router.gate.weight[ids] + 0.25)
    torch.testing.assert_close(merged.layers[1].moe.experts.w1[ids], full.layers[1].moe.experts.w1[ids] + 0.25)
    torch.testing.assert_close(merged.lm_head.weight, full.lm_head.weight + 0.25)


def test_a_different_source_checkpoint_is_refused(tmp_path, checkpoint_dir, changed_subset):
    subset_dir, _ = changed_subset
    other, cfg = load_model(checkpoint_dir)
    with torch.no_grad():
        other.embed.weight.add_(1.0)
    save_model(tmp_path / "other", other, cfg)
    with pytest.raises(DataError, match="different checkpoint"):
        merge_subset(tmp_path / "other", subset_dir, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    merge_subset(tmp_path / "other", subset_dir, tmp_path / "merged", any_source=True)
    assert (tmp_path / "merged" / "model.safetensors").is_file()
