"""normlab's layers in torch's own tools, as torch's layers are: output layout, torch.fx,
FX and eager fusion, and the tools that look for ``_BatchNorm``.

Oracles: torch's own layers in the same tool. timm cannot be imported here: its
``convert_sync_batchnorm`` and ``freeze_batch_norm_2d`` are reproduced from their source
(the class checks and the attributes they copy).
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import fx, nn
from torch.ao.quantization import fuse_modules
from torch.fx.experimental.optimization import fuse as fx_fuse
from torch.nn.modules.batchnorm import _BatchNorm
from torch.testing import assert_close

import normlab as nl
from normlab.inference import FUSER_METHOD_MAPPING
from normlab.layers import TorchBatchNorm, TorchSyncBatchNorm

C = 6
KINDS = ("bn", "bn-scalar", "brn", "switch", "frozen-bn", "sync-bn", "gn", "in", "ln", "rms")
OPTIONS = {"gn": {"groups": 3}}


def _norm(kind: str, **options) -> nn.Module:
    return nl.make_norm(kind, C, **OPTIONS.get(kind, {}), **options)


# --- output layout ----------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", KINDS)
def test_channels_last_output_is_contiguous_as_torch_layer_norms(kind, training):
    """GPT-2's Conv1D calls ``.view`` on what the norm returns: torch's LayerNorm gives a
    contiguous (N, L, C) output, and so must every kind with ``channel_dim=-1``."""
    x = torch.randn(4, 5, C)
    assert nn.LayerNorm(C)(x).is_contiguous()
    y = _norm(kind, channel_dim=-1).train(training)(x)
    assert y.is_contiguous()
    assert y.view(-1, C).shape == (20, C)


def _torch_equivalent(kind: str) -> nn.Module | None:
    """torch's module with the same output layout on (N, C, H, W) input, if torch has one."""
    return {
        "bn": nn.BatchNorm2d(C),
        "bn-scalar": nn.BatchNorm2d(C),
        "brn": nn.BatchNorm2d(C),
        "switch": nn.BatchNorm2d(C),
        "frozen-bn": nn.BatchNorm2d(C).eval(),
        "sync-bn": nn.BatchNorm2d(C),
        "gn": nn.GroupNorm(3, C),
        "in": nn.InstanceNorm2d(C, affine=True),
    }.get(kind)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", [k for k in KINDS if k not in ("ln", "rms")])
def test_memory_format_and_dtype_follow_torch(kind, dtype):
    """Channels-last in, channels-last out where torch's layer does so (BatchNorm2d,
    GroupNorm; not InstanceNorm2d); the output has the input's dtype with float32
    parameters on bfloat16 input, as torch's."""
    x = torch.randn(4, C, 5, 7).to(dtype=dtype, memory_format=torch.channels_last)
    ours, theirs = _norm(kind), _torch_equivalent(kind)
    for training in (True, False):
        y, expected = ours.train(training)(x), theirs.train(training)(x)
        assert y.dtype == expected.dtype == dtype
        for layout in (torch.channels_last, torch.contiguous_format):
            assert y.is_contiguous(memory_format=layout) == expected.is_contiguous(
                memory_format=layout
            ), (training, layout)


# --- torch.fx ---------------------------------------------------------------------


def _model(norm: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, C, 3, padding=1), norm, nn.ReLU(), nn.Flatten())


@pytest.mark.parametrize("kind", KINDS)
def test_fx_traces_each_layer_as_one_call_as_torch_layers_are(kind):
    """symbolic_trace records the layer as a ``call_module``, as it records BatchNorm2d,
    so the traced graph keeps the layer's checks, its train/eval switch and its step count."""
    model = _model(_norm(kind))
    traced = fx.symbolic_trace(model)
    calls = [node.target for node in traced.graph.nodes if node.op == "call_module"]
    assert calls == ["0", "1", "2", "3"]
    gen = torch.Generator().manual_seed(0)
    x = 2.0 + torch.randn(8, 3, 5, 5, generator=gen)
    reference = copy.deepcopy(model)
    for training in (True, False, True):
        traced.train(training)
        reference.train(training)
        assert_close(traced(x), reference(x))
    assert_close(traced.state_dict(), reference.state_dict(), rtol=0, atol=0)
    norm_only = fx.symbolic_trace(nn.Sequential(_norm(kind)))
    with pytest.raises(ValueError, match=f"built for {C} channels"):
        norm_only(torch.randn(2, C + 1, 5, 5))


