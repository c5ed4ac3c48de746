"""Keys and values of past tokens for incremental decoding, and the mask and positions of new tokens.

Rows are left-padded: all rows append their new tokens at the same cache index, `valid_BP` marks
the cached positions that hold real tokens, and a token's RoPE position counts only the real
tokens before it in its row. So a padded row is computed as it would be alone. With document
masking, a token attends only within its document (doc ids from EOS, as in the full forward).

Legend: B batch rows, S sequence (the new tokens of a row), P cache positions (all of them in the
buffers; those filled so far, the new tokens included, in a mask), R key/value heads, Dh head dim.
"""

from __future__ import annotations

import torch


class LayerKV:
    """One attention layer's keys and values, filled left to right."""

    def __init__(self, batch_size: int, num_kv_heads: int, capacity: int, head_dim: int, dtype, device):
        shape = (batch_size, num_kv_heads, capacity, head_dim)
        self.keys_BRPDh = torch.zeros(shape, dtype=dtype, device=device)
        self.values_BRPDh = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0

    def append(self, k_BRSDh: torch.Tensor, v_BRSDh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys and values; return those of all P filled positions."""
        end = self.length + k_BRSDh.shape[2]
        self.keys_BRPDh[:, :, self.length : end] = k_BRSDh
        self.values_BRPDh[:, :, self.length : end] = v_BRSDh
        self.length = end
        return self.keys_BRPDh[:, :, :end], self.values_BRPDh[:, :, :end]


class KVCache:
    """The cache of every layer, plus which positions are real tokens and their document ids."""

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        capacity: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        eos_id: int | None = None,
        doc_mask: bool = False,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ):
        self.layers = [LayerKV(batch_size, num_kv_heads, capacity, head_dim, dtype, device) for _ in range(num_layers)]
        self.capacity = capacity
        self.length = 0
        self.valid_BP = torch.zeros(batch_size, capacity, dtype=torch.bool, device=device)
        self.doc_BP = torch.zeros(batch_size, capacity, dtype=torch.long, device=device)
        self.eos_id = eos_id
        self.doc_mask = doc_mask and eos_id is not None
        self._num_tokens_B = torch.zeros(batch_size, dtype=torch.long, device=device)
        self._num_eos_B = torch.zeros(batch_size, dtype=torch.long, device=device)

    def extend(
        self, input_ids_BS: torch.Tensor, valid_BS: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Claim the next S positions for new tokens (`valid_BS` False marks left padding).

        Returns their RoPE positions [B, S] and the attention mask [B, 1, S, P] (True = may attend).
        """
        B, S = input_ids_BS.shape
        start, end = self.length, self.length + S
        if end > self.capacity:
            raise ValueError(f"KV cache is full: {start} + {S} new tokens exceed its capacity {self.capacity}")
        if valid_BS is None:
            valid_BS = torch.ones_like(input_ids_BS, dtype=torch.bool)
        counts_BS = valid_BS.long().cumsum(1)
        positions_BS = (self._num_tokens_B[:, None] + counts_BS - 1).clamp(min=0)
        self._num_tokens_B += counts_BS[:, -1]
        self.valid_BP[:, start:end] = valid_BS
        self.length = end

        query_S = torch.arange(start, end, device=input_ids_BS.device)
        key_P = torch.arange(end, device=input_ids_BS.device)
        allowed_BSP = self.valid_BP[:, None, :end] & (key_P[None, :] <= query_S[:, None])
        if self.doc_mask:
            # Doc id = EOS tokens strictly before, so the EOS that ends a document stays in it.
            is_eos_BS = (input_ids_BS == self.eos_id) & valid_BS
            eos_counts_BS = is_eos_BS.long().cumsum(1)
            doc_BS = self._num_eos_B[:, None] + eos_counts_BS - is_eos_BS.long()
            self._num_eos_B += eos_counts_BS[:, -1]
            self.doc_BP[:, start:end] = doc_BS
            allowed_BSP &= doc_BS[:, :, None] == self.doc_BP[:, None, :end]
        # A padding query attends to itself only: a row with no key at all would turn into NaNs,
        # and NaN values poison every query that gives them weight zero.
        allowed_BSP |= ~valid_BS[:, :, None] & (key_P[None, :] == query_S[:, None])
        return positions_BS, allowed_BSP[:, None]
