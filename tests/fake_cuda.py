"""A fake CUDA device for CPU-only machines: tensors on `cuda:0` with shapes, dtypes and devices but
no data (torch's FakeTensorMode), so a CPU tensor meeting a CUDA one raises
FakeTensorDeviceMismatchError exactly where a real GPU run would stop with a device error.

    with fake_cuda() as cuda:
        with torch.device(cuda):            # only to BUILD what a GPU run puts on the device
            net = build_model(...)
        ... code under test, outside that context, given `cuda` explicitly ...

Keep the code under test out of `with torch.device(cuda)`: that context sends every factory call
without a device (`torch.tensor(1.0)`) to the GPU, hiding the very mistakes this is for.

What a CPU-only build cannot do under the mode is replaced, each in a way that keeps
the device check sound (tests/test_fake_cuda.py's docstring has the long form):
- `Tensor.backward()` (the autograd engine asks the CUDA driver for a context: "hasPrimaryContext
  expects a valid device index", pytorch issue 92627): every leaf the loss depends on (the
  AccumulateGrad nodes of its graph) gets a fake gradient of its own device, dtype and shape, which
  is what the engine guarantees (it refuses a gradient on another device than its input's);
- reading a value (`.item()`, `bool()`, `float()`: aten._local_scalar_dense) has no data to read:
  it gives 0 (a count, a loss) or True (a finiteness test), unless FakeTensorMode knows the value
  (a tensor made from Python numbers, as Adam's step count, or a real one-element tensor brought
  in, as a checkpoint's step count). Reading a value is legal on any device;
- `copy.deepcopy` of a tensor (torch's reads the fake's data pointer and corrupts the heap) and
  CUDA's fused GRU step (no fake kernel) are given by hand, on the device of their inputs;
- `pin_memory()` (not implemented for fake tensors) returns the CPU tensor: the copy is still made
  from host memory, so the devices a run sees are the same;
- GradScaler("cuda") and CUDA autocast stay enabled (torch.cuda.amp.common.amp_definitely_not_available
  is False; the device supports bf16, as an A100 or H100 does),
  and `torch.cuda.synchronize(device)` (no driver to wait for) only checks it is given a CUDA device;
- cuDNN is off: a recurrent layer on CUDA asks the driver whether cuDNN takes it, and without cuDNN
  torch runs it as plain ops on the same tensors (the devices are the input's either way).
"""

from __future__ import annotations

from contextlib import contextmanager
from unittest import mock

import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorConverter, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

CUDA = torch.device("cuda", 0)


class _NoData(TorchDispatchMode):
    """What FakeTensorMode cannot answer without data or a driver: a value read into Python
    (aten._local_scalar_dense) is a neutral value, a pinned copy (aten._pin_memory) is the CPU
    tensor itself (pinned memory is host memory: the device a copy lands on is the CPU's)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            try:  # a tensor made from Python numbers (Adam's step count) keeps its value
                return func(*args, **(kwargs or {}))
            except DataDependentOutputException:
                dtype = args[0].dtype
                return True if dtype == torch.bool else 0.0 if dtype.is_floating_point else 0
        if func is torch.ops.aten._thnn_fused_gru_cell.default:
            return _gru_cell(*args, **(kwargs or {}))
        if func is torch.ops.aten._pin_memory.default:
            assert args[0].device.type == "cpu", "pin_memory of a tensor that is not on the CPU"
            return args[0]
        return func(*args, **(kwargs or {}))


def leaves(loss: torch.Tensor) -> list[torch.Tensor]:
    """The tensors whose .grad a backward of `loss` fills: the AccumulateGrad nodes of its graph."""
    found, seen, todo = {}, set(), [loss.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            found[id(node.variable)] = node.variable
        todo += [parent for parent, _ in node.next_functions]
    return list(found.values())


def fake_backward(self: torch.Tensor, gradient=None, *args, **kwargs) -> None:
    """loss.backward() without the autograd engine: each leaf gets a gradient on its own device
    (accumulated as the engine does). The loss must be a scalar on a device, as backward needs."""
    assert self.requires_grad and (gradient is not None or self.numel() == 1), "backward of a non-scalar"
    for leaf in leaves(self):
        grad = torch.ones_like(leaf)  # same device, dtype, shape and layout as the leaf
        leaf.grad = grad if leaf.grad is None else leaf.grad + grad


def _deepcopy(self: torch.Tensor, memo: dict) -> torch.Tensor:
    """copy.deepcopy of a fake tensor (torch's own reads its data pointer and corrupts the heap):
    a clone, on the same device, in the same layout."""
    if id(self) not in memo:
        memo[id(self)] = self.detach().clone().requires_grad_(self.requires_grad)
    return memo[id(self)]


def _gru_cell(input_gates, hidden_gates, hx, input_bias=None, hidden_bias=None):
    """aten._thnn_fused_gru_cell (CUDA's fused GRU step without cuDNN), which has no fake kernel:
    the new hidden state and the workspace, on the device of its inputs, which must share one."""
    devices = {t.device for t in (input_gates, hidden_gates, hx, input_bias, hidden_bias) if t is not None}
    assert len(devices) == 1, f"_thnn_fused_gru_cell on {sorted(map(str, devices))}"
    return torch.empty_like(hx), input_gates.new_empty(hx.shape[0], 5 * hx.shape[1])


_from_real_tensor = FakeTensorConverter.from_real_tensor


def _keeping_scalars(self, fake_mode, t, make_constant=False, *args, **kwargs):
    """FakeTensorConverter.from_real_tensor that keeps the value of a real one-element tensor
    (a checkpoint's Adam step count read from disk), as a tensor made under the mode keeps it."""
    return _from_real_tensor(self, fake_mode, t, make_constant or t.numel() == 1, *args, **kwargs)


def _synchronize(device=None) -> None:
    assert device is None or torch.device(device).type == "cuda", f"torch.cuda.synchronize({device})"


@contextmanager
def fake_cuda():
    """The fake CUDA device (see the module docstring); yields torch.device('cuda', 0)."""
    with FakeTensorMode(allow_non_fake_inputs=True), _NoData(), \
            mock.patch.object(torch.Tensor, "backward", fake_backward), \
            mock.patch.object(torch.Tensor, "__deepcopy__", _deepcopy), \
            mock.patch.object(FakeTensorConverter, "from_real_tensor", _keeping_scalars), \
            mock.patch("torch.cuda.amp.common.amp_definitely_not_available", return_value=False), \
            mock.patch("torch.cuda.is_bf16_supported", return_value=True), \
            mock.patch("torch.cuda.synchronize", _synchronize), torch.backends.cudnn.flags(enabled=False):
        yield CUDA
