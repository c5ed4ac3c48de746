import pytest
import torch
from lm_eval.api.instance import Instance

from emomoe import ModelConfig, build_model
from emomoe.data.store import TokenStore
from emomoe.data.tokenizer import load_tokenizer, train_tokenizer
from emomoe.experiments.harness import EmoLM
from emomoe.generate import GenerationConfig, generate, generate_text

TEXTS = ["the router sends every token to a few experts", "专家 模型 路由", "def f(x):\n    return x + 1"]


@pytest.fixture(scope="module")
def lm():
    tok = train_tokenizer(TEXTS * 4, vocab_size=300)
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny").with_overrides(
        [f"vocab_size={tok.vocab_size}", f"eos_id={tok.eos_id}", "max_seq_len=48"]
    )
    return EmoLM(model=build_model(cfg), tokenizer=tok, batch_size=3)


def _instance(kind, args, idx=0):
    return Instance(request_type=kind, doc={}, arguments=args, idx=idx)


def _logprobs(lm, tokens):
    """log p(tokens[i] | tokens[:i]) for i >= 1, from one unpadded forward of all but the last token."""
    with torch.no_grad():
        logprobs_SV = lm.model(torch.tensor([tokens[:-1]])).logits[0].log_softmax(-1)
    return [float(logprobs_SV[i - 1, t]) for i, t in enumerate(tokens) if i > 0]


def test_loglikelihood_is_the_sum_of_the_continuations_token_log_probs(lm):
    pairs = [("the router", " sends every token"), ("专家", " 模型 路由"), ("def f(x):", "\n    return x"),
             ("a", " few experts"), (" ".join(TEXTS[:1] * 3), " experts")]
    assert len(lm.tok.encode("".join(pairs[-1]))) > lm.max_length + 1  # the last one is cut on the left
    answers = lm.loglikelihood([_instance("loglikelihood", p, i) for i, p in enumerate(pairs)])
    for (context, continuation), (logprob, _) in zip(pairs, answers):
        context_ids = lm.tok.encode(context)
        whole = lm.tok.encode(context + continuation)
        num_cont = len(whole) - len(context_ids)
        whole = whole[-(lm.max_length + 1) :]  # the long context keeps its last max_seq_len tokens
        expected = sum(_logprobs(lm, whole)[-num_cont:])
        assert logprob == pytest.approx(expected, abs=1e-4)


def test_is_greedy_holds_exactly_for_the_models_own_greedy_continuation(lm):
    context = lm.tok.encode("the router")
    [greedy] = generate(lm.model, [context], GenerationConfig(max_new_tokens=4, greedy=True))
    changed = [*greedy.tokens[:-1], (greedy.tokens[-1] + 1) % lm.tok.vocab_size]
    requests = [(("", ""), context, greedy.tokens), (("", ""), context, changed)]
    (_, is_greedy), (_, other) = lm._loglikelihood_tokens(requests)
    assert is_greedy and not other


def test_loglikelihood_rolling_scores_every_token_after_eos(lm):
    text = "专家 模型 路由 every token"
    [total] = lm.loglikelihood_rolling([_instance("loglikelihood_rolling", (text,))])
    assert total == pytest.approx(sum(_logprobs(lm, [lm.tok.eos_id, *lm.tok.encode(text)])), abs=1e-4)


def test_generate_until_stops_before_the_first_until_string(lm):
    settings = GenerationConfig(max_new_tokens=20, greedy=True)
    contexts = ["def f(x):", "the router"]
    free = [c.text for c in generate_text(lm.model, lm.tok, contexts, settings)]
    stops = [free[0][5:7], free[1][3:5]]  # strings the free-running text does contain
    requests = [
        _instance("generate_until", (c, {"until": [s, "never"], "max_gen_toks": 20}), i)
        for i, (c, s) in enumerate(zip(contexts, stops))
    ]
    outputs = lm.generate_until(requests)
    for text, out, stop in zip(free, outputs, stops):
        assert out == text[: text.index(stop)]
    [short] = lm.generate_until([_instance("generate_until", (contexts[0], {"until": [], "max_gen_toks": 2}))])
    assert short == lm.tok.decode(lm.tok.encode(free[0])[:2]) or free[0].startswith(short)


def _domain_texts(store_dir, tok):
    """The first 40 tokens of one held-out document per domain, as text."""
    store = TokenStore.open(store_dir)
    return {d: tok.decode(next(iter(store.documents("val", [d])))[1][:40].tolist()) for d in store.domains}


def test_a_selection_scores_and_generates_as_the_sliced_subset(store_dir, checkpoint_dir, domain_subsets):
    tok = load_tokenizer(TokenStore.open(store_dir).tokenizer_path)
    texts = _domain_texts(store_dir, tok)
    requests = [_instance("loglikelihood", (text[:-12], text[-12:]), i) for i, text in enumerate(texts.values())]
    until = [_instance("generate_until", (text[:30], {"until": ["never"], "max_gen_toks": 6}), i)
             for i, text in enumerate(texts.values())]
    subset = domain_subsets["legal"]
    sliced = EmoLM(checkpoint=str(subset), tokenizer=tok, batch_size=2)
    masked = EmoLM(checkpoint=str(checkpoint_dir), tokenizer=tok, batch_size=2, selection=str(subset))
    full = EmoLM(checkpoint=str(checkpoint_dir), tokenizer=tok, batch_size=2)
    expected = [logprob for logprob, _ in sliced.loglikelihood(requests)]
    assert [logprob for logprob, _ in masked.loglikelihood(requests)] == pytest.approx(expected, abs=1e-5)
    assert [logprob for logprob, _ in full.loglikelihood(requests)] != pytest.approx(expected, abs=1e-5)
    assert masked.generate_until(until) == sliced.generate_until(until)


def test_auto_scores_each_request_with_the_subset_its_context_chooses(store_dir, checkpoint_dir, domain_subsets):
    tok = load_tokenizer(TokenStore.open(store_dir).tokenizer_path)
    texts = _domain_texts(store_dir, tok)
    requests = [_instance("loglikelihood", (text[:-12], text[-12:]), i) for i, text in enumerate(texts.values())]
    spec = ["auto", *(str(p) for p in domain_subsets.values())]
    auto = EmoLM(checkpoint=str(checkpoint_dir), tokenizer=tok, batch_size=3, selection=spec, auto_tokens=8)
    answers = [logprob for logprob, _ in auto.loglikelihood(requests)]
    chosen = auto.selections.choose([tok.encode(text[:-12]) for text in texts.values()])
    assert len(set(chosen)) > 1  # requests of different domains, routed with different subsets
    for answer, request, name in zip(answers, requests, chosen):
        [(expected, _)] = EmoLM(checkpoint=str(domain_subsets[name]), tokenizer=tok).loglikelihood([request])
        assert answer == pytest.approx(expected, abs=1e-5)
