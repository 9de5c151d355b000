"""A fixed, stratified subset of a training split, so that expensive models train quickly."""

from __future__ import annotations

import dataclasses

import torch

from normlab.data.dataset import Dataset

SUBSET_SEED = 0


def stratified_subset(labels: torch.Tensor, size: int, seed: int = SUBSET_SEED) -> torch.Tensor:
    """Indices of ``size`` samples of (N,) integer ``labels``, each class in proportion.

    Class c, holding n_c of the N samples, gets floor(size * n_c / N) places,
    and the places left go one each to the classes with the largest remainders
    (ties to the smaller label), so every class's share is within one sample
    of proportional. Within a class the samples are drawn at random by a
    generator seeded with ``seed``: the same labels, size and seed give the
    same subset. The indices are returned in ascending order, (size,) int64.

    Raises:
        ValueError: ``size`` is not in 1..N.
    """
    total = len(labels)
    if not 1 <= size <= total:
        raise ValueError(
            f"`train_subset` must be between 1 and the {total} training samples; got {size}."
        )
    classes, counts = labels.unique(return_counts=True)
    # Integer arithmetic: floating-point quotas break exact ties between remainders.
    places = counts * size // total
    remainder = counts * size % total
    leftover = size - int(places.sum())
    # A stable sort on the negated remainders: largest first, ties in label order.
    order = torch.sort(-remainder, stable=True).indices
    places[order[:leftover]] += 1
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label, count in zip(classes.tolist(), places.tolist(), strict=True):
        members = (labels == label).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:count]])
    return torch.cat(chosen).sort().values


def train_subset(data: Dataset, size: int, seed: int = SUBSET_SEED) -> Dataset:
    """``data`` with its training split cut to :func:`stratified_subset`'s ``size`` samples;
    the validation split is unchanged."""
    index = stratified_subset(data.train_y, size, seed)
    return dataclasses.replace(
        data, train_x=data.train_x.index_select(0, index), train_y=data.train_y[index]
    )
