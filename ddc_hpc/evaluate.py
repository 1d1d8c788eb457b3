"""`python -m ddc_hpc.evaluate`: top-1/top-5 accuracy of a saved network on a dataset.

    python -m ddc_hpc.evaluate --checkpoint runs/x/model.pt --data h5:cifar10.h5 [--json]   # its test split
    python -m ddc_hpc.evaluate --checkpoint runs/x/composed_model.pt --run runs/x   # its val split

Works for model.pt, composed_model.pt, random_model.pt and subnet_<k>.pt (fed its own tile).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
from pathlib import Path

import torch

from .checkpoint import load_torch
from .config import ModelConfig, load_run_config
from .data import load_dataset, load_from_config, resolve_source, same_data, source_identity, split_options
from .errors import BadInput, run_serial
from .models import build_model
from .train import PhaseData, Task, evaluate


def load_network(path: Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild a network saved by ddc_hpc.run from its spec and weights."""
    try:
        saved = load_torch(path)
        spec = dict(saved["spec"])
        model = build_model(spec.pop("name"), spec.pop("num_classes"), **spec)
        model.load_state_dict(saved["state_dict"])
    except FileNotFoundError:
        raise BadInput(f"checkpoint {path} does not exist") from None
    except (KeyError, TypeError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise BadInput(f"{path} is not a network saved by ddc_hpc.run ({type(err).__name__}: {err})") from None
    return model.eval(), saved


def _trained_on(source: str, saved: dict) -> bool:
    """Whether `source` (relative paths from here) is the data the network was trained on: the
    same content digest or resolved path as the run recorded (source_identity). Networks saved
    before runs recorded it: the run's source string, its relative path taken from here."""
    trained = saved.get("source") or source_identity(saved["config"]["data"]["source"])
    return same_data(source_identity(source), trained)


def scored_sets(source: str, saved: dict, classes: int, task: Task) -> tuple[list, str, str]:
    """What `--data` scores, and how to say it: the source's test split; on the model's own training
    data without one, the split it scored (the validation split it held out, or a tuning trial's
    tuning split: the run's data.split_seed, val_fraction and tuning_size), never the samples it was
    trained on; on other data, every sample. Data shaped unlike the model's training samples is
    refused (BadInput)."""
    trained = saved["config"]
    options = split_options(trained["data"], trained["run"])
    splits = load_dataset(source, num_classes=classes, val_fraction=trained["data"]["val_fraction"], task=task.name,
                          **options)
    shape, expected = splits.train.image_shape, saved.get("sample_shape")
    channels = saved["spec"].get("in_channels")
    if (expected is not None and tuple(expected) != shape) or (channels is not None and shape[-1] != channels):
        raise BadInput(f"{source} holds samples of shape {shape} but the network was trained on "
                       f"{tuple(expected) if expected else f'{channels}-channel'} samples of {trained['data']['source']}; "
                       "its score there would mean nothing: evaluate it on data shaped like its training data "
                       "(or --run RUN_DIR for the run's own validation split)")
    if splits.held_out == "test":
        return [splits.val], "test", f"the test split of {source}"
    if _trained_on(source, saved):
        return [splits.val], splits.held_out, (
            f"the {splits.held_out} split the run {'held out' if splits.held_out == 'validation' else 'scored'} (split "
            f"seed {options['seed']}, val_fraction {trained['data']['val_fraction']}, tuning_size "
            f"{options['tuning_size']}); the other {len(splits.train)} training samples are not scored")
    return [splits.train, splits.val], "all", (
        f"every sample of {source} (it has no test split); the network was trained on "
        f"{trained['data']['source']}, a different source")


def score(checkpoint: Path, data: str | None = None, run: str | None = None, batch_size: int = 256) -> tuple[dict, str]:
    """({"top1", "top5" (regression: "mae", "rmse"), "n", "split"}, what was scored) of a saved network:
    on `data`'s test split (its own training data: the held-out split), or on the run dir `run`'s own
    validation split. In-process: a study scores many networks without an interpreter start each."""
    model, saved = load_network(Path(checkpoint))
    classes = saved["spec"]["num_classes"]
    model_config = ModelConfig(**saved["config"]["model"])
    task = Task(model_config.task, model_config.loss_name)
    if run:
        config = load_run_config(run)
        started_in = (saved.get("source") or {}).get("started_in")  # its relative paths start there
        config = dataclasses.replace(config, data=dataclasses.replace(
            config.data, source=resolve_source(config.data.source, started_in)))
        splits = load_from_config(config)
        sets, split, what = [splits.val], splits.held_out, f"the {splits.held_out} split of the run {run}"
    else:
        sets, split, what = scored_sets(data, saved, classes, task)
    keys = ("val_accuracy", "val_top5") if task.name == "classification" else ("val_mae", "val_rmse")
    names = ("top1", "top5") if task.name == "classification" else ("mae", "rmse")
    sums, n = dict.fromkeys(names, 0.0), 0
    for images in sets:
        phase_data = PhaseData(train=images, val=images, mean=saved["mean"], tile=saved["tile"], augment=False)
        m = evaluate(model, phase_data, torch.device("cpu"), task, batch_size=batch_size)
        for name, key in zip(names, keys):
            sums[name] += m[key] ** (2 if name == "rmse" else 1) * m["val_samples"]
        n += m["val_samples"]
    result = {name: (value / n) ** (0.5 if name == "rmse" else 1) for name, value in sums.items()}
    return result | {"n": n, "split": split}, what


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ddc_hpc.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="model.pt, composed_model.pt, subnet_<k>.pt ...")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="a dataset (npz:PATH, h5:PATH, cifar10:ROOT, ...): its test split; on the "
                        "model's own training data without one, the validation split it held out; else every sample")
    source.add_argument("--run", help="a run directory: its own validation split (same seed and fraction)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json", action="store_true", help='print {"top1": .., "top5": .., "n": ..} (regression: mae, rmse)')
    args = parser.parse_args(argv)

    def evaluate_checkpoint() -> None:
        result, what = score(Path(args.checkpoint), args.data, args.run, args.batch_size)
        if args.json:
            print(json.dumps(result))
        else:
            print(f"{args.checkpoint}: " + "  ".join(f"{k} {v:.4f}" for k, v in result.items() if k not in ("n", "split"))
                  + f"  on {result['n']} samples: {what}")

    run_serial(evaluate_checkpoint)


if __name__ == "__main__":
    main()
