"""p-values of Welch contrasts and Holm's adjustment, against scipy and the textbook
step-down procedure."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from normlab.report.stats import contrast, equivalence_p_value, holm, p_value


@pytest.mark.parametrize("seed", range(5))
def test_p_value_is_welchs_two_sided_t_test(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(1.0, 1.0, 4 + seed), rng.normal(0.3, 2.0, 3 + seed)
    expected = scipy_stats.ttest_ind(a, b, equal_var=False).pvalue
    assert p_value(contrast([a.tolist(), b.tolist()], [1, -1])) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(5))
def test_equivalence_p_value_is_the_larger_of_two_one_sided_welch_tests(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0.2, 0.5, 5), rng.normal(0.0, 0.7, 6)
    margin = 1.0
    above = scipy_stats.ttest_ind(a + margin, b, equal_var=False, alternative="greater").pvalue
    below = scipy_stats.ttest_ind(a - margin, b, equal_var=False, alternative="less").pvalue
    result = contrast([a.tolist(), b.tolist()], [1, -1])
    assert equivalence_p_value(result, margin) == pytest.approx(max(above, below))


def test_no_interval_gives_no_p_value():
    single = contrast([[1.0], [2.0, 3.0]], [1, -1])
    assert p_value(single) is None and equivalence_p_value(single, 1.0) is None


def test_holm_by_hand():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max so far 0.06
    assert holm([0.01, 0.04, 0.03, 0.005, None]) == pytest.approx([0.03, 0.06, 0.06, 0.02, None])


def _step_down_rejections(p_values: list[float], alpha: float) -> set[int]:
    """Holm 1979 as a procedure: walk the p-values up from the smallest, rejecting while
    p_(i) <= alpha / (m - i + 1), stopping at the first that is not."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = set()
    for rank, index in enumerate(order):
        if p_values[index] > alpha / (len(p_values) - rank):
            break
        rejected.add(index)
    return rejected


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=12),
    st.sampled_from([0.01, 0.05, 0.1]),
)
def test_holm_adjusted_values_reject_exactly_what_the_step_down_procedure_rejects(p, alpha):
    adjusted = holm(p)
    assert {i for i, value in enumerate(adjusted) if value <= alpha} == _step_down_rejections(
        p, alpha
    )
    assert all(a >= raw for a, raw in zip(adjusted, p, strict=True))
