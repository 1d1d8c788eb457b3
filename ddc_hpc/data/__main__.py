"""``python -m ddc_hpc.data import KIND SOURCE OUT.h5`` and ``python -m ddc_hpc.data info FILE.h5``.

Exit codes: 0 done, 2 bad input (a one-paragraph message, no traceback), 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ..errors import BadInput


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ddc_hpc.data",
                                description="Import image data sets into ddc_hpc's HDF5 format and inspect them.")
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="copy a data set into one HDF5 file (atomically)",
                         description="KIND is npz, cifar10, cifar100, food101, imagefolder, h5, synthetic, "
                                     "synthetic1d or synthetic3d. SOURCE is a file (npz, h5), a folder (torchvision "
                                     "root for cifar10/cifar100/food101, class-per-folder tree for imagefolder), or "
                                     "synthetic options such as n=5000,seed=1 (target=regression for regression "
                                     "targets).")
    imp.add_argument("kind")
    imp.add_argument("source")
    imp.add_argument("out", help="the HDF5 file to write, e.g. data/cifar10.h5")
    imp.add_argument("--size", type=int, default=None,
                     help="food101/imagefolder: resize the shorter side and center-crop to SIZE x SIZE "
                          "(food101 default 224; imagefolder default: keep, all images must match)")
    imp.add_argument("--download", action="store_true",
                     help="cifar10/cifar100/food101: download into SOURCE first (needs internet)")
    imp.add_argument("--compression", choices=("none", "gzip", "lzf"), default="none")
    imp.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                     help="threads decoding image files (food101, imagefolder)")
    imp.add_argument("--classes", default=None,
                     help="comma-separated class names, replacing the source's (e.g. for an npz without names)")
    imp.add_argument("--force", action="store_true", help="replace OUT if it exists")
    imp.add_argument("--task", choices=("auto", "classification", "regression"), default="auto",
                     help="what an npz's y holds: class indices or regression targets (stored float32); "
                          "auto: float values that are not all whole numbers, or several per sample, are targets")
    info = sub.add_parser("info", help="print shape, classes and counts per class of a file "
                                       "(target statistics for regression files)")
    info.add_argument("file")
    info.add_argument("--verify", action="store_true", help="recompute the content checksum")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from .importers import describe, format_info, import_dataset

    try:
        if args.command == "import":
            t = time.perf_counter()
            classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
            out = import_dataset(args.kind, args.source, args.out, size=args.size, download=args.download,
                                 compression=None if args.compression == "none" else args.compression,
                                 workers=args.workers, classes=classes, force=args.force,
                                 task=None if args.task == "auto" else args.task)
            print(f"wrote {out} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            print(format_info(describe(out)))
        else:
            result = describe(args.file, verify=args.verify)
            print(json.dumps(result, indent=2) if args.json else format_info(result))
            if args.verify and not result["checksum_verified"]:
                print(f"error: {args.file}: content does not match its checksum", file=sys.stderr)
                return 1
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (nothing written under the final name)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
