"""`python -m ddc_hpc.visualize`: the paper's section 3.1.3 pictures of a finished run.

    python -m ddc_hpc.visualize --run RUN_DIR [--images N | --indices I ...] [--out DIR] [--layers 1 3 5]

For each chosen image of the run's validation split (the split the run evaluated on; --indices
count in it) it writes to DIR (default RUN_DIR/visualize):

* ``features_<i>.png`` — feature maps of conv layers 1, 3, 5 (main-path convolutions numbered in
  forward order, 1x1 shortcut projections not counted, each taken after its BatchNorm and ReLU;
  in a residual block the ReLU after the addition) of every sub-network fed its own tile, beside
  the same layer of the composed global network (composed_model.pt) fed the full image: its
  channel group k, cut to tile k's region of the feature map. By Theorem 2.1 they coincide except
  near tile borders inside the image, where the sub-network padded with zeros and the global
  network sees the neighbouring pixels. Titles give max |SNet - GNet-T| over the whole tile and
  over its interior (farther than the layer's receptive-field radius from such borders). One
  channel per sub-network and layer is shown: the sub-network's most active one (largest std).
* ``cam_<i>.png`` — class activation maps M = sum_n w_n X_n (X the last conv layer's output
  after BN+ReLU, w the FC weights of the predicted class), bilinearly upsampled and overlaid on
  the input: every sub-network on its tile; GNet-T before (composed_model.pt) and after training
  (model.pt); GNet-R before training — rebuilt exactly as run.py builds the baseline, with the
  global RNG seeded to run.seed + ddc_hpc.config.RANDOM_INIT_SEED_OFFSET before ``build_model`` — and after (random_model.pt).
* ``visualize.json`` — every difference and prediction shown, as numbers.

Works for networks that end in global average pooling (cnn11, the CIFAR and ImageNet ResNets).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import strategies
from .config import RANDOM_INIT_SEED_OFFSET, load_run_config
from .data import load_from_config, make_batch
from .errors import BadInput, run_serial
from .files import atomic_write
from .evaluate import load_network
from .models import build_model
from .partition import default_grid
from .plotting import pyplot

_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)


def _pair(value, dims: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims


class LayerProbe:
    """Records, in one forward pass, main-path conv layer n after its BN+ReLU and its receptive field.

    Conv layers are numbered 1, 2, ... in the order they run, skipping modules under a
    ``downsample`` (the 1x1 shortcut projections). Layer n's map is the output of the first ReLU
    module called after conv n; ``last`` is the last ReLU output of the pass (the map global
    average pooling reads). Receptive field (size, jump) in input pixels is tracked along the
    main path's convolutions and pools.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.handles = []
        for name, module in model.named_modules():
            shortcut = "downsample" in name.split(".")
            if isinstance(module, nn.modules.conv._ConvNd) and not shortcut:
                self.handles.append(module.register_forward_hook(self._on_conv))
            elif isinstance(module, _POOLS) and not shortcut:
                self.handles.append(module.register_forward_hook(self._on_pool))
            elif isinstance(module, nn.ReLU):
                self.handles.append(module.register_forward_hook(self._on_relu))
        self.reset()

    def reset(self) -> None:
        self.maps: list[torch.Tensor | None] = []  # layer n -> map (index n - 1)
        self.fields: list[tuple[float, float]] = []  # layer n -> (receptive field size, jump)
        self.rf, self.jump = 1.0, 1.0
        self.waiting = False  # a conv ran and its ReLU has not yet
        self.last = None

    def _grow(self, kernel, stride, dilation=1) -> None:
        k, s, d = kernel[0], stride[0], dilation[0]  # square kernels: the first axis stands for all
        self.rf += (k - 1) * d * self.jump
        self.jump *= s

    def _on_conv(self, module, inputs, output) -> None:
        dims = output.dim() - 2
        self._grow(_pair(module.kernel_size, dims), _pair(module.stride, dims), _pair(module.dilation, dims))
        if self.waiting:
            raise BadInput(f"conv layer {len(self.maps)} is not followed by a ReLU before the next conv: "
                           "the feature maps are defined for conv-BN-ReLU networks (cnn11, ResNets)")
        self.maps.append(None)
        self.fields.append((self.rf, self.jump))
        self.waiting = True

    def _on_pool(self, module, inputs, output) -> None:
        dims = output.dim() - 2
        stride = module.stride if module.stride is not None else module.kernel_size
        self._grow(_pair(module.kernel_size, dims), _pair(stride, dims), _pair(getattr(module, "dilation", 1), dims))

    def _on_relu(self, module, inputs, output) -> None:
        self.last = output.detach().clone()
        if self.waiting:
            self.maps[-1] = self.last
            self.waiting = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.reset()
        with torch.no_grad():
            return self.model(x)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def last_linear(model: nn.Module) -> nn.Linear:
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise BadInput("the network has no Linear layer: a class activation map needs a GAP + FC head")
    return layers[-1]


