"""llama.cpp's `deepseek` graph (src/models/deepseek.cpp), and its `olmoe` and MoE `llama` graphs
where they differ (QK-norm and NEOX rope; renormalised top-k; no shared expert), written out in
float64 numpy, reading a GGUF file: an independent reference for what llama.cpp computes from our
files, usable where llama.cpp itself is not installed. It shares no code with emomoe.

Legend: S sequence, D model dim, H heads, Dh head dim, A rotary frequencies, E experts,
K experts per token, F ffn hidden, V vocab.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

NEOX_ROPE = {"olmoe"}
RENORMALISED = {"llama"}


class GGUFModel:
    def __init__(self, path: Path):
        reader = GGUFReader(path)
        self.arch = reader.fields["general.architecture"].contents()
        assert self.arch in {"deepseek", "olmoe", "llama"}
        self.hp = {name.removeprefix(f"{self.arch}."): f.contents() for name, f in reader.fields.items()
                   if name.startswith(f"{self.arch}.")}
        self.w = {t.name: dequantize(t.data, t.tensor_type).astype(np.float64).reshape(tuple(reversed(t.shape)))
                  for t in reader.tensors}

    def logits(self, ids: list[int]) -> np.ndarray:
        """[S, V] logits of the token ids, one sequence from position 0."""
        w, hp = self.w, self.hp
        eps = hp["attention.layer_norm_rms_epsilon"]
        x_SD = w["token_embd.weight"][ids]
        for i in range(hp["block_count"]):
            b = f"blk.{i}."
            x_SD = x_SD + self._attention(_rms(x_SD, w[b + "attn_norm.weight"], eps), b)
            x_SD = x_SD + self._moe(_rms(x_SD, w[b + "ffn_norm.weight"], eps), b)
        return _rms(x_SD, w["output_norm.weight"], eps) @ w["output.weight"].T

    def _attention(self, h_SD: np.ndarray, b: str) -> np.ndarray:
        w, hp = self.w, self.hp
        S = h_SD.shape[0]
        H, R = hp["attention.head_count"], hp["attention.head_count_kv"]
        q_SD, k_SD = h_SD @ w[b + "attn_q.weight"].T, h_SD @ w[b + "attn_k.weight"].T
        if b + "attn_q_norm.weight" in w:  # olmoe: RMSNorm over all heads, before RoPE
            eps = hp["attention.layer_norm_rms_epsilon"]
            q_SD, k_SD = _rms(q_SD, w[b + "attn_q_norm.weight"], eps), _rms(k_SD, w[b + "attn_k_norm.weight"], eps)
        rope = _rope_half_pairs if self.arch in NEOX_ROPE else _rope_adjacent_pairs
        q_SHDh = rope(q_SD.reshape(S, H, -1), hp["rope.freq_base"])
        k_SHDh = rope(k_SD.reshape(S, R, -1), hp["rope.freq_base"])
        v_SHDh = (h_SD @ w[b + "attn_v.weight"].T).reshape(S, R, -1)
        k_SHDh, v_SHDh = np.repeat(k_SHDh, H // R, axis=1), np.repeat(v_SHDh, H // R, axis=1)
        scores = np.einsum("shd,thd->hst", q_SHDh, k_SHDh) / np.sqrt(q_SHDh.shape[-1])
        scores = np.where(np.tril(np.ones((S, S), dtype=bool)), scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        out_SHDh = np.einsum("hst,thd->shd", probs, v_SHDh)
        return out_SHDh.reshape(S, -1) @ w[b + "attn_output.weight"].T

    def _moe(self, h_SD: np.ndarray, b: str) -> np.ndarray:
        w, k = self.w, self.hp["expert_used_count"]
        logits_SE = h_SD @ w[b + "ffn_gate_inp.weight"].T
        probs_SE = np.exp(logits_SE - logits_SE.max(-1, keepdims=True))
        probs_SE /= probs_SE.sum(-1, keepdims=True)
        top_SK = np.argsort(-probs_SE, axis=-1, kind="stable")[:, :k]
        weights_SK = np.take_along_axis(probs_SE, top_SK, axis=-1)
        if self.arch in RENORMALISED:
            weights_SK /= weights_SK.sum(-1, keepdims=True)
        out_SD = np.zeros_like(h_SD)
        if b + "ffn_gate_shexp.weight" in w:
            out_SD += _swiglu(h_SD, w[b + "ffn_gate_shexp.weight"], w[b + "ffn_up_shexp.weight"],
                              w[b + "ffn_down_shexp.weight"])
        for s in range(h_SD.shape[0]):
            for e, weight in zip(top_SK[s], weights_SK[s]):
                gate_FD, up_FD = w[b + "ffn_gate_exps.weight"][e], w[b + "ffn_up_exps.weight"][e]
                out_SD[s] += weight * _swiglu(h_SD[s : s + 1], gate_FD, up_FD, w[b + "ffn_down_exps.weight"][e])[0]
        return out_SD


def _rms(x_SD: np.ndarray, weight_D: np.ndarray, eps: float) -> np.ndarray:
    return x_SD / np.sqrt((x_SD**2).mean(-1, keepdims=True) + eps) * weight_D


def _swiglu(h_SD: np.ndarray, gate_FD: np.ndarray, up_FD: np.ndarray, down_DF: np.ndarray) -> np.ndarray:
    g_SF = h_SD @ gate_FD.T
    return (g_SF / (1 + np.exp(-g_SF)) * (h_SD @ up_FD.T)) @ down_DF.T


def _rope_adjacent_pairs(x_SHDh: np.ndarray, base: float) -> np.ndarray:
    """ggml's NORM rope: the pair (2j, 2j + 1) turns by position * base^(-2j / Dh)."""
    S, _, Dh = x_SHDh.shape
    angles_SA = np.arange(S)[:, None] * base ** (-np.arange(0, Dh, 2) / Dh)[None, :]
    cos_S1A, sin_S1A = np.cos(angles_SA)[:, None], np.sin(angles_SA)[:, None]
    even, odd = x_SHDh[..., 0::2], x_SHDh[..., 1::2]
    out = np.empty_like(x_SHDh)
    out[..., 0::2] = even * cos_S1A - odd * sin_S1A
    out[..., 1::2] = even * sin_S1A + odd * cos_S1A
    return out


def _rope_half_pairs(x_SHDh: np.ndarray, base: float) -> np.ndarray:
    """ggml's NEOX rope: the pair (j, j + Dh/2) turns by position * base^(-2j / Dh)."""
    S, _, Dh = x_SHDh.shape
    angles_SA = np.arange(S)[:, None] * base ** (-np.arange(0, Dh, 2) / Dh)[None, :]
    cos_S1A, sin_S1A = np.cos(angles_SA)[:, None], np.sin(angles_SA)[:, None]
    first, second = x_SHDh[..., : Dh // 2], x_SHDh[..., Dh // 2 :]
    return np.concatenate([first * cos_S1A - second * sin_S1A, first * sin_S1A + second * cos_S1A], axis=-1)
