"""The norm-class table answers every "is this a norm layer, which kind?" question once.

Each predicate of :mod:`normlab.layers.norm_classes` is checked on one catalog of modules:
normlab's kinds, torch's normalization classes, timm's and torchvision's (the stand-ins of
tests/thirdparty_standins.py), a Hugging Face style RMS norm known only by its structure,
and modules that normalize nothing. The expected answers are written out per module from
what each class computes (torch's documentation, the libraries' sources); the tools'
public names for the questions must be the table's own functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import normlab as nl
import thirdparty_standins as tp
from normlab.layers import norm_classes


class HFRMSNorm(nn.Module):
    """Llama's RMS norm as Hugging Face writes it: a weight and a ``variance_epsilon``."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.variance_epsilon))


class OwnBatchNorm(_BatchNorm):
    """A user's batch norm written on torch's base class, as torch's BatchNorm1d is."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        pass


class ApexStyleSyncBatchNorm(_BatchNorm):
    """A third-party synchronized batch norm (apex's): a _BatchNorm holding ``process_group``."""

    def __init__(self, num_features: int, process_group: object = None) -> None:
        super().__init__(num_features)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        pass


C = 4

# Flags, in order: norm (is_norm_layer), batch (is_batch_norm), fixed (has_fixed_statistics),
# mixes (mixes_sample_statistics), sync (converts_to_sync_batch_norm), tracked
# (tracks_running_stats).
CATALOG: dict[str, tuple[object, str]] = {
    # normlab's kinds
    "bn": (lambda: nl.make_norm("bn", C), "norm batch sync tracked"),
    "bn keras": (lambda: nl.make_norm("bn", C, convention="keras"), "norm batch sync tracked"),
    "bn-scalar": (lambda: nl.make_norm("bn-scalar", C), "norm batch sync tracked"),
    "bn untracked": (lambda: nl.make_norm("bn", C, track_running_stats=False), "norm batch sync"),
    "brn": (lambda: nl.make_norm("brn", C), "norm batch tracked"),
    "switch": (lambda: nl.make_norm("switch", C), "norm batch mixes tracked"),
    "sync-bn": (lambda: nl.make_norm("sync-bn", C), "norm batch tracked"),
    "frozen-bn": (lambda: nl.make_norm("frozen-bn", C), "norm fixed tracked"),
    "ln": (lambda: nl.make_norm("ln", C), "norm"),
    "rms": (lambda: nl.make_norm("rms", C), "norm"),
    "gn": (lambda: nl.make_norm("gn", C), "norm"),
    "in": (lambda: nl.make_norm("in", C), "norm"),
    "none": (lambda: nl.make_norm("none", C), ""),
    # torch's
    "BatchNorm1d": (lambda: nn.BatchNorm1d(C), "norm batch sync tracked"),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(C), "norm batch sync tracked"),
    "BatchNorm3d untracked": (
        lambda: nn.BatchNorm3d(C, track_running_stats=False),
        "norm batch sync",
    ),
    "SyncBatchNorm": (lambda: nn.SyncBatchNorm(C), "norm batch tracked"),
    "LazyBatchNorm2d": (lambda: nn.LazyBatchNorm2d(), "norm batch sync tracked"),
    "InstanceNorm2d tracked": (
        lambda: nn.InstanceNorm2d(C, track_running_stats=True),
        "norm tracked",
    ),
    "LayerNorm": (lambda: nn.LayerNorm(C), "norm"),
    "GroupNorm": (lambda: nn.GroupNorm(2, C), "norm"),
    "RMSNorm": (lambda: nn.RMSNorm(C), "norm"),
    "own _BatchNorm subclass": (lambda: OwnBatchNorm(C), "norm batch sync tracked"),
    "apex-style SyncBatchNorm": (lambda: ApexStyleSyncBatchNorm(C), "norm batch tracked"),
    # timm's and torchvision's
    "timm BatchNormAct2d": (lambda: tp.BatchNormAct2d(C), "norm batch sync tracked"),
    "timm SyncBatchNormAct": (lambda: tp.SyncBatchNormAct(C), "norm batch tracked"),
    "FrozenBatchNorm2d": (lambda: tp.FrozenBatchNorm2d(C), "norm fixed tracked"),
    "timm FrozenBatchNormAct2d": (lambda: tp.FrozenBatchNormAct2d(C), "norm fixed tracked"),
    "timm GroupNormAct": (lambda: tp.GroupNormAct(C, 2), "norm"),
    "timm LayerNorm2d": (lambda: tp.LayerNorm2d(C), "norm"),
    "timm RmsNorm": (lambda: tp.RmsNorm(C), "norm"),
    # Hugging Face's, by structure
    "HF RMS norm": (lambda: HFRMSNorm(C), "norm"),
    # not norms
    "Linear": (lambda: nn.Linear(C, C), ""),
    "Conv2d": (lambda: nn.Conv2d(C, C, 1), ""),
    "WSConv2d": (lambda: nl.WSConv2d(C, C, 1), ""),
    "NormAct": (lambda: nl.layers.NormAct(nl.make_norm("bn", C), act=nn.ReLU()), ""),
}

