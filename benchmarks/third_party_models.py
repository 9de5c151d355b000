"""Third-party models through replace_norms, freeze and fold: the model x operation table.

For each model (timm's and torchvision's norm classes in models shaped like theirs, from
tests/thirdparty_standins.py; Hugging Face models built from tiny configs with random
weights, from tests/huggingface_models.py), in float32 on the CPU:

- **matching kind**: the largest |difference| between the model and its copy swapped to
  the kind that computes what its norms compute (their own eps and options carried), over
  train- and eval-mode outputs and the input's and parameters' gradients;
- **every other kind**: how many of normlab's canonical kinds replace every norm and train
  one SGD step to finite outputs;
- **freeze, fold**: the largest |difference| of eval outputs after ``inference.freeze`` and
  ``inference.fold_batchnorm``. A model without batch norms is first swapped to ``bn`` and
  run 3 training forwards, so that there are running statistics to freeze and fold.

    python benchmarks/third_party_models.py [--json FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

import normlab as nl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import thirdparty_standins as tp
from model_parity import max_difference, sgd_step, swap_options
from spec import CANONICAL_KINDS

Model = tuple[nn.Module, torch.Tensor, str | None, dict, list[str]]


def _models() -> dict[str, Model]:
    """Each model, its input, its matching kind (None: it mixes kinds) with its options, and
    the layers instance norm must leave out (a layer norm on pooled (N, C) features: no
    positions to normalize)."""
    models = {}
    for name, (build, kind, options) in tp.MODELS.items():
        torch.manual_seed(0)
        images = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        models[f"{name} (stand-in)"] = (tp.randomized(build()), images, kind, options, [])
    try:
        import huggingface_models as hf
    except ImportError:
        print("transformers does not import: the Hugging Face models are left out")
        return models
    for name in hf.MODELS:
        model, x = hf.model_and_input(name)
        pooled = ["model.layernorm"] if name in hf.IMAGE_MODELS - {"vit"} else []
        models[f"HF {name}"] = (model, x, hf.MATCHING[name], {}, pooled)
    return models


def _trains(model: nn.Module, x: torch.Tensor, kind: str, pooled: list[str]) -> bool:
    options = swap_options(kind)
    if kind == "in" and pooled:
        options["exclude"] = pooled
    try:
        nl.replace_norms(model, kind, example_input=x, **options)
        loss = sgd_step(model, x)
        return bool(torch.isfinite(loss) and torch.isfinite(model.eval()(x)).all())
    except ValueError as error:
        print(f"  {kind}: {str(error).splitlines()[0]}")
        return False


def _freeze_and_fold(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    if not any(nl.inference.batch_norm_layers(model)) and not any(
        nl.swap.is_norm_layer(m) and getattr(m, "running_mean", None) is not None
        for m in model.modules()
    ):
        nl.replace_norms(model, "bn", example_input=x)
        with torch.no_grad():
            for _ in range(3):
                model.train()(x)
    model.eval()
    with torch.no_grad():
        expected = model(x)
        frozen = nl.inference.freeze(copy.deepcopy(model))(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # norms that follow no Linear/Conv are listed
            folded = nl.inference.fold_batchnorm(copy.deepcopy(model))(x)
    return (frozen - expected).abs().max().item(), (folded - expected).abs().max().item()


def _cell(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.2g}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, (model, x, kind, options, pooled) in _models().items():
        print(name)
        matching = None
        if kind is not None:
            swapped = copy.deepcopy(model)
            nl.replace_norms(swapped, kind, example_input=x, **options)
            matching = max_difference(model, swapped, x)
        others = [k for k in CANONICAL_KINDS if k != kind]
        trained = sum(_trains(copy.deepcopy(model), x, k, pooled) for k in others)
        frozen, folded = _freeze_and_fold(copy.deepcopy(model), x)
        rows.append(
            {
                "model": name,
                "matching kind": kind or "mixed",
                "matching max |diff|": matching,
                "other kinds train": f"{trained}/{len(others)}",
                "freeze max |diff|": frozen,
                "fold max |diff|": folded,
            }
        )
    header = list(rows[0])
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        cells = [_cell(value) for value in row.values()]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