def test_fx_fusion_runs_on_a_model_with_normlab_layers():
    """torch.fx's fuse matches exact torch classes: it folds torch's BatchNorm2d, keeps
    normlab's layer as a call, and the eval output stays the model's."""
    model = nn.Sequential(
        nn.Conv2d(3, C, 3), nn.BatchNorm2d(C), nn.Conv2d(C, C, 1), nl.BatchNorm(C), nn.ReLU()
    )
    x = torch.randn(4, 3, 6, 6)
    model.train()(x)
    model.eval()
    fused = fx_fuse(model)
    kinds = [type(m) for m in fused.modules()]
    assert nn.BatchNorm2d not in kinds and TorchBatchNorm in kinds
    assert_close(fused(x), model(x))


def test_eager_fusion_folds_torchs_configuration_with_the_mapping():
    model = nn.Sequential(nn.Conv2d(3, C, 3), nl.BatchNorm(C), nn.ReLU()).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(0.5, 2)
    x = torch.randn(4, 3, 6, 6)
    config = {"additional_fuser_method_mapping": FUSER_METHOD_MAPPING}
    fused = fuse_modules(copy.deepcopy(model), [["0", "1", "2"]], fuse_custom_config_dict=config)
    assert isinstance(fused[1], nn.Identity) and isinstance(fused[2], nn.Identity)
    assert_close(fused(x), model(x))


@pytest.mark.parametrize(
    "options", [{"stats": "scalar"}, {"convention": "keras"}], ids=["scalar", "keras"]
)
def test_eager_fusion_refuses_other_configurations_by_name(options):
    model = nn.Sequential(nn.Conv2d(3, C, 3), nl.BatchNorm(C, **options), nn.ReLU()).eval()
    config = {"additional_fuser_method_mapping": FUSER_METHOD_MAPPING}
    with pytest.raises(AssertionError, match="did not find fuser method"):
        fuse_modules(model, [["0", "1", "2"]], fuse_custom_config_dict=config)


# --- tools that look for _BatchNorm ------------------------------------------------


NOT_TORCH = {
    "bn-scalar": {},
    "bn keras": {"convention": "keras"},
    "bn channels last": {"channel_dim": -1},
    "sync-bn keras": {"convention": "keras"},
    "brn": {},
    "switch": {},
    "frozen-bn": {},
}


def test_torchs_configuration_is_a_torch_batch_norm():
    for layer in (nl.BatchNorm(C), nl.make_norm("bn", C), nl.BatchNorm(C, momentum=None)):
        assert type(layer) is TorchBatchNorm
        assert isinstance(layer, _BatchNorm) and isinstance(layer, nl.BatchNorm)
    for layer in (nl.SyncBatchNorm(C), nl.make_norm("sync-bn", C)):
        assert type(layer) is TorchSyncBatchNorm
        assert isinstance(layer, _BatchNorm) and isinstance(layer, nl.SyncBatchNorm)
    assert repr(nl.BatchNorm(C)).startswith("BatchNorm(")
    assert type(copy.deepcopy(nl.BatchNorm(C))) is TorchBatchNorm


def test_reports_name_torchs_configuration_as_its_repr_does():
    """TorchBatchNorm is an implementation class: what the user reads says BatchNorm."""
    model = nn.Sequential(nn.Conv2d(3, C, 3), nl.BatchNorm(C))
    summary = nl.replace_norms(copy.deepcopy(model), "gn", groups=2).summary()
    assert summary.startswith(f"1: BatchNorm({C}) -> gn"), summary
    x = torch.randn(4, 3, 8, 8)
    parity = nl.inference.eval_parity(model, x)
    assert [layer.kind for layer in parity.layers] == ["BatchNorm(channel)"]
    with pytest.raises(ValueError, match=r"layer '1' \(BatchNorm\) is in training mode"):
        nl.inference.fold_batchnorm(model.train())


@pytest.mark.parametrize(("kind", "cls"), [("bn", TorchBatchNorm), ("sync-bn", TorchSyncBatchNorm)])
@pytest.mark.parametrize(
    ("setting", "value"), [("stats", "scalar"), ("convention", "keras"), ("channel_dim", -1)]
)
def test_torchs_configuration_cannot_be_changed_after_construction(kind, cls, setting, value):
    """The class (torch's _BatchNorm or not) is chosen from these when the layer is built; a
    layer changed afterwards would still be rebuilt as torch's batch norm by torch's and
    timm's tools. The error says how to get the layer wanted; assigning the value it has is
    allowed; copies and pickles keep the rule."""
    layer = _norm(kind)
    before = getattr(layer, setting)
    fix = rf"normlab.make_norm\('{kind}', {C}, {setting}={value!r}\)"
    if setting != "channel_dim":  # replace_norms takes the layout from the layer it replaces
        fix += rf".*normlab.replace_norms\(model, '{kind}', {setting}={value!r}\)"
    with pytest.raises(AttributeError, match=rf"{setting} is fixed when the layer is built.*{fix}"):
        setattr(layer, setting, value)
    assert getattr(layer, setting) == before and type(layer) is cls
    setattr(layer, setting, before)
    copied = pickle.loads(pickle.dumps(copy.deepcopy(layer)))
    assert type(copied) is cls and getattr(copied, setting) == before
    with pytest.raises(AttributeError, match="fixed when the layer is built"):
        setattr(copied, setting, value)


