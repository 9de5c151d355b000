"""Training diagnostics, checked against float64 computations written out by hand: a
two-layer MLP with batch norm whose forward, optimizer update and Santurkar et al.'s
measures are formulas in this file, not the code under test."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from normlab.data import load_dataset
from normlab.experiment import RunConfig, train_run
from normlab.experiment.diagnostics import Diagnostics, model_layers
from normlab.experiment.train import make_optimizer

EPS = 1e-5


def _tiny_bn_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3)
    ).double()
    with torch.no_grad():  # a non-trivial affine, so its gradients count
        model[2].weight.uniform_(0.5, 1.5)
        model[2].bias.uniform_(-0.5, 0.5)
    return model


def _batch():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(24, 1, 1, 5, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (24,), generator=generator)
    return images, labels


def _loss(params, images, labels):
    """The model's training-mode loss as a formula: Linear, batch norm (biased variance),
    ReLU, Linear, mean cross-entropy."""
    w1, b1, gamma, beta, w2, b2 = params
    h = images.flatten(1) @ w1.T + b1
    mean = h.mean(0)
    var = ((h - mean) ** 2).mean(0)
    h = (h - mean) / torch.sqrt(var + EPS) * gamma + beta
    logits = torch.relu(h) @ w2.T + b2
    log_probs = logits - torch.logsumexp(logits, 1, keepdim=True)
    return -log_probs[torch.arange(len(labels)), labels].mean()


def _grads(params, images, labels):
    leaves = [p.detach().clone().requires_grad_(True) for p in params]
    loss = _loss(leaves, images, labels)
    return loss.item(), [g.detach() for g in torch.autograd.grad(loss, leaves)]


def _first_update(name, params, grads, lr):
    """One step from a fresh optimizer: sgd with momentum 0.9 moves by -lr g on its first
    step; adam by -lr m̂ / (sqrt(v̂) + eps) with m̂ = g and v̂ = g²."""
    if name == "sgd":
        return [p - lr * g for p, g in zip(params, grads, strict=True)]
    return [p - lr * g / (g.abs() + 1e-8) for p, g in zip(params, grads, strict=True)]


def _norm(tensors):
    return math.sqrt(sum(float((t**2).sum()) for t in tensors))


def test_layers_group_a_norms_affine_with_the_layer_before_it():
    layers = model_layers(_tiny_bn_mlp())
    assert [layer.name for layer in layers] == ["1", "4"]
    assert layers[0].parameters == ("1.weight", "1.bias", "2.weight", "2.bias")
    assert layers[1].parameters == ("4.weight", "4.bias")


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
def test_probe_matches_santurkar_measures_computed_by_hand(optimizer_name):
    model = _tiny_bn_mlp()
    images, labels = _batch()
    lr = 0.05
    optimizer = make_optimizer(optimizer_name, model.parameters(), lr)
    params = [p.detach().clone() for p in model.parameters()]
    running = model[2].running_mean.clone()
    diagnostics = Diagnostics(model, images, labels, probe_size=len(images), step_sizes=(0.1, 0.5))
    # The probe batch is a permutation of the data; the loss is a mean, so order is moot.
    probe = diagnostics.probe(optimizer, epoch=0, step=0)

    loss, grads = _grads(params, images, labels)
    assert probe["loss"] == pytest.approx(loss, rel=1e-12)
    first, last = _norm(grads[:4]), _norm(grads[4:])
    assert probe["grad_norms"] == pytest.approx([first, last], rel=1e-10)
    assert probe["grad_ratio"] == pytest.approx(first / last, rel=1e-10)

    # ICS of layer 2: its gradient after layer 1 (and its norm's affine) take their update.
    updated = _first_update(optimizer_name, params, grads, lr)
    _, shifted = _grads(updated[:4] + params[4:], images, labels)
    g = torch.cat([t.flatten() for t in grads[4:]])
    g_shifted = torch.cat([t.flatten() for t in shifted[4:]])
    assert probe["ics"][0] == 0.0
    assert probe["ics"][1] == pytest.approx((g - g_shifted).norm().item(), rel=1e-6)
    cosine = (g @ g_shifted / (g.norm() * g_shifted.norm())).item()
    assert probe["ics_cosine"][1] == pytest.approx(cosine, rel=1e-9)
    assert probe["ics"][1] > 0

    # Landscape along the negative gradient.
    landscape = probe["landscape"]
    losses, changes = [], []
    for eta in (0.1, 0.5):
        moved_loss, moved = _grads([p - eta * g for p, g in zip(params, grads, strict=True)],
                                   images, labels)  # fmt: skip
        losses.append(moved_loss)
        changes.append(_norm([a - b for a, b in zip(moved, grads, strict=True)]))
    assert landscape["losses"] == pytest.approx(losses, rel=1e-10)
    assert landscape["gradient_changes"] == pytest.approx(changes, rel=1e-8)
    assert landscape["loss_variation"] == pytest.approx(
        max([*losses, loss]) - min([*losses, loss]), rel=1e-8
    )
    assert landscape["gradient_predictiveness"] == pytest.approx(max(changes), rel=1e-8)
    g_all = _norm(grads)
    assert landscape["beta_smoothness"] == pytest.approx(
        max(c / (eta * g_all) for c, eta in zip(changes, (0.1, 0.5), strict=True)), rel=1e-8
    )

    # Nothing the run depends on moved.
    for before, after in zip(params, model.parameters(), strict=True):
        assert torch.equal(before, after)
    assert torch.equal(model[2].running_mean, running)
    assert not optimizer.state, "the probe's update must be taken on a copy of the optimizer"


def test_activation_statistics_are_each_layers_output_on_the_probe_batch():
    model = _tiny_bn_mlp()
    images, labels = _batch()
    optimizer = make_optimizer("sgd", model.parameters(), 0.1)
    probe = Diagnostics(model, images, labels, probe_size=len(images)).probe(optimizer, 0, 0)
    w1, b1, gamma, beta, w2, b2 = [p.detach() for p in model.parameters()]
    h1 = images.flatten(1) @ w1.T + b1
    mean, var = h1.mean(0), ((h1 - h1.mean(0)) ** 2).mean(0)
    h2 = torch.relu((h1 - mean) / torch.sqrt(var + EPS) * gamma + beta) @ w2.T + b2
    assert probe["activation_mean"] == pytest.approx([h1.mean().item(), h2.mean().item()])
    assert probe["activation_std"] == pytest.approx([h1.std().item(), h2.std().item()])


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _config(**options) -> RunConfig:
    base = {"epochs": 2, "batch_size": 64, "model_options": {"hidden": [32, 16]}}
    return RunConfig(**{**base, **options})


@pytest.mark.parametrize("norm", ["none", "bn"])
def test_diagnostics_do_not_change_what_the_run_learns(digits, norm):
    plain = train_run(_config(norm=norm), digits)
    probed = train_run(_config(norm=norm, diagnostics=True), digits)
    assert "diagnostics" not in plain
    strip = [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in plain["history"]]
    assert strip == [{k: v for k, v in e.items() if k != "seconds"} for e in probed["history"]]
    assert probed["final"] == plain["final"]
    diagnostics = probed["diagnostics"]
    assert diagnostics["layers"] == ["1", "4", "7"]
    assert [p["epoch"] for p in diagnostics["probes"]] == [0, 1, 2]
    steps_per_epoch = math.ceil(len(digits.train_x) / 64)
    assert [p["step"] for p in diagnostics["probes"]] == [0, steps_per_epoch, 2 * steps_per_epoch]
    assert len(diagnostics["step_seconds"]) == 2 and min(diagnostics["step_seconds"]) > 0
    assert probed["config"]["diagnostics"] is True and "diagnostics" not in plain["config"]


def test_steps_end_the_run_after_that_many_updates(digits):
    per_epoch = math.ceil(len(digits.train_x) / 64)
    record = train_run(_config(steps=per_epoch + 3, epochs=3), digits)
    assert record["final"]["steps"] == per_epoch + 3
    assert record["final"]["epochs_run"] == 2
    assert record["data"]["samples_per_epoch"] == 3 * 64  # the last, partial pass
    with pytest.raises(ValueError, match="raise epochs to at least 3"):
        train_run(_config(steps=2 * per_epoch + 1, epochs=2), digits)


def test_linear_lr_scaling_trains_as_the_scaled_rate_does(digits):
    scaled = _config(batch_size=128, lr=1e-3, lr_scaling="linear", lr_reference_batch=32)
    assert scaled.effective_lr == pytest.approx(4e-3)
    direct = _config(batch_size=128, lr=4e-3)
    assert train_run(scaled, digits)["final"] == train_run(direct, digits)["final"]
    assert scaled.run_id != direct.run_id
    assert _config(lr_scaling="none").run_id == _config().run_id
    with pytest.raises(ValueError, match="choose none or linear"):
        RunConfig(lr_scaling="sqrt")


def test_runs_without_the_new_options_keep_their_ids():
    data = RunConfig().to_dict()
    assert not {"diagnostics", "lr_scaling", "lr_reference_batch", "steps"} & set(data)
    for options in ({"diagnostics": True}, {"lr_scaling": "linear"}, {"steps": 5}):
        assert RunConfig(**options).run_id != RunConfig().run_id
        assert RunConfig.from_dict(RunConfig(**options).to_dict()) == RunConfig(**options)


def test_records_with_and_without_diagnostics_both_load(digits):
    from normlab.report.runs import Sweep
    from normlab.study import measures

    old = train_run(_config(norm="bn", epochs=1), digits)
    new = train_run(_config(norm="ln", epochs=1, diagnostics=True), digits)
    sweep = Sweep.from_records([old, new])
    assert {run.norm for run in sweep.runs} == {"bn", "ln"}
    assert measures.ics(old) is None and measures.grad_ratio(old) is None
    assert measures.ics(new) > 0 and measures.relative_ics(new) > 0
    assert measures.grad_ratio(new) is not None
