"""`python -m ddc_hpc.evaluate`: top-1/top-5 accuracy of a saved network on a dataset.

    python -m ddc_hpc.evaluate --checkpoint runs/x/model.pt --data h5:cifar10.h5 [--json]
    python -m ddc_hpc.evaluate --checkpoint runs/x/composed_model.pt --run runs/x   # its val split

Works for model.pt, composed_model.pt, random_model.pt and subnet_<k>.pt (fed its own tile).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from . import comm
from .config import ModelConfig, load_config
from .data import load_dataset
from .errors import BadInput
from .models import build_model
from .train import PhaseData, Task, evaluate


def load_network(path: Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild a network saved by ddc_hpc.run from its spec and weights."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        spec = dict(saved["spec"])
        model = build_model(spec.pop("name"), spec.pop("num_classes"), **spec)
        model.load_state_dict(saved["state_dict"])
    except FileNotFoundError:
        raise BadInput(f"checkpoint {path} does not exist") from None
    except (KeyError, TypeError, RuntimeError, EOFError, ValueError) as err:
        raise BadInput(f"{path} is not a network saved by ddc_hpc.run ({type(err).__name__}: {err})") from None
    return model.eval(), saved


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ddc_hpc.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="model.pt, composed_model.pt, subnet_<k>.pt ...")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="every sample of a dataset: npz:PATH, h5:PATH, cifar10:ROOT, ...")
    source.add_argument("--run", help="a run directory: its own validation split (same seed and fraction)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json", action="store_true", help='print {"top1": .., "top5": .., "n": ..} (regression: mae, rmse)')
    args = parser.parse_args(argv)

    def evaluate_checkpoint() -> None:
        model, saved = load_network(Path(args.checkpoint))
        classes = saved["spec"]["num_classes"]
        model_config = ModelConfig(**saved["config"]["model"])
        task = Task(model_config.task, model_config.loss_name)
        if args.run:
            config = load_config(Path(args.run) / "config.toml")
            splits = load_dataset(config.data.source, num_classes=classes, val_fraction=config.data.val_fraction,
                                  seed=config.run.seed, limit=config.data.limit or None, task=task.name)
            sets = [splits.val]
        else:
            splits = load_dataset(args.data, num_classes=classes, val_fraction=0.5, seed=0, task=task.name)
            sets = [splits.train, splits.val]
        keys = ("val_accuracy", "val_top5") if task.name == "classification" else ("val_mae", "val_rmse")
        names = ("top1", "top5") if task.name == "classification" else ("mae", "rmse")
        sums, n = dict.fromkeys(names, 0.0), 0
        for images in sets:
            data = PhaseData(train=images, val=images, mean=saved["mean"], tile=saved["tile"], augment=False)
            m = evaluate(model, data, torch.device("cpu"), task, batch_size=args.batch_size)
            for name, key in zip(names, keys):
                sums[name] += m[key] ** (2 if name == "rmse" else 1) * m["val_samples"]
            n += m["val_samples"]
        result = {name: (value / n) ** (0.5 if name == "rmse" else 1) for name, value in sums.items()} | {"n": n}
        if args.json:
            print(json.dumps(result))
        else:
            print(f"{args.checkpoint}: " + "  ".join(f"{k} {v:.4f}" for k, v in result.items() if k != "n")
                  + f"  on {n} samples")

    comm.run_guarded(evaluate_checkpoint)


if __name__ == "__main__":
    main()