@pytest.mark.parametrize("name", NOT_TORCH)
def test_other_configurations_are_not(name):
    """A tool that rebuilds any _BatchNorm as torch's would change what these compute."""
    kind = name.split()[0]
    layer = _norm(kind, **NOT_TORCH[name])
    assert not isinstance(layer, _BatchNorm)
    assert not isinstance(copy.deepcopy(layer), _BatchNorm)


def _timm_convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """timm.layers.convert_sync_batchnorm for plain batch norms: any _BatchNorm becomes
    torch's SyncBatchNorm with its settings and tensors."""
    output = module
    if isinstance(module, _BatchNorm):
        output = nn.SyncBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        if module.affine:
            with torch.no_grad():
                output.weight = module.weight
                output.bias = module.bias
        output.running_mean = module.running_mean
        output.running_var = module.running_var
        output.num_batches_tracked = module.num_batches_tracked
        output.training = module.training
    for name, child in module.named_children():
        output.add_module(name, _timm_convert_sync_batchnorm(child))
    return output


def _timm_freeze_batch_norm_2d(module: nn.Module) -> nn.Module:
    """timm.layers.freeze_batch_norm_2d's class check: BatchNorm2d or SyncBatchNorm
    become FrozenBatchNorm2d (here normlab's, with the same buffers); others are walked."""
    if isinstance(module, nn.BatchNorm2d | nn.SyncBatchNorm):
        return nl.FrozenBatchNorm.from_batchnorm(module)
    for name, child in module.named_children():
        new = _timm_freeze_batch_norm_2d(child)
        if new is not child:
            module.add_module(name, new)
    return module


@pytest.mark.parametrize(
    "convert",
    [nn.SyncBatchNorm.convert_sync_batchnorm, _timm_convert_sync_batchnorm],
    ids=["torch", "timm"],
)
def test_sync_conversion_takes_torchs_configuration_and_leaves_the_others(convert):
    gen = torch.Generator().manual_seed(0)
    x = 1.0 + 2.0 * torch.randn(8, 3, 5, 5, generator=gen)
    others = [_norm(name.split()[0], **options) for name, options in NOT_TORCH.items()]
    model = _model(nl.BatchNorm(C))
    model.append(nn.Sequential(*[nn.Identity()]))
    model.train()(x)  # running statistics off their initial values
    holder = nn.ModuleList(others)
    expected = copy.deepcopy(model).eval()(x)
    converted = convert(copy.deepcopy(model))
    assert type(converted[1]) is nn.SyncBatchNorm
    assert_close(converted.eval()(x), expected, rtol=0, atol=0)
    untouched = convert(copy.deepcopy(holder))
    assert [type(m) for m in untouched] == [type(m) for m in holder]


def test_timms_freeze_takes_batchnorm2d_only_and_leaves_normlabs_as_torchs_batchnorm1d():
    """timm's freeze_batch_norm_2d matches BatchNorm2d and SyncBatchNorm, so it skips
    normlab's layers (which take any rank), as it skips BatchNorm1d: nothing changes."""
    model = nn.Sequential(nn.BatchNorm1d(C), nl.BatchNorm(C), nl.BatchNorm(C, stats="scalar"))
    frozen = _timm_freeze_batch_norm_2d(copy.deepcopy(model))
    assert [type(m) for m in frozen] == [type(m) for m in model]
    frozen = nl.inference.freeze(copy.deepcopy(model))
    assert all(isinstance(m, nl.FrozenBatchNorm) for m in list(frozen)[1:])


def test_functorch_replace_all_batch_norm_modules_stops_torchs_configuration_tracking():
    from torch.func import replace_all_batch_norm_modules_

    model = replace_all_batch_norm_modules_(nn.Sequential(nl.BatchNorm(C)))
    assert model[0].running_mean is None and not model[0].track_running_stats
    x = torch.randn(4, C)
    assert_close(model.eval()(x), nn.functional.batch_norm(x, None, None, training=True))


@pytest.mark.filterwarnings("ignore")
def test_fx_quantization_prepare_traces_a_model_with_normlab_layers():
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    model = nn.Sequential(nn.Conv2d(3, C, 3), nl.BatchNorm(C), nn.ReLU(), _norm("gn")).eval()
    x = torch.randn(2, 3, 8, 8)
    prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping(), (x,))
    assert_close(prepared(x), model(x))
