"""How many routed experts to keep per MoE layer: a count, a fraction, or one count per layer.

Shared experts are never counted here: they are always kept, on top of the routed ones.
A spelling with a decimal point ("0.25", "1.0") is a fraction of each layer's routed experts;
a bare integer ("8") is a count; a comma-separated list of integers ("8,8,4,4") gives one
count per MoE layer.
"""

from __future__ import annotations

import dataclasses
import math

from emomoe.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class KeepSpec:
    """Exactly one of `fraction`, `count`, `per_layer` is set."""

    fraction: float | None = None
    count: int | None = None
    per_layer: tuple[int, ...] | None = None

    @classmethod
    def parse(cls, text: str | int | float) -> KeepSpec:
        if isinstance(text, float):
            return cls.of_fraction(text)
        if isinstance(text, int):
            return cls(count=text)
        text = str(text).strip()
        items = [t.strip() for t in text.split(",")]
        try:
            if len(items) > 1:
                return cls(per_layer=tuple(int(t) for t in items))
            if "." in text or "e" in text.lower():
                return cls.of_fraction(float(text))
            return cls(count=int(text))
        except ConfigError:
            raise  # a ValueError too, but one that says what is wrong
        except ValueError:
            raise ConfigError(
                f"keep '{text}': expected a count (8), a fraction (0.25) or per-layer counts (8,8,4,4)"
            ) from None

    @classmethod
    def of_fraction(cls, fraction: float) -> KeepSpec:
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"keep fraction {fraction}: expected a value in (0, 1]")
        return cls(fraction=fraction)

    def resolve(self, num_routed_per_layer: list[int]) -> list[int]:
        """Routed experts to keep in each MoE layer, checked against what the layers hold."""
        num_layers = len(num_routed_per_layer)
        if self.per_layer is not None:
            if len(self.per_layer) != num_layers:
                raise ConfigError(
                    f"keep: {len(self.per_layer)} per-layer counts given, the model has {num_layers} MoE layers"
                )
            counts = list(self.per_layer)
        elif self.count is not None:
            counts = [self.count] * num_layers
        else:
            # Round half up, and never below one expert: a fraction always keeps something.
            counts = [max(1, math.floor(self.fraction * n + 0.5)) for n in num_routed_per_layer]
        for layer, (keep, have) in enumerate(zip(counts, num_routed_per_layer)):
            if keep < 1:
                raise ConfigError(f"keep: layer {layer} would keep {keep} routed experts; keep at least 1")
            if keep > have:
                raise ConfigError(f"keep: layer {layer} has only {have} routed experts, cannot keep {keep}")
        return counts

    def __str__(self) -> str:
        """The spelling `parse` reads back (a fraction keeps its decimal point: 1.0, not 1)."""
        if self.fraction is not None:
            return str(self.fraction)
        return self.label()

    def label(self) -> str:
        if self.fraction is not None:
            return f"{self.fraction:g}"
        if self.count is not None:
            return str(self.count)
        return ",".join(str(n) for n in self.per_layer)
