"""The registry: which kinds exist, how names resolve, and how make_norm checks its arguments."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import normlab as nl
from spec import CANONICAL_KINDS

CANONICAL = set(CANONICAL_KINDS)

ALIASES = {
    "batch": "bn",
    "bn-2s": "bn",
    "bn-1s": "bn-scalar",
    "layer": "ln",
    "rmsnorm": "rms",
    "group": "gn",
    "instance": "in",
    "batch-renorm": "brn",
    "switchable": "switch",
}

# Options each kind documents (a subset check: the message must list at least these).
DOCUMENTED_OPTIONS = {
    "bn": ["momentum", "eps", "affine", "track_running_stats", "convention"],
    "bn-scalar": ["momentum", "eps", "affine", "track_running_stats", "convention"],
    "sync-bn": ["stats", "momentum", "eps", "affine", "track_running_stats", "convention"],
    "ln": ["eps", "elementwise_affine", "bias", "over", "channel_dim"],
    "rms": ["eps", "elementwise_affine", "over", "channel_dim"],
    "gn": ["groups", "eps", "affine"],
    "in": ["eps", "momentum", "affine", "track_running_stats"],
    "brn": ["momentum", "eps", "affine", "r_max", "d_max", "warmup_steps"],
    "switch": ["momentum", "eps", "affine"],
    "frozen-bn": ["stats", "eps"],
}


def _input_for(kind: str, channels: int = 8) -> torch.Tensor:
    return torch.randn(4, channels, 3, 3, generator=torch.Generator().manual_seed(0))


def _suggestions(message: str) -> list[str]:
    """The names quoted in the "Did you mean ...?" part of an unknown-kind message."""
    match = re.search(r"[Dd]id you mean (.*?)\?", message)
    assert match, f"no 'Did you mean ...?' in: {message}"
    return re.findall(r"'([^']+)'", match.group(1))


def _attributes(module: nn.Module) -> dict:
    """What distinguishes two builds of a kind: class, options, parameter/buffer shapes."""
    names = (
        "stats",
        "convention",
        "momentum",
        "eps",
        "affine",
        "track_running_stats",
        "num_groups",
        "over",
        "channel_dim",
        "elementwise_affine",
        "r_max",
        "d_max",
    )
    return {
        "class": type(module),
        **{name: getattr(module, name) for name in names if hasattr(module, name)},
        "state": {k: (tuple(v.shape), v.dtype) for k, v in module.state_dict().items()},
    }


def test_norm_kinds_lists_exactly_the_canonical_kinds():
    """norm_kinds() names the 11 canonical kinds, each once, and no alias."""
    kinds = nl.norm_kinds()
    assert set(kinds) == CANONICAL
    assert len(kinds) == len(CANONICAL)


@pytest.mark.parametrize("kind", sorted(CANONICAL))
def test_every_canonical_kind_builds_a_shape_preserving_module(kind):
    """make_norm(kind, 8) builds an nn.Module mapping (N, C, H, W) to the same shape."""
    module = nl.make_norm(kind, 8)
    assert isinstance(module, nn.Module)
    x = _input_for(kind)
    assert module(x).shape == x.shape


@pytest.mark.parametrize(("alias", "canonical"), sorted(ALIASES.items()))
def test_alias_builds_the_same_module_as_its_canonical_kind(alias, canonical):
    """An alias gives the canonical kind's class, options and state_dict layout."""
    assert _attributes(nl.make_norm(alias, 8)) == _attributes(nl.make_norm(canonical, 8))


