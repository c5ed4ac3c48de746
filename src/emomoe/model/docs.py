"""Document boundaries inside packed rows: doc ids from EOS, and flat segment ids for the router.

Two conventions place the EOS between documents A and B, both OLMo-core's. The data pipeline's doc
ids, and the attention mask built from them, close A with its EOS (OLMo-core's document lengths
do). The EMO router cuts a row at EOS positions instead, so that EOS opens B's segment and is
routed in B's pool, and an EOS at position 0 joins the document after it (the official router
drops position 0 from its cut points): `Segments.for_pool`.

Legend: B batch rows, S sequence length, T = B*S flattened tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def doc_ids_from_eos(input_ids_BS: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Doc id of each position = number of EOS tokens strictly before it in its row.

    So the EOS that ends a document belongs to that document, and the next document starts
    right after it.
    """
    is_eos_BS = (input_ids_BS == eos_id).long()
    return is_eos_BS.cumsum(dim=1) - is_eos_BS


@dataclass(frozen=True)
class Segments:
    """Documents as flat segments: each maximal run of equal doc ids within a row is one segment.

    `seg_T` numbers segments 0, 1, ... in row-major token order; `num_segments` is a size that
    every id fits in. Segments never cross rows, so a document cut by packing gets one segment
    per row fragment.
    """

    seg_T: torch.Tensor
    num_segments: int

    @classmethod
    def from_doc_ids(cls, doc_ids_BS: torch.Tensor) -> Segments:
        starts_BS = torch.ones_like(doc_ids_BS, dtype=torch.bool)
        starts_BS[:, 1:] = doc_ids_BS[:, 1:] != doc_ids_BS[:, :-1]
        return cls.from_starts(starts_BS)

    @classmethod
    def for_pool(cls, doc_ids_BS: torch.Tensor, input_ids_BS: torch.Tensor, eos_id: int | None) -> Segments:
        """The EMO pool's documents: every EOS after position 0 starts a segment, and so does every
        document start of `doc_ids_BS` that does not follow an EOS (ids that come from elsewhere
        than EOS tokens, e.g. one document per row). With no EOS id, the documents of `doc_ids_BS`."""
        if eos_id is None:
            return cls.from_doc_ids(doc_ids_BS)
        is_eos_BS = input_ids_BS == eos_id
        starts_BS = torch.ones_like(doc_ids_BS, dtype=torch.bool)
        starts_BS[:, 1:] = is_eos_BS[:, 1:] | ((doc_ids_BS[:, 1:] != doc_ids_BS[:, :-1]) & ~is_eos_BS[:, :-1])
        return cls.from_starts(starts_BS)

    @classmethod
    def from_starts(cls, starts_BS: torch.Tensor) -> Segments:
        """Segments from a boolean [B, S] that is True where a segment starts (always at position 0)."""
        seg_T = starts_BS.flatten().cumsum(0) - 1
        # On an accelerator, reading the count back would stall the device, so the token count
        # (a sync-free upper bound) sizes the per-segment tensors. On the CPU there is no device to
        # wait for, and the exact count keeps the per-segment sort small.
        num_segments = int(seg_T[-1]) + 1 if seg_T.device.type == "cpu" else seg_T.numel()
        return cls(seg_T=seg_T, num_segments=num_segments)

    def same_doc_BSS(self, batch_size: int) -> torch.Tensor:
        """Boolean [B, S, S]: query position i and key position j lie in the same segment."""
        seg_BS = self.seg_T.view(batch_size, -1)
        return seg_BS[:, :, None] == seg_BS[:, None, :]
