"""`python -m ddc_hpc.info`: parameters and FLOPs of a global network and one sub-network,
the paper's Tables 2.2 / 3.1 / 3.4.

    python -m ddc_hpc.info --model cifar_resnet32 --partitions 4 --input-size 32 --tile-size 20
    python -m ddc_hpc.info --model resnet3d --partitions 8 --input-size 32        (2x2x2 grid of 16^3)
    python -m ddc_hpc.info --model mlp --partitions 4 --input-size 1024           (in_features 1024)

Sizes are per spatial axis: N (every axis), HxW or DxHxW; for an mlp the feature vector's length,
for the recurrent nets the number of time steps.

Models are built on the meta device, so even VGG16 costs no memory and no arithmetic.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from .models import build_model, input_options, model_defaults
from .partition import default_grid, tile_shape, tile_slices_nd
from .sizes import count_flops, count_params


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, like every other bad input
        self.exit(2, f"{self.prog}: error: {message}\n")


def _size(text: str) -> tuple[int, ...]:
    """'32' -> (32,); '112x56' -> (112, 56); '16x32x32' -> (16, 32, 32)."""
    try:
        parts = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N, HxW or DxHxW, got {text!r}") from None
    if len(parts) > 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected N, HxW or DxHxW with positive sizes, got {text!r}")
    return parts


def _axes(name: str, size: tuple[int, ...] | None, dims: int, what: str) -> tuple[int, ...] | None:
    """A size for each of the model's `dims` spatial axes (N means N on every axis)."""
    if size is None or len(size) == dims:
        return size
    if len(size) == 1:
        return size * dims
    expected = {1: "N", 2: "N or HxW", 3: "N or DxHxW"}[dims]
    raise ValueError(f"{what} {'x'.join(map(str, size))}: {name} has {dims} spatial axes, expected {expected}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m ddc_hpc.info", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a name from ddc_hpc.model_names()")
    parser.add_argument("--partitions", type=int, default=4, help="K sub-networks (default 4)")
    parser.add_argument("--input-size", type=_size,
                        help="global input per spatial axis, N, HxW or DxHxW (default: the model's)")
    parser.add_argument("--tile-size", type=_size,
                        help="sub-network input (default: a tile of the non-overlapping default grid, "
                             "input/2 for K=4)")
    parser.add_argument("--num-classes", type=int, help="default: 10 for CIFAR models, 1000 for ImageNet ones")
    parser.add_argument("--width", type=int, help="base width (default: the model's, 64)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _meta_model(name: str, num_classes: int, partitions: int, size: tuple[int, ...] | None, width: int | None):
    options = {} if width is None else {"width": width}
    if size is not None:
        options.update(input_options(name, size))
    with torch.device("meta"):
        return build_model(name, num_classes, partitions, **options)


def _measure(name: str, num_classes: int, partitions: int, size: tuple[int, ...], width: int | None) -> dict:
    model = _meta_model(name, num_classes, partitions, size, width)
    in_channels = model.ddc_spec.get("in_channels", 3)
    return {"params": count_params(model), "flops": count_flops(model, (in_channels, *size))}


def sizes(name: str, partitions: int, input_size: tuple[int, ...] | None = None,
          tile_size: tuple[int, ...] | None = None, num_classes: int | None = None, width: int | None = None) -> dict:
    """{"global": {"params", "flops"}, "sub": {...}} plus the resolved settings.

    Sizes are per spatial axis (one int broadcasts to all); the default tile is one of the
    non-overlapping default grid's (2x2 for K=4 on images, 2x2x2 for K=8 on volumes, K segments in 1D).
    """
    defaults = model_defaults(name)
    num_classes = num_classes or defaults["num_classes"]
    _meta_model(name, num_classes, partitions, None, width)  # a K the widths refuse is the first thing to say
    dims = defaults["dims"]
    input_size = _axes(name, input_size, dims, "input size") or (defaults["input_size"],) * dims
    tile_size = _axes(name, tile_size, dims, "tile size") or tile_shape(
        tile_slices_nd(input_size, default_grid(partitions, dims)))
    return {
        "global": _measure(name, num_classes, 1, input_size, width),
        "sub": _measure(name, num_classes, partitions, tile_size, width),
        "model": name, "partitions": partitions, "num_classes": num_classes,
        "input_size": list(input_size), "tile_size": list(tile_size),
    }


def _table(report: dict) -> str:
    g, s = report["global"], report["sub"]
    header = (f"{report['model']}, {report['num_classes']} classes, K={report['partitions']}: global "
              f"{'x'.join(map(str, report['input_size']))}, sub-network {'x'.join(map(str, report['tile_size']))}")
    rows = [f"{'':8}{'params':>14}{'GFLOPs':>12}",
            f"{'global':8}{g['params']:>14,}{g['flops'] / 1e9:>12.4g}",
            f"{'sub':8}{s['params']:>14,}{s['flops'] / 1e9:>12.4g}",
            f"{'ratio':8}{g['params'] / s['params']:>14.2f}{g['flops'] / s['flops']:>12.2f}"]
    return "\n".join([header, *rows])


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        report = sizes(args.model, args.partitions, args.input_size, args.tile_size, args.num_classes, args.width)
    except ValueError as error:
        parser.error(str(error))
    print(json.dumps(report) if args.json else _table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
