import pytest
import torch

from emomoe.errors import ConfigError
from emomoe.select.budget import Budget, BudgetUnit, budget_of, fit_counts

SHARES = [torch.tensor([0.2, 0.5, 0.3]), torch.tensor([0.1, 0.6, 0.05, 0.25])]


def size(counts):
    """100 outside the routed experts, 20 per expert of layer 0, 10 per expert of layer 1."""
    return 100 + 20 * counts[0] + 10 * counts[1]


def budget(limit):
    return Budget(limit, BudgetUnit.BYTES, f"budget {limit}")


@pytest.mark.parametrize(
    "limit, expected",
    [
        # From [1, 1] (130): 0.3 of layer 0 (150), 0.25 of layer 1 (160), 0.2 of layer 0 (180), 0.1 of layer 1 ...
        (130, [1, 1]),
        (159, [2, 1]),
        (160, [2, 2]),
        # 0.2 of layer 0 does not fit in 172; 0.1 of layer 1 would (170), but the walk stops at the first that does not.
        (172, [2, 2]),
        (180, [3, 2]),
        (10_000, [3, 4]),
    ],
)
def test_experts_enter_in_the_order_of_their_share_until_the_next_does_not_fit(limit, expected):
    assert fit_counts(SHARES, [1, 1], size, budget(limit)) == expected


def test_every_layer_keeps_its_floor_first():
    # Layer 1's second expert (0.25) ranks below layer 0's second (0.3), but the floor comes first:
    # from [1, 2] (140) only 0.3 of layer 0 (160) fits in 170, before 0.2 of layer 0 (180).
    assert fit_counts(SHARES, [1, 2], size, budget(170)) == [2, 2]
    assert fit_counts(SHARES, [1, 2], size, budget(150)) == [1, 2]


def test_equal_shares_go_to_the_higher_rank_then_the_earlier_layer():
    even = [torch.full((4,), 0.25), torch.full((4,), 0.25)]
    flat = lambda counts: sum(counts)  # noqa: E731
    assert fit_counts(even, [1, 1], flat, budget(3)) == [2, 1]
    assert fit_counts(even, [1, 1], flat, budget(5)) == [3, 2]
    assert fit_counts(even, [1, 1], flat, budget(6)) == [3, 3]


def test_a_budget_below_the_smallest_subset_names_its_size():
    with pytest.raises(ConfigError, match=r"^budget 129: the smallest subset \(the top-k routed experts in every"):
        fit_counts(SHARES, [1, 1], size, budget(129))


def test_budgets_as_set():
    assert budget_of(0.25, None) == Budget(250_000_000, BudgetUnit.BYTES, "budget_gb 0.25")
    assert budget_of(None, 1_000_000) == Budget(1_000_000, BudgetUnit.PARAMS, "keep_params 1,000,000")
    assert budget_of(None, None) is None
    assert Budget(1, BudgetUnit.BYTES, "").show(123_456_789) == "123.5 MB (123,456,789 bytes)"
    assert Budget(1, BudgetUnit.PARAMS, "").show(1234) == "1,234 parameters"
