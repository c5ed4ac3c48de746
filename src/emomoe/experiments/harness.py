"""lm-evaluation-harness adapter: any emomoe checkpoint or subset as the lm-eval model `emomoe`.

Importing this module registers the model, so that after `import emomoe.experiments.harness`:

    lm_eval.simple_evaluate(model="emomoe", model_args="checkpoint=runs/emo/final", tasks=[...])

works, as does `emomoe lm-eval` on the command line (lm-eval's own `lm_eval` command has no
plugin mechanism to find models outside its package). Routing uses no document pool.

- `loglikelihood`: one full forward per (context + continuation), batched with right padding
  (causal attention: padding after a sequence changes nothing before it); contexts longer than the
  model's max_seq_len keep their last tokens.
- `loglikelihood_rolling`: lm-eval's disjoint rolling windows, each scored like a loglikelihood.
- `generate_until`: `emomoe.generate` with the KV cache, stopping at EOS, `max_gen_toks` or the
  first `until` string (which is cut off).

With `selection` (a selection.json of the checkpoint, or `Selections` of a loaded model), routing
is restricted to a selection's experts; with several (auto), each request runs with the one the
first tokens of its context choose.

Legend: B batch rows, S sequence, V vocab.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from emomoe.checkpoint import load_for_inference
from emomoe.checkpoint.selection import AUTO_TOKENS, SelectionConfig, load_selections
from emomoe.data.tokenizer import TextTokenizer, load_tokenizer
from emomoe.data.windows import BATCH_SIZE
from emomoe.errors import ConfigError
from emomoe.generate import GenerationConfig, generate_text
from emomoe.model.selection import Selections
from emomoe.train.provenance import checkpoint_tokenizer

MODEL_NAME = "emomoe"
DEFAULT_MAX_GEN_TOKS = 256

Request = tuple[tuple[str, str], list[int], list[int]]


@register_model(MODEL_NAME)
class EmoLM(TemplateLM):
    """An emomoe model for lm-eval. Give `checkpoint` (and optionally `tokenizer`), or a loaded
    `model` with its `tokenizer` (a `TextTokenizer` or a path). `selection`: a selection file of the
    checkpoint, a `--selection` list (`auto` first to choose per request), or `Selections` of the
    loaded model."""

    def __init__(
        self,
        checkpoint: str | None = None,
        tokenizer: str | TextTokenizer | None = None,
        model: torch.nn.Module | None = None,
        batch_size: int | str = BATCH_SIZE,
        max_gen_toks: int | str = DEFAULT_MAX_GEN_TOKS,
        device: str | None = None,
        max_batch_size: int | None = None,  # noqa: ARG002  (lm-eval passes it; batches here are fixed)
        selection: str | Sequence[str] | Selections | None = None,
        auto_tokens: int | str = AUTO_TOKENS,
        any_tokenizer: bool = False,
    ):
        super().__init__()
        if (checkpoint is None) == (model is None):
            raise ConfigError("emomoe lm-eval model: give exactly one of checkpoint=DIR or a loaded model")
        if model is None:
            model, cfg = load_for_inference(checkpoint, dtype="auto")
            if not isinstance(tokenizer, TextTokenizer):
                tokenizer = checkpoint_tokenizer(checkpoint, cfg, tokenizer, any_tokenizer=any_tokenizer)
        elif not isinstance(tokenizer, TextTokenizer):
            if tokenizer is None:
                raise ConfigError("emomoe lm-eval model: a loaded model needs its tokenizer")
            tokenizer = load_tokenizer(tokenizer)
        self.model = (model.to(device) if device else model).eval()
        self.selections = self._selections(selection, checkpoint, int(auto_tokens))
        self.tok = tokenizer
        self.batch_size = BATCH_SIZE if str(batch_size).startswith("auto") else int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        if self.batch_size < 1 or self.max_gen_toks < 1:
            raise ConfigError(f"batch_size {batch_size}, max_gen_toks {max_gen_toks}: expected positive integers")
        self._device = self.model.embed.weight.device

    def _selections(
        self, selection: str | Sequence[str] | Selections | None, checkpoint: str | None, auto_tokens: int
    ) -> Selections | None:
        if selection is None or isinstance(selection, Selections):
            return selection
        if checkpoint is None:
            raise ConfigError(
                "emomoe lm-eval model: selection files need checkpoint=DIR (a loaded model takes Selections)"
            )
        spec = [selection] if isinstance(selection, str) else list(selection)
        cfg = SelectionConfig.from_dict({"selection": spec, "auto_tokens": auto_tokens})
        return load_selections(checkpoint, self.model, cfg)

    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def max_length(self) -> int:
        return self.model.cfg.max_seq_len

    @property
    def tokenizer_name(self) -> str:
        return self.tok.hash

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.tok.encode(string)

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tok.decode(tokens)

    @torch.inference_mode()
    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        # Longest first, so each batch pads little and the first batch shows the peak memory.
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="loglikelihood")
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            rows = []
            for i in batch:
                _, context, continuation = requests[i]
                whole = (context + continuation)[-(self.max_length + 1) :]
                rows.append((whole[:-1], whole[-len(continuation) :]))
            for i, answer in zip(batch, self._score(rows)):
                results[i] = answer
                self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
            bar.update(len(batch))
        bar.close()
        return results

    def _score(self, rows: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum of log p(target | preceding), whether every target token is the argmax) per row;
        each row's targets are the last tokens after its inputs. With several selections, the rows
        of each selection run as a batch of their own."""
        if self.selections is None or not self.selections.auto:
            return self._score_batch(rows)
        answers: list[tuple[float, bool] | None] = [None] * len(rows)
        for name, group in self.selections.groups([inputs for inputs, _ in rows]).items():
            with self.selections.using(name):
                for i, answer in zip(group, self._score_batch([rows[i] for i in group])):
                    answers[i] = answer
        return answers

    def _score_batch(self, rows: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """`_score`, with the model as it routes now."""
        longest = max(len(inputs) for inputs, _ in rows)
        ids_BS = torch.full((len(rows), longest), self.eot_token_id, dtype=torch.long, device=self._device)
        for b, (inputs, _) in enumerate(rows):
            ids_BS[b, : len(inputs)] = torch.tensor(inputs)
        logits_BSV = self.model(ids_BS).logits
        answers = []
        for b, (inputs, targets) in enumerate(rows):
            n = len(targets)
            logprobs_SV = logits_BSV[b, len(inputs) - n : len(inputs)].float().log_softmax(dim=-1)
            targets_S = torch.tensor(targets, device=self._device)
            total = logprobs_SV.gather(1, targets_S[:, None]).sum()
            answers.append((float(total), bool((logprobs_SV.argmax(dim=-1) == targets_S).all())))
        return answers

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        results = []
        for request in tqdm(requests, disable=disable_tqdm, desc="loglikelihood_rolling"):
            (text,) = request.args
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1,
                )
            ]
            scored = self._loglikelihood_tokens([((text, ""), ctx, cont) for ctx, cont in windows], disable_tqdm=True)
            total = sum(logprob for logprob, _ in scored)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            results.append(total)
        return results

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        # Requests with the same settings share batches.
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(i)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="generate_until")
        for indices in groups.values():
            cfg, until = self._generation_settings(requests[indices[0]].args[1])
            keep = self.max_length - cfg.max_new_tokens
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                prompts = [(self.tok_encode(requests[i].args[0]) or [self.eot_token_id])[-keep:] for i in batch]
                completions = generate_text(
                    self.model, self.tok, prompts, cfg, stop_strings=until, selections=self.selections
                )
                for i, done in zip(batch, completions):
                    results[i] = done.text
                    self.cache_hook.add_partial("generate_until", requests[i].args, done.text)
                bar.update(len(batch))
        bar.close()
        return results

    def _generation_settings(self, gen_kwargs: dict[str, Any]) -> tuple[GenerationConfig, list[str]]:
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = min(int(gen_kwargs.get("max_gen_toks", self.max_gen_toks)), self.max_length - 1)
        sample = bool(gen_kwargs.get("do_sample", False)) and float(gen_kwargs.get("temperature", 1.0)) > 0
        cfg = GenerationConfig(
            max_new_tokens=max_new, greedy=not sample, temperature=float(gen_kwargs.get("temperature", 1.0)),
            top_p=float(gen_kwargs.get("top_p", 1.0)), seed=int(gen_kwargs.get("seed", 0)),
        )
        return cfg, until

