import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emomoe.checkpoint import load_model, save_model
from emomoe.model import build_model
from emomoe.select.routing import moe_layers
from emomoe.select.slicing import slice_model


def _full_with_dropped_logits_at_minus_inf(model, layers, kept_routed, ids_BS):
    """Reference: the full model, with a hook that sets dropped routed experts' gate logits to -inf."""

    def hook_for(layer, kept):
        def hook(module, args, logits_TE):
            dropped = [e for e in range(layer.num_routed) if e not in kept]
            logits_TE = logits_TE.clone()
            logits_TE[:, dropped] = float("-inf")
            return logits_TE

        return hook

    handles = [
        model.layers[layer.index].moe.router.gate.register_forward_hook(hook_for(layer, kept))
        for layer, kept in zip(layers, kept_routed)
    ]
    try:
        return model(ids_BS).logits
    finally:
        for h in handles:
            h.remove()


def _subsets(num_routed: int, num_layers: int):
    subset = st.sets(st.integers(0, num_routed - 1), min_size=1, max_size=num_routed).map(sorted)
    return st.lists(subset, min_size=num_layers, max_size=num_layers)


@settings(max_examples=25, deadline=None)
@given(kept_routed=_subsets(7, 2), seed=st.integers(0, 10_000))
def test_sliced_logits_equal_full_model_with_dropped_router_logits_at_minus_inf(tiny, random_ids, kept_routed, seed):
    model, cfg = tiny
    layers = moe_layers(cfg)
    ids_BS = random_ids(cfg, seed=seed)
    sub, sub_cfg = slice_model(model, cfg, layers, kept_routed)
    with torch.no_grad():
        expected = _full_with_dropped_logits_at_minus_inf(model, layers, kept_routed, ids_BS)
        got = sub(ids_BS).logits
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
    assert sub_cfg.moe.num_experts_per_layer == [len(k) + 1 for k in kept_routed]


def test_dropping_experts_changes_the_output(tiny, random_ids):
    model, cfg = tiny
    layers = moe_layers(cfg)
    ids_BS = random_ids(cfg)
    sub, _ = slice_model(model, cfg, layers, [[0], [1]])
    with torch.no_grad():
        assert not torch.allclose(sub(ids_BS).logits, model(ids_BS).logits, atol=1e-3)


def test_subset_is_smaller_and_loads_on_its_own(tiny, random_ids, tmp_path):
    model, cfg = tiny
    layers = moe_layers(cfg)
    sub, sub_cfg = slice_model(model, cfg, layers, [[1, 4], [0, 2, 6]])
    save_model(tmp_path / "full", model, cfg)
    save_model(tmp_path / "sub", sub, sub_cfg)
    loaded, loaded_cfg = load_model(tmp_path / "sub")
    n_sub = sum(p.numel() for p in loaded.parameters())
    n_full = sum(p.numel() for p in model.parameters())
    assert n_sub < n_full and n_sub == loaded_cfg.num_params()[0]
    assert loaded.layers[0].moe.experts.w1.shape[0] == 3 and loaded.layers[1].moe.router.gate.out_features == 4
    full_bytes = (tmp_path / "full" / "model.safetensors").stat().st_size
    assert (tmp_path / "sub" / "model.safetensors").stat().st_size < full_bytes
    assert loaded_cfg.moe.router.pool == "off"
    ids_BS = random_ids(cfg)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(ids_BS).logits, sub.eval()(ids_BS).logits)


def test_shared_experts_are_kept_last_and_weights_copied(tiny):
    model, cfg = tiny
    layers = moe_layers(cfg)
    sub, _ = slice_model(model, cfg, layers, [[2, 5], [3]])
    full_w1 = model.layers[0].moe.experts.w1
    sub_w1 = sub.layers[0].moe.experts.w1
    torch.testing.assert_close(sub_w1, full_w1[[2, 5, 7]])
    torch.testing.assert_close(sub.layers[1].moe.router.gate.weight, model.layers[1].moe.router.gate.weight[[3, 7]])


def test_router_selection_bias_is_sliced_with_the_routed_experts(make_tiny_config):
    cfg = make_tiny_config().with_overrides(["moe.router.bias_update_rate=0.01"])
    model = build_model(cfg)
    with torch.no_grad():
        model.layers[0].moe.router.score_bias_E.copy_(torch.arange(7.0))
    layers = moe_layers(cfg)
    sub, _ = slice_model(model, cfg, layers, [[1, 6], [0]])
    assert sub.layers[0].moe.router.score_bias_E.tolist() == [1.0, 6.0]