@pytest.mark.parametrize(("name", "stats"), [("bn-1s", "scalar"), ("bn-2s", "channel")])
def test_bn_stats_aliases_select_the_statistics(name, stats):
    """bn-1s is scalar statistics (running stats of shape (1,)), bn-2s per channel."""
    module = nl.make_norm(name, 8)
    assert module.stats == stats
    assert module.running_mean.shape == ((1,) if stats == "scalar" else (8,))


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        (" BN ", "bn"),
        ("Bn-Scalar", "bn-scalar"),
        ("\tLayer\n", "ln"),
        ("GN", "gn"),
        ("RMSNorm", "rms"),
    ],
)
def test_kind_names_are_case_and_whitespace_insensitive(name, canonical):
    """Names match after strip() and lower-casing."""
    assert _attributes(nl.make_norm(name, 8)) == _attributes(nl.make_norm(canonical, 8))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("bnn", {"bn"}),
        ("layernrom", {"layer", "ln", "layernorm"}),
        ("layer-nrom", {"layer", "ln", "layernorm"}),
        ("LayerNrom", {"layer", "ln", "layernorm"}),
        ("grop", {"group", "gn"}),
        ("rms-nrom", {"rms", "rmsnorm"}),
        ("frozen", {"frozen-bn"}),
    ],
)
def test_unknown_kind_suggests_the_closest_kind_first_and_lists_known_kinds(name, expected):
    """A ValueError whose first suggestion is the intended kind and which lists every kind."""
    with pytest.raises(ValueError, match="Did you mean") as info:
        nl.make_norm(name, 8)
    message = str(info.value)
    suggestions = _suggestions(message)
    assert suggestions and suggestions[0] in expected, suggestions
    for kind in CANONICAL:
        assert kind in message


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("BatchNorm", "bn"),
        ("batch_norm", "bn"),
        ("Layer-Norm", "ln"),
        ("GroupNorm", "gn"),
        ("instance_norm", "in"),
        ("bn_scalar", "bn-scalar"),
        ("SyncBN", "sync-bn"),
    ],
)
def test_torch_style_names_resolve_ignoring_case_and_separators(name, kind):
    """torch's class names and '-'/'_'/case variants name the same kind."""
    assert type(nl.make_norm(name, 8)) is type(nl.make_norm(kind, 8))
    assert nl.registry.get_kind(name).name == kind


def test_batchnorm_typo_suggests_batch_norm_first():
    """A typo of torch's 'batchnorm' points at batch norm, not at batch renormalization."""
    with pytest.raises(ValueError) as info:
        nl.make_norm("batchnrom", 8)
    suggestions = _suggestions(str(info.value))
    assert suggestions[0] in {"bn", "batch", "bn-2s", "batchnorm"}, suggestions


@pytest.mark.parametrize(
    ("kind", "shape"), [("gn", (4, 8)), ("gn", (1, 8)), ("gn", (4, 8, 1, 1)), ("in", (4, 8, 1))]
)
@pytest.mark.parametrize("training", [True, False])
def test_groups_of_a_single_value_are_refused_in_both_modes(kind, shape, training):
    """gn with 8 groups of 8 channels, or in with one position, could only output the bias."""
    module = nl.make_norm(kind, 8).train(training)
    with pytest.raises(ValueError, match="single value"):
        module(torch.randn(shape))


@pytest.mark.parametrize("name", ["", "xyzzy", 3, None])
def test_unknown_kind_with_nothing_close_is_a_value_error_listing_kinds(name):
    """Names with no close match (or that are not strings) still raise ValueError with the list."""
    with pytest.raises(ValueError, match="sync-bn"):
        nl.make_norm(name, 8)


@pytest.mark.parametrize(("kind", "options"), sorted(DOCUMENTED_OPTIONS.items()))
def test_unknown_option_is_a_type_error_listing_accepted_options(kind, options):
    """An option the kind does not take raises TypeError naming it and the accepted ones."""
    with pytest.raises(TypeError) as info:
        nl.make_norm(kind, 8, bogus_option=2)
    message = str(info.value)
    assert "bogus_option" in message
    for option in options:
        assert option in message


def test_layer_norm_rejects_groups():
    """make_norm('ln', 8, groups=2) is a TypeError that lists ln's options, not groups."""
    with pytest.raises(TypeError) as info:
        nl.make_norm("ln", 8, groups=2)
    accepted = str(info.value).split("accepts", 1)
    assert "groups" in accepted[0]
    assert len(accepted) == 2 and "groups" not in accepted[1]
    for option in DOCUMENTED_OPTIONS["ln"]:
        assert option in accepted[1]


@pytest.mark.parametrize(
    ("kind", "option"), [("bn", {"stats": "scalar"}), ("bn-scalar", {"stats": "channel"})]
)
def test_option_fixed_by_the_kind_is_a_type_error(kind, option):
    """bn fixes stats='channel' and bn-scalar stats='scalar': passing stats is refused."""
    with pytest.raises(TypeError, match="stats"):
        nl.make_norm(kind, 8, **option)


