import torch

from emomoe.checkpoint import load_for_inference, save_model
from emomoe.model import ModelConfig, build_model


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
