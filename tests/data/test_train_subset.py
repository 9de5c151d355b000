"""``--train-subset N``: a fixed, seeded, stratified subset of the training split."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from normlab.data import load_dataset, stratified_subset, train_subset
from normlab.experiment import RunConfig, check_runs
from normlab.experiment.train import train_run


def _largest_remainder(counts: list[int], size: int) -> list[int]:
    """Hamilton's apportionment in exact arithmetic: floors, then the largest remainders
    (ties to the earlier class)."""
    total = sum(counts)
    quotas = [Fraction(size * c, total) for c in counts]
    places = [int(q) for q in quotas]
    order = sorted(range(len(counts)), key=lambda i: (-(quotas[i] - places[i]), i))
    for i in order[: size - sum(places)]:
        places[i] += 1
    return places


@settings(max_examples=60, deadline=None)
# Remainders that tie exactly (0.24 for classes 0, 1 and 6) but not in floating point.
@example(counts=[1, 1, 3, 5, 5, 9, 26], fraction=0.25, seed=0)
@given(
    counts=st.lists(st.integers(1, 40), min_size=1, max_size=8),
    fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 3),
)
def test_each_class_gets_its_proportional_share(counts, fraction, seed):
    labels = torch.cat([torch.full((c,), label) for label, c in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
    size = max(1, round(fraction * len(labels)))
    index = stratified_subset(labels, size, seed)
    assert index.dtype == torch.int64 and index.shape == (size,)
    assert torch.equal(index, index.unique())  # sorted, no repeats
    assert int(index.min()) >= 0 and int(index.max()) < len(labels)
    chosen = torch.bincount(labels[index], minlength=len(counts)).tolist()
    assert chosen == _largest_remainder(counts, size)


def test_the_subset_is_fixed_by_its_seed():
    labels = load_dataset("digits").train_y
    first = stratified_subset(labels, 100)
    assert torch.equal(first, stratified_subset(labels, 100))
    assert not torch.equal(first, stratified_subset(labels, 100, seed=1))


def test_a_size_the_split_cannot_fill_is_refused_before_training():
    data = load_dataset("digits")
    for size in (0, 1438):
        with pytest.raises(ValueError, match="between 1 and the 1437 training samples"):
            train_subset(data, size)
    with pytest.raises(ValueError, match="`train_subset` must be between 1 and the 1437"):
        check_runs([RunConfig(train_subset=1438)], data)
    with pytest.raises(ValueError, match="`train_subset` must be a whole number of 1 or more"):
        RunConfig(train_subset=0)


def test_train_subset_keeps_the_validation_split_and_the_chosen_samples():
    data = load_dataset("digits")
    small = train_subset(data, 50)
    index = stratified_subset(data.train_y, 50)
    assert torch.equal(small.train_x, data.train_x[index])
    assert torch.equal(small.train_y, data.train_y[index])
    assert small.val_x is data.val_x and small.val_y is data.val_y


def test_runs_on_a_subset_train_on_it_and_have_their_own_id():
    data = load_dataset("digits")
    whole = RunConfig(epochs=1)
    subset = RunConfig(epochs=1, train_subset=100)
    assert "train_subset" not in whole.to_dict()  # ids from before the option are kept
    assert subset.run_id != whole.run_id
    record = train_run(subset, data)
    assert record["data"]["train_size"] == 100
    assert record["data"]["samples_per_epoch"] == 100
    assert RunConfig.from_dict(record["config"]) == subset