@torch.no_grad()
def class_activation_map(model: nn.Module, x: torch.Tensor) -> dict:
    """CAM of the predicted class for one input x (1, C, *spatial): M = sum_n w_n X_n, upsampled.

    Checks that the network really is X -> global average pool -> FC (else the map means nothing).
    """
    probe = LayerProbe(model)
    try:
        logits = probe(x)[0]
    finally:
        probe.close()
    features = probe.last
    fc = last_linear(model)
    if features is None or features.dim() < 3:
        raise BadInput(f"{type(model).__name__} has no conv feature map right before its classifier: class "
                       "activation maps need a network that ends in global average pooling + FC (cnn11, ResNets)")
    pooled = fc(features.mean(dim=tuple(range(2, features.dim()))))[0]
    if not torch.allclose(pooled, logits, rtol=1e-4, atol=1e-4 * max(1.0, logits.abs().max().item())):
        raise BadInput(f"{type(model).__name__} does not end in global average pooling + FC after its last "
                       "ReLU; class activation maps need such a network (cnn11, the ResNets)")
    predicted = int(logits.argmax())
    cam = torch.einsum("n,n...->...", fc.weight[predicted], features[0])
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[cam.dim()]
    upsampled = F.interpolate(cam[None, None], size=tuple(x.shape[2:]), mode=mode, align_corners=False)[0, 0]
    return {"cam": upsampled.numpy(), "map": cam.numpy(), "bias": float(fc.bias[predicted]) if fc.bias is not None
            else 0.0, "logit": float(logits[predicted]), "predicted": predicted,
            "probability": float(torch.softmax(logits, 0)[predicted])}


# ------------------------------------------------------------------------------------------ loading


