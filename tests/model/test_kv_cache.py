import pytest
import torch

from emomoe import ModelConfig, build_model

EOS = 0


def _model(*overrides):
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny").with_overrides([f"eos_id={EOS}", *overrides])
    return build_model(cfg).eval()


def _ids(S, seed=0):
    ids = torch.randint(1, 256, (1, S), generator=torch.Generator().manual_seed(seed))
    ids[0, S // 3] = EOS  # a document boundary inside the prompt exercises the document mask
    return ids


@pytest.mark.parametrize(
    "overrides",
    [[], ["num_kv_heads=2", "qk_norm=true"], ["doc_attention_mask=false"]],
    ids=["mha", "gqa-qknorm", "no-doc-mask"],
)
def test_decoding_in_chunks_gives_the_logits_of_the_full_forward(overrides):
    model = _model(*overrides)
    ids = _ids(20)
    with torch.no_grad():
        full_BSV = model(ids).logits
        cache = model.new_cache(1, 20)
        chunks = [model.decode(ids[:, :6], cache), model.decode(ids[:, 6:9], cache)]
        chunks += [model.decode(ids[:, i : i + 1], cache) for i in range(9, 20)]
    assert torch.allclose(torch.cat(chunks, dim=1), full_BSV, atol=1e-5)


def test_left_padded_rows_give_the_logits_of_each_row_alone():
    model = _model()
    rows = [_ids(14, seed=1)[0], _ids(5, seed=2)[0], _ids(9, seed=3)[0]]
    ids_BS = torch.full((3, 14), 7)  # padding holds an ordinary token: only the mask may hide it
    valid_BS = torch.zeros(3, 14, dtype=torch.bool)
    for b, row in enumerate(rows):
        ids_BS[b, 14 - len(row) :] = row
        valid_BS[b, 14 - len(row) :] = True
    nxt_B1 = torch.tensor([[3], [4], [5]])
    with torch.no_grad():
        cache = model.new_cache(3, 15)
        prompt_BSV = model.decode(ids_BS, cache, valid_BS)
        step_B1V = model.decode(nxt_B1, cache)
        assert torch.isfinite(prompt_BSV).all()
        for b, row in enumerate(rows):
            alone_SV = model(torch.cat([row, nxt_B1[b]])[None]).logits[0]
            assert torch.allclose(prompt_BSV[b, 14 - len(row) :], alone_SV[:-1], atol=1e-5)
            assert torch.allclose(step_B1V[b, 0], alone_SV[-1], atol=1e-5)


def test_decode_refuses_training_mode_an_eval_pool_and_a_full_cache():
    model = _model()
    with pytest.raises(ValueError, match="max_seq_len"):
        model.new_cache(1, model.cfg.max_seq_len + 1)
    cache = model.new_cache(1, 4)
    with pytest.raises(ValueError, match="capacity 4"):
        model.decode(_ids(5), cache)
    with pytest.raises(ValueError, match="eval mode"):
        model.train().decode(_ids(3), model.new_cache(1, 4))
    with pytest.raises(ValueError, match="eval_pool"):
        _model("moe.router.eval_pool=4").decode(_ids(3), model.new_cache(1, 4))
