"""Recurrent networks (paper section 2.4, eq. 2.29): `rnn` (Elman, tanh), `gru`, `lstm`.

A stack of `num_layers` recurrent layers of `width` hidden units (nn.RNN / nn.GRU / nn.LSTM) and a
linear classifier on the last time step's hidden state (`readout="last"`) or its mean over time
(`readout="mean"`).  A sub-network has width/K hidden units: composition splits the hidden state
into K groups, the input-to-hidden weight W_ih takes the sub-networks' rows (block rows for the
first layer, block-diagonal above it), W_hh is block-diagonal, and every gate block (3 for GRU, 4
for LSTM) is composed separately, so group k of the global hidden state equals sub-network k's at
every time step and the logits are the sum of the sub-networks' logits.

Input: (N, F, T) with F = `in_channels` features per step, channels first like a 1D signal, which
is what the data pipeline delivers for (T, F) samples; `layout="NTF"` takes (N, T, F) instead.
The length T is free.  `hidden_states(x)` returns the top layer's hidden state at every step
(N, T, H) and the last hidden state of every layer (num_layers, N, H).
"""

from __future__ import annotations

import torch
from torch import nn

from . import register
from ._common import split_width

_CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
_READOUTS = ("last", "mean")
_LAYOUTS = ("NFT", "NTF")


@register("rnn", cell="rnn")
@register("gru", cell="gru")
@register("lstm", cell="lstm")
class RecurrentNet(nn.Module):
    default_num_classes = 10
    default_input_size = 32  # time steps
    default_dims = 1

    def __init__(self, num_classes: int, partitions: int = 1, *, cell: str, width: int = 128, in_channels: int = 1,
                 num_layers: int = 1, readout: str = "last", layout: str = "NFT"):
        super().__init__()
        if readout not in _READOUTS:
            raise ValueError(f"readout must be one of {', '.join(_READOUTS)}, got {readout!r}")
        if layout not in _LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(_LAYOUTS)}, got {layout!r}")
        hidden = split_width(width, partitions)
        self.rnn = _CELLS[cell](in_channels, hidden, num_layers=num_layers, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)
        self.readout, self.layout = readout, layout

    def hidden_states(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(top layer's hidden state at every step (N, T, H), last hidden state of every layer (L, N, H))."""
        feature_axis = 1 if self.layout == "NFT" else 2
        if x.dim() != 3 or x.shape[feature_axis] != self.rnn.input_size:
            expected = "(N, F, T)" if self.layout == "NFT" else "(N, T, F)"
            raise ValueError(f"{type(self.rnn).__name__.lower()} with layout {self.layout} takes {expected} input with "
                             f"F = in_channels = {self.rnn.input_size}, got shape {tuple(x.shape)}")
        sequence = x.transpose(1, 2) if self.layout == "NFT" else x
        outputs, last = self.rnn(sequence)
        return outputs, last[0] if isinstance(last, tuple) else last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.hidden_states(x)
        return self.fc(outputs[:, -1] if self.readout == "last" else outputs.mean(dim=1))

    @classmethod
    def sample_shape(cls, options: dict) -> tuple[int, int]:
        features, steps = options["in_channels"], cls.default_input_size
        return (features, steps) if options["layout"] == "NFT" else (steps, features)