def load_networks_and_data(run_dir: Path) -> dict:
    """Config, validation data and every saved network of a finished run (missing ones are None)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise BadInput(f"{run_dir} has no config.toml: pass the --out folder of a python -m ddc_hpc.run run")
    config = load_run_config(run_dir)
    if config.model.task != "classification":
        raise BadInput(f"{run_dir} is a {config.model.task} run: class activation maps need a classifier")
    K = config.decompose.partitions

    def network(name: str):
        return load_network(run_dir / name) if (run_dir / name).is_file() else (None, None)

    subnets = [network(f"subnet_{k}.pt") for k in range(K)]
    if any(net is None for net, _ in subnets):
        missing = [f"subnet_{k}.pt" for k, (net, _) in enumerate(subnets) if net is None]
        subnets = []
        if "sub" in strategies.phases(config.run.strategy):
            raise BadInput(f"{run_dir} lacks {', '.join(missing)}: the run has not finished its sub phase")
    nets = {name: network(file) for name, file in (("GNet-T before training", "composed_model.pt"),
                                                     ("GNet-T after training", "model.pt"),
                                                     ("GNet-R after training", "random_model.pt"))}
    reference = next((saved for _, saved in nets.values() if saved is not None), None)
    if reference is None:
        raise BadInput(f"{run_dir} holds no global network (composed_model.pt, model.pt, random_model.pt)")
    nets["GNet-R before training"] = (random_init(reference["spec"], config.run.seed), reference)
    splits = load_from_config(config)
    grid = config.decompose.grid or default_grid(K, len(splits.val.image_shape) - 1)
    return {"config": config, "subnets": subnets, "nets": nets, "val": splits.val, "classes": splits.classes,
            "mean": reference["mean"], "grid": tuple(grid)}


def random_init(spec: dict, seed: int) -> nn.Module:
    """GNet-R before training: the global network as run.py builds the baseline (same seed, same spec)."""
    spec = dict(spec)
    torch.manual_seed(seed + RANDOM_INIT_SEED_OFFSET)
    return build_model(spec.pop("name"), spec.pop("num_classes"), **spec).eval()


# ------------------------------------------------------------------------------------ feature maps


def _interior_mask(shape, tile, image_spatial, jump: float, rf: float) -> tuple[np.ndarray, int]:
    """Positions of a sub-network's feature map farther than the receptive-field radius from the
    tile borders that lie inside the image (at the image border both networks pad with zeros)."""
    margin = math.ceil((rf - 1) / (2 * jump)) + 1
    mask = np.ones(shape, bool)
    for axis, (s, n) in enumerate(zip(tile, image_spatial)):
        index = [slice(None)] * len(shape)
        if s.start > 0:
            index[axis] = slice(0, margin)
            mask[tuple(index)] = False
        if s.stop < n:
            index[axis] = slice(max(shape[axis] - margin, 0), None)
            mask[tuple(index)] = False
    return mask, margin


@torch.no_grad()
def feature_comparison(subnets, composed: nn.Module, x: torch.Tensor, mean, layers) -> list[dict]:
    """Layer maps of every sub-network on its tile and of the composed net's matching region.

    x is one uint8 image (1, *spatial, C). Returns, per (sub-network, layer), the two maps (the
    most active channel), their differences and whether the tile is aligned with the layer's
    sampling grid (tile offset a multiple of the jump; otherwise the region is approximate).
    """
    image_spatial = tuple(x.shape[1:-1])
    full = make_batch(x, mean=mean, tile=None, augment=False, generator=None)
    probe = LayerProbe(composed)
    try:
        probe(full)
    finally:
        probe.close()
    global_maps, global_fields = probe.maps, probe.fields
    rows = []
    for k, (net, saved) in enumerate(subnets):
        tile = tuple(saved["tile"])
        probe = LayerProbe(net)
        try:
            probe(make_batch(x, mean=mean, tile=tile, augment=False, generator=None))
        finally:
            probe.close()
        for layer in layers:
            if layer > len(probe.maps) or probe.maps[layer - 1] is None:
                raise BadInput(f"layer {layer}: the network has only {len(probe.maps)} conv layers")
            sub_map = probe.maps[layer - 1][0]
            rf, jump = probe.fields[layer - 1]
            if global_fields[layer - 1][1] != jump:
                raise BadInput(f"layer {layer}: sub-network and global network differ in stride")
            C = sub_map.shape[0]
            group = global_maps[layer - 1][0, k * C:(k + 1) * C]
            starts = [s.start / jump for s in tile]
            aligned = all(float(v).is_integer() for v in starts)
            region = tuple(slice(int(v), int(v) + n) for v, n in zip(starts, sub_map.shape[1:]))
            global_map = group[(slice(None), *region)]
            if global_map.shape != sub_map.shape:
                raise BadInput(f"layer {layer}: tile {k}'s region {region} does not fit the global feature "
                               f"map {tuple(group.shape[1:])}")
            diff = (sub_map - global_map).abs()
            mask, margin = _interior_mask(tuple(sub_map.shape[1:]), tile, image_spatial, jump, rf)
            channel = int(sub_map.flatten(1).std(dim=1).argmax())
            rows.append({
                "subnet": k, "layer": layer, "channel": channel, "tile": [[s.start, s.stop] for s in tile],
                "stride": jump, "receptive_field": rf, "margin": margin, "aligned": aligned,
                "max_abs_diff": float(diff.max()),
                "max_abs_diff_interior": float(diff[:, torch.from_numpy(mask)].max()) if mask.any() else None,
                "max_abs_value": float(sub_map.abs().max()),
                "sub_map": sub_map[channel].numpy(), "global_map": global_map[channel].numpy(),
                "diff_map": diff[channel].numpy(),
            })
    return rows


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def features_figure(rows, layers, path: Path, title: str) -> None:
    plt = pyplot()
    K = max(r["subnet"] for r in rows) + 1
    columns = 3 * len(layers)
    fig, axes = plt.subplots(K, columns, figsize=(1.9 * columns, 2.2 * K + 0.9), squeeze=False)
    for r in rows:
        j = 3 * layers.index(r["layer"])
        k = r["subnet"]
        vmax = max(float(r["sub_map"].max()), float(r["global_map"].max()), 1e-12)
        vmin = min(float(r["sub_map"].min()), float(r["global_map"].min()))
        panels = ((r["sub_map"], f"SNet-{k} layer {r['layer']} ch {r['channel']}", "viridis", vmin, vmax),
                  (r["global_map"], f"GNet-T group {k} ch {r['channel']}" + ("" if r["aligned"] else " (misaligned)"),
                   "viridis", vmin, vmax),
                  (r["diff_map"], f"|diff| max {_fmt(r['max_abs_diff'])}\ninterior {_fmt(r['max_abs_diff_interior'])}",
                   "magma", 0.0, None))
        for ax, (image, label, cmap, lo, hi) in zip(axes[k, j:j + 3], panels):
            ax.imshow(image, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_title(label, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- CAMs


def _overlay(ax, image: np.ndarray, cam: np.ndarray, label: str) -> None:
    span = float(cam.max() - cam.min())
    ax.imshow(image)
    ax.imshow((cam - cam.min()) / span if span > 0 else np.zeros_like(cam), cmap="jet", alpha=0.45,
              vmin=0, vmax=1)
    ax.set_title(label, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def cams_figure(image: np.ndarray, label: str, global_cams: dict, sub_cams: list, tiles, grid, path: Path,
                title: str) -> None:
    """Top: the image with its tiles and the global networks' CAMs; below: the SNets' CAMs on their
    tiles, laid out as the tile grid."""
    plt = pyplot()
    from matplotlib.patches import Rectangle

    top = 1 + len(global_cams)
    rows, cols = (grid[0], int(np.prod(grid[1:]))) if sub_cams else (0, 1)
    width = max(top, cols)
    fig = plt.figure(figsize=(2.3 * width, 2.5 * (1 + rows) + 0.5))
    ax = fig.add_subplot(1 + rows, width, 1)
    ax.imshow(image)
    for tile in tiles:
        (r0, r1), (c0, c1) = [(s.start, s.stop) for s in tile[:2]]
        ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, lw=0.8, ec="white"))
    ax.set_title(f"image: {label}\n(tiles in white)", fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    for i, (name, cam) in enumerate(global_cams.items()):
        _overlay(fig.add_subplot(1 + rows, width, 2 + i), image, cam["cam"],
                 f"{name}\n{cam['class']} (p {cam['probability']:.2f})")
    for k, (cam, tile) in enumerate(zip(sub_cams, tiles)):
        r, c = divmod(k, cols)
        _overlay(fig.add_subplot(1 + rows, width, (1 + r) * width + c + 1), image[tuple(tile[:2])], cam["cam"],
                 f"SNet-{k} on its tile\n{cam['class']} (p {cam['probability']:.2f})")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main


def visualize(run_dir: Path, indices, out: Path, layers=(1, 3, 5)) -> dict:
    """Write the feature-map and CAM figures of `indices` (validation split) and visualize.json."""
    layers = list(layers)
    if not layers or min(layers) < 1:
        raise BadInput(f"--layers must be conv layer numbers >= 1, got {layers}")
    run = load_networks_and_data(run_dir)
    val, mean, classes = run["val"], run["mean"], run["classes"]
    bad = [i for i in indices if not 0 <= i < len(val)]
    if bad:
        raise BadInput(f"image index {bad[0]} is outside the validation split (0..{len(val) - 1})")
    if len(val.image_shape) != 3:
        raise BadInput(f"visualize draws 2D images; this run's samples have shape {val.image_shape}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInput(f"cannot create the output folder {out} ({err.strerror}); choose another --out") from None
    tiles = [tuple(saved["tile"]) for _, saved in run["subnets"]]
    composed = run["nets"]["GNet-T before training"][0]
    name = Path(run_dir).resolve().name
    summary = {"run": str(run_dir), "layers": layers, "images": [], "features": [], "cams": []}
    for i in indices:
        pixels, labels = val.read([i])
        label = classes[int(labels[0])]
        summary["images"].append({"index": i, "label": label})
        image = pixels[0].numpy()
        if image.shape[-1] == 1:
            image = image[..., 0]
        if run["subnets"] and composed is not None:
            rows = feature_comparison(run["subnets"], composed, pixels, mean, layers)
            worst = max(r["max_abs_diff"] for r in rows)
            inner = [r["max_abs_diff_interior"] for r in rows if r["max_abs_diff_interior"] is not None]
            features_figure(rows, layers, out / f"features_{i}.png",
                            f"{name}, image {i} ({label}): conv layers {', '.join(map(str, layers))} after BN+ReLU, "
                            f"SNet-k on tile k vs GNet-T (composed, not trained) on the full image, channel "
                            f"group k\nmax |SNet - GNet-T| = {worst:.3g} over the tiles, "
                            f"{max(inner) if inner else float('nan'):.3g} away from interior tile borders")
            summary["features"] += [{"image": i, **{k: v for k, v in r.items() if not k.endswith("_map")}}
                                    for r in rows]
        global_cams = {}
        for net_name in ("GNet-T before training", "GNet-T after training", "GNet-R before training",
                         "GNet-R after training"):
            net = run["nets"][net_name][0]
            if net is None:
                continue
            cam = class_activation_map(net, make_batch(pixels, mean=mean, tile=None, augment=False, generator=None))
            global_cams[net_name] = cam | {"class": classes[cam["predicted"]]}
        sub_cams = []
        for k, (net, saved) in enumerate(run["subnets"]):
            cam = class_activation_map(net, make_batch(pixels, mean=mean, tile=tiles[k], augment=False, generator=None))
            sub_cams.append(cam | {"class": classes[cam["predicted"]]})
        cams_figure(image, label, global_cams, sub_cams, tiles, run["grid"], out / f"cam_{i}.png",
                    f"{name}, image {i}: class activation maps of the predicted class")
        for net_name, cam in [*global_cams.items(), *((f"SNet-{k}", c) for k, c in enumerate(sub_cams))]:
            summary["cams"].append({"image": i, "network": net_name, "predicted": cam["predicted"],
                                    "class": cam["class"], "probability": cam["probability"], "label": label})
    atomic_write(out / "visualize.json", json.dumps(summary, indent=1).encode())
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ddc_hpc.visualize",
                                     description="Feature maps and class activation maps of a finished run "
                                                 "(paper section 3.1.3).")
    parser.add_argument("--run", required=True, help="a finished run directory (the --out of ddc_hpc.run)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--images", type=int, default=4, help="the first N images of the validation split (4)")
    which.add_argument("--indices", type=int, nargs="+", help="these images of the validation split")
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 3, 5],
                        help="conv layers to show, numbered in forward order (1 3 5)")
    parser.add_argument("--out", help="output folder (default: RUN_DIR/visualize)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.run) / "visualize"
    indices = args.indices if args.indices is not None else list(range(max(args.images, 0)))
    run_serial(lambda: _print_summary(visualize(Path(args.run), indices, out, args.layers), out))


def _print_summary(summary: dict, out: Path) -> None:
    print(f"{len(summary['images'])} image(s) -> {out}: features_<i>.png, cam_<i>.png, visualize.json")
    for layer in summary["layers"]:
        rows = [r for r in summary["features"] if r["layer"] == layer]
        if rows:
            inner = [r["max_abs_diff_interior"] for r in rows if r["max_abs_diff_interior"] is not None]
            print(f"  layer {layer}: max |SNet - GNet-T| {max(r['max_abs_diff'] for r in rows):.3g} over the tiles, "
                  f"{max(inner) if inner else float('nan'):.3g} in their interiors "
                  f"(largest value {max(r['max_abs_value'] for r in rows):.3g})")

if __name__ == "__main__":
    main()