@pytest.mark.parametrize("kind", sorted(CANONICAL))
@pytest.mark.parametrize("num_features", [0, -1, 2.5, True, "8", None])
def test_num_features_must_be_a_positive_int(kind, num_features):
    """0, negatives, floats, bools and non-numbers are a ValueError for every kind."""
    with pytest.raises(ValueError, match="num_features"):
        nl.make_norm(kind, num_features)


def test_keras_convention_sets_keras_defaults():
    """bn with convention='keras' uses momentum 0.99 and eps 1e-3."""
    module = nl.make_norm("bn", 8, convention="keras")
    assert module.convention == "keras"
    assert module.momentum == 0.99
    assert module.eps == 1e-3


def test_torch_convention_is_the_bn_default():
    """bn defaults to torch's momentum 0.1 and eps 1e-5."""
    module = nl.make_norm("bn", 8)
    assert (module.convention, module.momentum, module.eps) == ("torch", 0.1, 1e-5)


@pytest.mark.parametrize(
    ("channels", "groups"), [(48, 24), (64, 32), (8, 8), (7, 7), (1, 1), (96, 32), (66, 22)]
)
def test_group_norm_default_groups_is_largest_divisor_at_most_32(channels, groups):
    """gn's default num_groups is the largest divisor of C that is <= 32."""
    module = nl.make_norm("gn", channels)
    assert module.num_groups == groups
    assert channels % module.num_groups == 0


def test_group_norm_groups_option_passes_through():
    """make_norm('gn', 8, groups=2) has 2 groups."""
    assert nl.make_norm("gn", 8, groups=2).num_groups == 2


def test_group_norm_non_divisor_groups_is_a_value_error_suggesting_divisors():
    """groups that do not divide C raise ValueError naming a divisor."""
    with pytest.raises(ValueError, match=r"\b(2|4)\b"):
        nl.make_norm("gn", 8, groups=3)


def test_instance_norm_is_affine_by_default():
    """The registry's 'in' turns affine on (torch's default is off)."""
    module = nl.make_norm("in", 8)
    assert module.affine is True
    assert module.weight.shape == (8,) and module.bias.shape == (8,)


def test_layer_norm_over_all_normalizes_each_whole_sample():
    """ln with over='all' normalizes all C*H*W values of a sample together (float64 formula)."""
    module = nl.make_norm("ln", 8, over="all", dtype=torch.float64)
    assert module.over == "all"
    x = 3.0 + 2.0 * _input_for("ln").double()
    flat = x.flatten(1)
    expected = (flat - flat.mean(1, keepdim=True)) / torch.sqrt(
        flat.var(1, unbiased=False, keepdim=True) + 1e-5
    )
    torch.testing.assert_close(module(x).flatten(1), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("kind", "torch_class"),
    [
        ("ln", nn.LayerNorm),
        ("rms", nn.RMSNorm),
        ("gn", nn.GroupNorm),
        ("none", nn.Identity),
        ("in", nn.modules.instancenorm._InstanceNorm),
    ],
)
def test_torch_backed_kinds_are_instances_of_torch_classes(kind, torch_class):
    """Kinds that torch already has return (subclasses of) torch's own module."""
    assert isinstance(nl.make_norm(kind, 8), torch_class)


@pytest.mark.parametrize("kind", sorted(CANONICAL - {"none"}))
def test_dtype_option_makes_float64_parameters_and_buffers(kind):
    """dtype=torch.float64 puts every floating parameter and buffer in float64."""
    module = nl.make_norm(kind, 8, dtype=torch.float64)
    tensors = [*module.parameters(), *module.buffers()]
    floating = [t for t in tensors if t.is_floating_point()]
    assert floating, f"{kind} has no floating parameters or buffers"
    assert all(t.dtype == torch.float64 for t in floating)
    x = _input_for(kind).double()
    assert module(x).dtype == torch.float64


@pytest.mark.parametrize("kind", sorted(CANONICAL))
def test_device_option_places_parameters_and_buffers(kind):
    """device='meta' puts every parameter and buffer on the meta device; 'cpu' is accepted."""
    module = nl.make_norm(kind, 8, device="meta")
    assert all(t.device.type == "meta" for t in [*module.parameters(), *module.buffers()])
    cpu = nl.make_norm(kind, 8, device=torch.device("cpu"), dtype=torch.float32)
    assert all(t.device.type == "cpu" for t in [*cpu.parameters(), *cpu.buffers()])
