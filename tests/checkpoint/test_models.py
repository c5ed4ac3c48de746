import os
import re

import pytest
import torch
from hypothesis import given

from emomoe.checkpoint import WEIGHTS_FILE, CheckpointReader, load_config, load_for_inference, load_model, save_model
from emomoe.errors import DataError
from emomoe.io import CHECKSUMS_FILE, OUTPUT_MARKER, write_checksums
from emomoe.model import ModelConfig, build_model
from tests.fixtures import damage, damaged, fuzz_settings, only_our_errors


def test_inference_routing_uses_no_document_pool(tmp_path):
    base = ModelConfig.preset("tiny").with_overrides(["moe.router.pool=2..8", "moe.router.eval_pool=2"])
    torch.manual_seed(0)
    model = build_model(base)
    with torch.no_grad():
        for block in model.layers:
            block.moe.router.gate.weight.mul_(40.0)
    save_model(tmp_path / "ckpt", model, base)
    loaded, cfg = load_for_inference(tmp_path / "ckpt")
    assert not loaded.training and cfg.moe.router.eval_pool == "off"
    pool_free = build_model(base.with_overrides(["moe.router.eval_pool=off"])).eval()
    pool_free.load_state_dict(model.state_dict())
    ids_BS = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1))
    doc_ids_BS = torch.zeros_like(ids_BS)
    with torch.no_grad():
        expected = pool_free(ids_BS, doc_ids_BS).logits
        torch.testing.assert_close(loaded(ids_BS, doc_ids_BS).logits, expected)
        assert not torch.allclose(model.eval()(ids_BS, doc_ids_BS).logits, expected, atol=1e-4)


def saved_tiny(tmp_path):
    cfg = ModelConfig.preset("tiny")
    torch.manual_seed(0)
    return save_model(tmp_path / "ckpt", build_model(cfg), cfg, meta={"step": 1})


@pytest.mark.parametrize("file", ["model.safetensors", "model.yaml", "meta.json"])
@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_damaged_file_is_named_on_load(tmp_path, file, how):
    directory = saved_tiny(tmp_path)
    load_model(directory)
    path = damage(directory / file, how)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: checksum mismatch"):
        load_model(directory)


def test_unverified_a_truncated_file_is_still_a_data_error(tmp_path):
    directory = saved_tiny(tmp_path)
    weights = directory / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(DataError, match=re.escape(str(weights))):
        CheckpointReader(directory, verify=False)


def test_a_deleted_checksum_file_or_line_is_an_error_not_a_skip(tmp_path):
    directory = saved_tiny(tmp_path)
    manifest = directory / CHECKSUMS_FILE
    lines = manifest.read_text().splitlines(keepends=True)
    damage(directory / WEIGHTS_FILE, "flip")
    manifest.write_text("".join(line for line in lines if not line.endswith(f"  {WEIGHTS_FILE}\n")))
    with pytest.raises(DataError, match=rf"checksums\.sha256: has no checksum for {WEIGHTS_FILE}$"):
        load_model(directory)
    manifest.write_text("".join(line for line in lines if not line.endswith("  model.yaml\n")))
    with pytest.raises(DataError, match=r"checksums\.sha256: has no checksum for model\.yaml$"):
        load_config(directory)
    manifest.unlink()
    with pytest.raises(DataError, match=rf"^{re.escape(str(directory))}: has no checksums\.sha256, which every emomoe "
                                        "checkpoint carries"):
        load_model(directory)


def test_every_file_of_a_saved_model_is_listed(tmp_path):
    directory = saved_tiny(tmp_path)
    listed = sorted(line.split("  ")[1] for line in (directory / CHECKSUMS_FILE).read_text().splitlines())
    assert listed == sorted(p.name for p in directory.iterdir() if p.name not in (CHECKSUMS_FILE, OUTPUT_MARKER))


@pytest.mark.parametrize("memory, stays_bf16", [(10**12, False), (10**5, True)])
def test_auto_dtype_keeps_bf16_weights_only_when_fp32_ones_would_not_fit(tmp_path, monkeypatch, memory, stays_bf16):
    from emomoe.checkpoint import models

    cfg = ModelConfig.preset("tiny")
    torch.manual_seed(0)
    model = build_model(cfg).bfloat16()
    save_model(tmp_path / "bf16", model, cfg)
    reference = build_model(cfg).eval()
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    monkeypatch.setattr(models, "available_memory", lambda: memory)
    loaded, _ = load_for_inference(tmp_path / "bf16", dtype="auto")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16 if stays_bf16 else torch.float32}
    ids_BS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(ids_BS).logits
        torch.testing.assert_close(loaded(ids_BS).logits, expected, rtol=1e-5, atol=1e-5)
        # Decoding with a KV cache (generation) too, prompt then one token at a time.
        cache = loaded.new_cache(2, 24)
        steps = [loaded.decode(ids_BS[:, :20], cache), *(loaded.decode(ids_BS[:, i : i + 1], cache) for i in range(20, 24))]
        torch.testing.assert_close(torch.cat(steps, dim=1), expected, rtol=1e-4, atol=1e-4)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16 if stays_bf16 else torch.float32}


def test_available_memory_is_below_the_machine_total():
    from emomoe.checkpoint.models import available_memory

    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < available_memory() <= total


def test_fuzz_a_damaged_model_yaml_raises_only_our_errors(tmp_path):
    directory = saved_tiny(tmp_path)
    valid = (directory / "model.yaml").read_bytes()

    @fuzz_settings()
    @given(damaged(valid))
    def read(data):
        (directory / "model.yaml").write_bytes(data)
        write_checksums(directory)  # as written: the file itself is what is wrong
        only_our_errors(load_model, directory)

    read()
