"""Training state as JSON plus a flat dict of tensors, so that a checkpoint needs no pickle.

`optimizer.state_dict()` and the trainer's `extra` are trees of dict / list / tuple / str / int /
float / bool / None and tensors. `encode` moves every tensor into a flat dict (saved as
safetensors) and leaves a reference in the tree; what JSON cannot hold exactly is tagged, each
tag a one-key object:

    {"$tensor": "t3"}                tensor "t3" of the flat dict
    {"$tuple": [...]}                a tuple (betas)
    {"$dict": [[key, value], ...]}   a dict with a key that is not a str, or that starts with "$"
                                     (optimizer state is keyed by int parameter ids)
    {"$float": "nan" | "inf" | "-inf"}

`decode(*encode(x)) == x` with the same types (an int stays an int, a tuple a tuple) and tensors
bit-identical (dtype and shape kept; device is the CPU). Decoding never runs code: the worst a
crafted file can do is fail with a ValueError saying where.
"""

from __future__ import annotations

import math

import torch

TAGS = ("$tensor", "$tuple", "$dict", "$float")
_SPECIAL = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def encode(tree, *, where: str = "state") -> tuple[object, dict[str, torch.Tensor]]:
    """(JSON-safe tree, {name: contiguous CPU tensor}); raises ValueError at an unsupported value."""
    tensors: dict[str, torch.Tensor] = {}
    storages: set[tuple[int, int]] = set()

    def enc(x, path):
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, int):
            return int(x)
        if isinstance(x, float):
            if math.isfinite(x):
                return float(x)
            return {"$float": "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")}
        if torch.is_tensor(x):
            if x.layout != torch.strided:
                raise ValueError(f"{path}: only dense tensors can be stored, got layout {x.layout}")
            t = x.detach().to("cpu").contiguous()
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            if t.numel() and key in storages:       # safetensors refuses tensors sharing memory
                t = t.clone()
            storages.add(key)
            name = f"t{len(tensors)}"
            tensors[name] = t
            return {"$tensor": name}
        if isinstance(x, tuple):
            return {"$tuple": [enc(v, f"{path}[{i}]") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [enc(v, f"{path}[{i}]") for i, v in enumerate(x)]
        if isinstance(x, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in x):
                return {k: enc(v, f"{path}.{k}") for k, v in x.items()}
            return {"$dict": [[enc(k, f"{path}<key {k!r}>"), enc(v, f"{path}[{k!r}]")] for k, v in x.items()]}
        raise ValueError(f"{path}: cannot store a {type(x).__name__} (expected dict, list, tuple, str, int, "
                         f"float, bool, None or a tensor)")

    return enc(tree, where), tensors


def decode(tree, tensors: dict[str, torch.Tensor], *, where: str = "state"):
    """Inverse of `encode`; every tensor of `tensors` must be used exactly once."""
    used: set[str] = set()

    def dec(x, path):
        if x is None or isinstance(x, (bool, str, int, float)):
            return x
        if isinstance(x, list):
            return [dec(v, f"{path}[{i}]") for i, v in enumerate(x)]
        if not isinstance(x, dict):
            raise ValueError(f"{path}: unexpected JSON value {x!r}")
        tag = next((k for k in x if k.startswith("$")), None)
        if tag is None:
            return {k: dec(v, f"{path}.{k}") for k, v in x.items()}
        if len(x) != 1 or tag not in TAGS:
            raise ValueError(f"{path}: unknown tag object {sorted(x)} (expected one of {TAGS})")
        v = x[tag]
        if tag == "$tensor":
            if not isinstance(v, str) or v not in tensors:
                raise ValueError(f"{path}: refers to tensor {v!r}, which the tensor file does not hold")
            if v in used:
                raise ValueError(f"{path}: tensor {v!r} is referred to twice")
            used.add(v)
            return tensors[v]
        if tag == "$float":
            if v not in _SPECIAL:
                raise ValueError(f"{path}: $float must be one of {sorted(_SPECIAL)}, got {v!r}")
            return _SPECIAL[v]
        if not isinstance(v, list):
            raise ValueError(f"{path}: {tag} must hold a list, got {type(v).__name__}")
        if tag == "$tuple":
            return tuple(dec(e, f"{path}[{i}]") for i, e in enumerate(v))
        out = {}
        for i, pair in enumerate(v):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise ValueError(f"{path}: $dict item {i} must be a [key, value] pair")
            key = dec(pair[0], f"{path}<key {i}>")
            try:
                out[key] = dec(pair[1], f"{path}[{key!r}]")
            except TypeError as e:                  # an unhashable key (a list)
                raise ValueError(f"{path}: $dict key {key!r} cannot be a dict key") from e
        return out

    out = dec(tree, where)
    unused = sorted(set(tensors) - used)
    if unused:
        raise ValueError(f"{where}: the tensor file holds tensors nothing refers to: {unused[:5]}")
    return out


PARAM_SHAPED = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")


def check_optimizer_state(state: object, optimizer: torch.optim.Optimizer, *, saved_class: str | None) -> None:
    """Raise ValueError unless `state` (a decoded state_dict) loads into `optimizer` as it is.

    Checks what torch's load_state_dict checks (group count, group sizes) plus what it lets through
    and fails on later: the optimizer class, unknown group options, state for a parameter id no
    group holds, and moment buffers (PARAM_SHAPED keys) whose shape is not their parameter's."""
    name = type(optimizer).__name__
    if saved_class is not None and saved_class != name:
        raise ValueError(f"the checkpoint holds {saved_class} state, the optimizer is a {name}")
    if not (isinstance(state, dict) and isinstance(state.get("state"), dict)
            and isinstance(state.get("param_groups"), list)):
        raise ValueError("optimizer state must be a dict with 'state' (dict) and 'param_groups' (list)")
    saved, groups = state["param_groups"], optimizer.param_groups
    if len(saved) != len(groups):
        raise ValueError(f"the checkpoint has {len(saved)} parameter groups, the optimizer {len(groups)}")
    by_id = {}
    for i, (s, g) in enumerate(zip(saved, groups)):
        if not isinstance(s, dict) or not isinstance(s.get("params"), list):
            raise ValueError(f"parameter group {i} must be a dict with a 'params' list")
        if len(s["params"]) != len(g["params"]):
            raise ValueError(f"parameter group {i} holds {len(s['params'])} tensors in the checkpoint, "
                             f"{len(g['params'])} in the optimizer")
        unknown = sorted(set(s) - set(g))
        if unknown:
            raise ValueError(f"parameter group {i} has options this {name} does not know: {unknown}")
        for pid, p in zip(s["params"], g["params"]):
            if not isinstance(pid, int) or isinstance(pid, bool) or pid in by_id:
                raise ValueError(f"parameter group {i}: parameter ids must be distinct ints, got {pid!r}")
            by_id[pid] = p
    for pid, st in state["state"].items():
        if pid not in by_id:
            raise ValueError(f"optimizer state for parameter id {pid!r}, which no parameter group holds")
        if not isinstance(st, dict):
            raise ValueError(f"optimizer state of parameter {pid} must be a dict, got {type(st).__name__}")
        for key in PARAM_SHAPED:
            t = st.get(key)
            if torch.is_tensor(t) and t.shape != by_id[pid].shape:
                raise ValueError(f"optimizer state {key} of parameter {pid} has shape {tuple(t.shape)}, "
                                 f"the parameter {tuple(by_id[pid].shape)}")