PREDICATES = {
    "norm": norm_classes.is_norm_layer,
    "batch": norm_classes.is_batch_norm,
    "fixed": norm_classes.has_fixed_statistics,
    "mixes": norm_classes.mixes_sample_statistics,
    "sync": norm_classes.converts_to_sync_batch_norm,
    "tracked": norm_classes.tracks_running_stats,
}


@pytest.mark.parametrize("name", list(CATALOG))
def test_each_predicate_answers_as_the_class_computes(name):
    build, flags = CATALOG[name]
    module = build()
    expected = {flag: flag in flags.split() for flag in PREDICATES}
    got = {flag: predicate(module) for flag, predicate in PREDICATES.items()}
    assert got == expected


@pytest.mark.parametrize("name", list(CATALOG))
def test_is_batch_norm_is_the_table_saying_batch_statistics(name):
    """``is_batch_norm`` asks the class alone (no probe of the forward); the table's facts
    must say the same: batch statistics."""
    module = CATALOG[name][0]()
    facts = norm_classes.norm_facts(module)
    assert norm_classes.is_batch_norm(module) == (facts is not None and facts.statistics == "batch")


def test_the_tools_public_names_are_the_tables_own_functions():
    import normlab.checkpoints
    import normlab.inference
    import normlab.swap

    assert normlab.swap.is_norm_layer is norm_classes.is_norm_layer
    assert normlab.checkpoints.is_norm_layer is norm_classes.is_norm_layer
    assert normlab.inference.is_batch_norm is norm_classes.is_batch_norm


def test_no_other_module_defines_its_own_norm_predicate():
    """One place answers: no module but the table defines a function by these names or
    keeps its own tuple of torch's batch-norm classes."""
    names = {"is_norm_layer", "is_batch_norm", "_is_norm", "tracks_running_stats"}
    table = Path(norm_classes.__file__)
    found = []
    for path in Path(nl.__file__).parent.rglob("*.py"):
        if path == table:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name in names:
                found.append(f"{path.name}: def {node.name}")
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name) and "BATCH_NORMS" in target.id:
                        found.append(f"{path.name}: {target.id}")
    assert found == []


def test_torch_batch_norm_ranks_are_what_torch_accepts():
    """Each class of the rank table takes exactly its ranks (torch's own input check)."""
    for cls, ranks in norm_classes.TORCH_BATCH_NORM_RANKS.items():
        layer = cls(C)
        for rank in range(1, 7):
            x = torch.randn(2, C, *([3] * (rank - 2))) if rank >= 2 else torch.randn(C)
            try:
                layer(x)
            except ValueError:
                assert rank not in ranks, (cls.__name__, rank)
            else:
                assert rank in ranks, (cls.__name__, rank)
        for rank in ranks:
            assert norm_classes.torch_batch_norm_for_rank(rank) is cls
    assert norm_classes.torch_batch_norm_for_rank(6) is None
