"""Carrying trained networks into a new stage without changing what they compute (torch only).

* `zero_input_columns`: inputs a network never saw vary (they always reached it as 0) get zero weight, so when
  they start to vary in a new stage (obstacles, weakened muscles) the network still computes what it did, and
  learns from there to use them. Their old weights were never trained (a constant 0 input gets no gradient):
  they are the random initialisation, which would otherwise inject noise the moment the input moved.
* `widen_mlp`: a trained MLP copied into a wider one of the same depth (Net2WiderNet with zeroed outgoing
  weights): the old units keep their weights and ignore the new ones, the new units start from the new
  network's own initialisation and reach the output through zero weights, so the wider network computes exactly
  the old function, and gradient flows into the new units from the first step (their outgoing weights get
  gradient at once).

SAC's stages use both for the critics (lrun/training/sac.py): a Q function is the value of the policy that acts, and at
the start of a transfer (plain init, or a blend at c = 0) that is the source policy, whose critics are therefore
the right ones to start from; fresh critics would hand the actor random gradients until they had learnt.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def linear_layers(net: nn.Module) -> list[nn.Linear]:
    """The Linear layers of an MLP, in order."""
    return [m for m in net.modules() if isinstance(m, nn.Linear)]


@torch.no_grad()
def zero_input_columns(net: nn.Module, mask: np.ndarray) -> int:
    """Zero the first layer's weights from the inputs where `mask` is True (the mask may be shorter than the
    input: the rest, e.g. a critic's action inputs, is kept). Returns how many inputs were cut."""
    first = linear_layers(net)[0]
    mask = np.asarray(mask, dtype=bool)
    if len(mask) > first.in_features:
        raise ValueError(f"mask of {len(mask)} inputs for a layer of {first.in_features}")
    columns = torch.as_tensor(np.flatnonzero(mask), dtype=torch.long)
    first.weight[:, columns] = 0.0
    return len(columns)


def insert_input_columns(state: dict[str, torch.Tensor], at: int, count: int) -> dict[str, torch.Tensor]:
    """An MLP's state dict with `count` zero input columns inserted at input `at` of its first layer: inputs
    added to a network (new features after the old ones, before a critic's action inputs) that it ignores until
    it learns to use them, so it computes what it did."""
    first = weight_keys(state)[0]
    w = state[first]
    if not 0 <= at <= w.shape[1]:
        raise ValueError(f"cannot insert inputs at {at} of a layer with {w.shape[1]}")
    zeros = torch.zeros(w.shape[0], count, dtype=w.dtype)
    return {**state, first: torch.cat([w[:, :at], zeros, w[:, at:]], dim=1)}


def weight_keys(state: dict[str, torch.Tensor]) -> list[str]:
    """The weight matrices' keys of an MLP's state dict, in layer order ("2.weight" before "10.weight")."""
    return sorted(
        (k for k in state if k.endswith("weight")), key=lambda k: [int(p) if p.isdigit() else p for p in k.split(".")]
    )


def mlp_shapes(state: dict[str, torch.Tensor]) -> list[tuple[int, int]]:
    """(out, in) of each weight matrix in an MLP's state dict, in layer order."""
    return [tuple(state[k].shape) for k in weight_keys(state)]


@torch.no_grad()
def widen_mlp(source: dict[str, torch.Tensor], target: nn.Module) -> None:
    """Load an MLP's state dict into `target`, an MLP of the same depth, inputs and outputs and at least as wide
    hidden layers, so that `target` computes exactly the source's function (see the module docstring).
    ValueError if it does not fit."""
    layers = linear_layers(target)
    keys = weight_keys(source)
    if len(keys) != len(layers):
        raise ValueError(f"cannot widen a {len(keys)}-layer network into a {len(layers)}-layer one")
    for i, (key, layer) in enumerate(zip(keys, layers, strict=True)):  # every layer checked before any is written
        out_s, in_s = source[key].shape
        out_t, in_t = layer.weight.shape
        first, last = i == 0, i == len(layers) - 1
        if out_t < out_s or in_t < in_s or (first and in_t != in_s) or (last and out_t != out_s):
            raise ValueError(f"layer {i}: {tuple(source[key].shape)} does not widen into {(out_t, in_t)}")
    for i, (key, layer) in enumerate(zip(keys, layers, strict=True)):
        w = source[key]
        b = source[key.removesuffix("weight") + "bias"]
        out_s, in_s = w.shape
        last = i == len(layers) - 1
        layer.weight[:out_s, :in_s] = w
        layer.weight[:out_s, in_s:] = 0.0  # old units ignore the new ones
        layer.bias[:out_s] = b
        if last:
            layer.weight[:, in_s:] = 0.0  # new units reach the output through zero weights


def carry_mlp(source: dict[str, torch.Tensor], target: nn.Module) -> str:
    """Copy (same shapes) or widen (`widen_mlp`) a trained MLP into `target`; returns "copied" or "widened".
    ValueError where neither fits."""
    if mlp_shapes(source) == mlp_shapes(target.state_dict()):
        target.load_state_dict(source)
        return "copied"
    widen_mlp(source, target)
    return "widened"
