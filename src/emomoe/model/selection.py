"""Selections of a loaded model's experts used as routing masks, switched per request, and chosen
from a prompt.

A selection restricts every MoE layer to its kept routed experts (`EmoTransformer.restrict_experts`):
the logits are those of the subset sliced to them, and no weight is copied, so any number of
selections of one model can take turns. Its calibration profile is the full model's router mass
on the tokens it was selected on: per MoE layer, the token-mean routing probability of every routed
expert.

Choosing for a prompt (`Selections.choose`) compares the full model's router mass m on the prompt's
first tokens with every profile q: the selection under whose profile the prompt's routing is most
likely wins, i.e. the largest sum over MoE layers of sum_e m_e log q_e (the negative cross-entropy
of m against q; `profile_scores`).

Legend: B batch, S sequence, E routed experts of a layer, Q selections.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

import torch

PROFILE_FLOOR = 1e-12
"""Smallest profile probability a log is taken of: a float32 softmax underflows to 0 for experts
a domain never routes to, and one such expert must not rule a selection out."""


@dataclasses.dataclass
class Selection:
    name: str
    kept: list[list[int]]
    """Routed expert ids kept, ascending, one list per MoE layer."""
    profile: list[torch.Tensor] | None = None
    """Router mass [E] of the full model on the calibration tokens, per MoE layer; None if unknown."""


@torch.inference_mode()
def prompt_mass(model: torch.nn.Module, prompts: Sequence[Sequence[int]], num_tokens: int) -> list[torch.Tensor]:
    """Per MoE layer, the token-mean router probability [B, E] over each prompt's first `num_tokens`
    tokens (all of a shorter one), from one forward of the model as it routes now (unrestricted,
    for comparing with profiles). Rows are padded at the end: causal attention keeps padding out."""
    rows = [list(p)[:num_tokens] for p in prompts]
    if not rows or any(not r for r in rows):
        raise ValueError("prompt_mass: every prompt needs at least one token")
    lengths_B = torch.tensor([len(r) for r in rows])
    device = model.embed.weight.device
    ids_BS = torch.zeros(len(rows), int(lengths_B.max()), dtype=torch.long)
    for b, row in enumerate(rows):
        ids_BS[b, : len(row)] = torch.tensor(row)
    valid_BS1 = (torch.arange(ids_BS.shape[1])[None, :] < lengths_B[:, None])[..., None].to(device)
    out = model(ids_BS.to(device), return_routing=True)
    masses = []
    for routing in out.routing:
        num_experts = routing.router_logits_TE.shape[1]
        if num_experts == 0:  # a dense layer routes nothing
            continue
        probs_BSE = routing.router_logits_TE.float().softmax(dim=-1).view(*ids_BS.shape, num_experts)
        masses.append((probs_BSE * valid_BS1).sum(dim=1).cpu() / lengths_B[:, None])
    return masses


def profile_scores(masses: Sequence[torch.Tensor], profiles: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """[B, Q]: sum over MoE layers of sum_e m_be log q_qe, for the prompts' masses (one [B, E] per
    layer, `prompt_mass`) against each profile (one [E] per layer); higher is closer."""
    scores_BQ = torch.zeros(masses[0].shape[0], len(profiles), dtype=torch.float64)
    for layer, mass_BE in enumerate(masses):
        log_QE = torch.stack([p[layer] for p in profiles]).double().clamp(min=PROFILE_FLOOR).log()
        scores_BQ += mass_BE.double() @ log_QE.T
    return scores_BQ


class Selections:
    """Named selections of one loaded model's experts, applied as routing masks and switched per
    request without touching the weights:

        selections = Selections(model, [Selection("code", kept_code, profile_code), ...], auto=True)
        with selections.using("code"):
            logits_BSV = model(ids_BS).logits        # the code subset's logits
        names = selections.choose(prompts)           # per prompt: the closest calibration profile

    Without `auto` there is exactly one selection, in force from the start, and every row belongs
    to it (`groups`). With `auto`, every selection needs a profile and `groups` asks `choose`,
    which reads the first `auto_tokens` tokens of each prompt.
    """

    def __init__(self, model: torch.nn.Module, selections: Sequence[Selection], *, auto: bool, auto_tokens: int):
        names = [s.name for s in selections]
        if len(set(names)) != len(names):
            raise ValueError(f"selections need distinct names, got {names}")
        if not auto and len(selections) != 1:
            raise ValueError(f"without auto, exactly one selection is in force; got {len(selections)}")
        if auto and any(s.profile is None for s in selections):
            raise ValueError("choosing a selection needs every selection's calibration profile")
        self.model = model
        self.by_name = {s.name: s for s in selections}
        self.auto = auto
        self.auto_tokens = auto_tokens
        self.active: str | None = None
        self.use(None if auto else names[0])

    @property
    def names(self) -> list[str]:
        return list(self.by_name)

    def use(self, name: str | None) -> None:
        """Restrict the model's routing to the selection `name` (None: every expert)."""
        self.model.restrict_experts(None if name is None else self.by_name[name].kept)
        self.active = name

    @contextlib.contextmanager
    def using(self, name: str | None) -> Iterator[None]:
        """`use(name)` for the duration of the block, then the selection in force before."""
        before = self.active
        self.use(name)
        try:
            yield
        finally:
            self.use(before)

    def choose(self, prompts: Sequence[Sequence[int]]) -> list[str]:
        """The selection whose profile is closest to each prompt's router mass (module docstring)."""
        selections = list(self.by_name.values())
        with self.using(None):
            masses = prompt_mass(self.model, prompts, self.auto_tokens)
        best_B = profile_scores(masses, [s.profile for s in selections]).argmax(dim=1)
        return [selections[q].name for q in best_B.tolist()]

    def groups(self, prompts: Sequence[Sequence[int]]) -> dict[str, list[int]]:
        """Selection name -> indices of the prompts that run with it, in order."""
        if not self.auto:
            return {self.names[0]: list(range(len(prompts)))}
        groups: dict[str, list[int]] = {}
        for row, name in enumerate(self.choose(prompts)):
            groups.setdefault(name, []).append(row)
        return groups
