"""Atomic, durable checkpoints that hold no pickle: safetensors for tensors, JSON for the rest.

A checkpoint is a folder `<dir>/step-<N>/`:

    model.safetensors     the model's state_dict (tensors shared by several names, e.g. tied
                          embeddings, stored once), readable by any safetensors tool
    trainer.safetensors   the optimizer's tensors (moments, AdamW's step counters, ...) and any in `extra`
    trainer.json          the rest (state_codec): step, optimizer class, param-group options and
                          structure, per-parameter step counts, `extra`; and the SHA-256 and size of
                          both tensor files, so a damaged or swapped file is caught before it is used

Writing: the three files go to a temporary folder, each is fsynced, then the folder; it is renamed
into place (os.replace) and the parent fsynced; then `<dir>/latest.json` is written the same way
(temp file, fsync, rename, fsync of the folder). A crash at any moment leaves the previous
checkpoint whole, and `latest.json` never names a half-written folder.

Loading reads and checks everything (hashes, tensor headers, JSON structure, the model's names and
shapes, the optimizer's class, groups and moment shapes) before it changes anything: a bad
checkpoint raises a ValueError naming the file and leaves the model and the optimizer as they were.
Nothing is unpickled: an old-layout `trainer.pt` (a pickle, which can run code) is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections import Counter

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from attnzoo.train.state_codec import check_optimizer_state, decode, encode

LATEST = "latest.json"
MODEL, TENSORS, META = "model.safetensors", "trainer.safetensors", "trainer.json"
FORMAT, VERSION = "attnzoo.checkpoint", 1
_NAME = re.compile(r"step-\d+")


def _fsync_dir(path: str):
    if os.name == "nt":          # Windows cannot open a folder for fsync; its renames are journaled
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: str, data: bytes):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _atomic_write_text(path: str, text: str):
    tmp = f"{path}.tmp-{os.getpid()}"
    _write_durable(tmp, text.encode("utf-8"))
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """state_dict with each tensor shared by several names (tied weights) kept under its first name."""
    out, seen = {}, set()
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().to("cpu").contiguous()
    users = Counter(t.untyped_storage().data_ptr() for t in out.values())
    # views of one storage that are not the same tensor (safetensors refuses them): own copies
    return {n: t.clone() if users[t.untyped_storage().data_ptr()] > 1 else t for n, t in out.items()}


def _digest(meta: dict) -> str:
    """SHA-256 of trainer.json's content without its own 'sha256' field (keys sorted)."""
    body = {k: v for k, v in meta.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=False).encode("utf-8")).hexdigest()


def save_checkpoint(directory: str, *, model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    extra: dict | None = None, keep: int = 1) -> str:
    """Write `<directory>/step-<step>/` atomically, point latest.json at it, keep the newest `keep` folders.

    `extra` is a dict of JSON-able values and tensors (see state_codec); returns the folder."""
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    if keep < 1:
        raise ValueError(f"keep must be >= 1 (the checkpoint just written), got {keep}")
    if extra is not None and not isinstance(extra, dict):
        raise ValueError(f"extra must be a dict, got {type(extra).__name__}")
    opt_tree, opt_tensors = encode(optimizer.state_dict(), where="optimizer")
    extra_tree, extra_tensors = encode(extra or {}, where="extra")
    tensors = {f"optimizer/{k}": v for k, v in opt_tensors.items()}
    tensors.update({f"extra/{k}": v for k, v in extra_tensors.items()})
    blobs = {MODEL: st_save(_model_tensors(model), metadata={"format": "pt", "step": str(step)}),
             TENSORS: st_save(tensors, metadata={"format": "pt"})}
    meta = {"format": FORMAT, "version": VERSION, "step": step, "optimizer_class": type(optimizer).__name__,
            "files": {n: {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)} for n, b in blobs.items()},
            "optimizer": opt_tree, "extra": extra_tree}
    meta["sha256"] = _digest(meta)
    blobs[META] = json.dumps(meta, allow_nan=False).encode("utf-8")

    os.makedirs(directory, exist_ok=True)
    name = f"step-{step:08d}"
    final = os.path.join(directory, name)
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for n, b in blobs.items():
        _write_durable(os.path.join(tmp, n), b)
    _fsync_dir(tmp)
    if os.path.lexists(final):           # the same step again: move the old one aside, drop it after
        aside = os.path.join(directory, f".{name}.old-{os.getpid()}")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
        os.replace(tmp, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(directory)
    _atomic_write_text(os.path.join(directory, LATEST), json.dumps({"checkpoint": name, "step": step}))
    old = sorted((d for d in os.listdir(directory) if _NAME.fullmatch(d) and d != name), key=lambda d: int(d[5:]))
    for d in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(os.path.join(directory, d), ignore_errors=True)
    return final


def _inside(path: str, folder: str) -> bool:
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return os.path.dirname(real) == root


def latest_checkpoint(directory: str) -> str | None:
    """The folder `<directory>/latest.json` names, or None when there is no latest.json.

    Raises ValueError when latest.json is unreadable or names anything but a `step-<N>` folder
    directly inside `directory` (an absolute path, `..`, a symlink leading elsewhere, a missing folder)."""
    path = os.path.join(directory, LATEST)
    if not os.path.lexists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is unreadable: {e}") from e
    name = info.get("checkpoint") if isinstance(info, dict) else None
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{path} must name a step-<N> folder inside {directory}, got {name!r}")
    full = os.path.join(directory, name)
    if os.path.islink(full) or not _inside(full, directory):
        raise ValueError(f"{path} names {name}, a link out of {directory}: refused")
    if not os.path.isdir(full):
        raise ValueError(f"{path} names {name}, which is not a folder in {directory}")
    return full


def _read(folder: str, name: str) -> bytes:
    path = os.path.join(folder, name)
    if not os.path.lexists(path):
        if name == META and os.path.lexists(os.path.join(folder, "trainer.pt")):
            raise ValueError(f"{folder} holds trainer.pt, a pickle from an older attnzoo: it is never loaded "
                             f"(unpickling can run any code); retrain, or rebuild the checkpoint from a trusted "
                             f"copy of its weights")
        raise ValueError(f"checkpoint {folder} is incomplete: {name} is missing")
    if os.path.islink(path) or not os.path.isfile(path) or not _inside(path, folder):
        raise ValueError(f"{path}: {name} must be a regular file inside the checkpoint folder")
    with open(path, "rb") as f:
        return f.read()


def _tensor_file(folder: str, name: str, files: dict) -> dict[str, torch.Tensor]:
    data, want = _read(folder, name), files.get(name)
    if not isinstance(want, dict) or hashlib.sha256(data).hexdigest() != want.get("sha256"):
        raise ValueError(f"{os.path.join(folder, name)} is damaged or from another checkpoint: its SHA-256 "
                         f"({len(data)} bytes) is not the one trainer.json records ({want})")
    try:
        return {k: v.clone() for k, v in st_load(data).items()}   # own memory, not views of `data`
    except Exception as e:           # safetensors' SafetensorError (its module path varies by version)
        raise ValueError(f"{os.path.join(folder, name)} is not a valid safetensors file: {e}") from e


def _read_meta(folder: str) -> dict:
    path = os.path.join(folder, META)
    try:
        meta = json.loads(_read(folder, META).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON (truncated or damaged?): {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an attnzoo checkpoint (format {FORMAT!r} expected)")
    if meta.get("sha256") != _digest(meta):
        raise ValueError(f"{path} is damaged: its content does not match the SHA-256 it records")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path} has version {meta.get('version')!r}; this attnzoo reads version {VERSION}")
    step = meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"{path}: step must be an int >= 0, got {step!r}")
    if not isinstance(meta.get("files"), dict) or not isinstance(meta.get("optimizer_class"), str):
        raise ValueError(f"{path}: 'files' (dict) and 'optimizer_class' (str) are required")
    return meta


def _model_values(model: nn.Module, weights: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Every state_dict name of `model` -> its tensor in the file (a tied name through its twin)."""
    own = model.state_dict()
    ptr = {n: (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
           for n, t in own.items()}
    out, missing = {}, []
    for n in own:
        src = n if n in weights else next((m for m in weights if m in ptr and ptr[m] == ptr[n]
                                           and own[n].numel()), None)
        if src is None:
            missing.append(n)
        else:
            out[n] = weights[src]
    unexpected = sorted(set(weights) - set(own))
    wrong = [f"{n}: {tuple(weights[n].shape)} in the file, {tuple(own[n].shape)} in the model"
             for n in sorted(set(weights) & set(own)) if weights[n].shape != own[n].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"checkpoint {where} does not match the model: missing {missing}, unexpected {unexpected}, "
                         f"shapes {wrong}")
    return out


def load_checkpoint(path: str, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Load the weights (strict) and, if given, the optimizer state; return {'step', 'extra'}.

    All files are read and checked first; on any problem a ValueError names the file and neither
    `model` nor `optimizer` is changed. Tensors are read on the CPU: load_state_dict moves them to
    their parameters' devices (the optimizer's step counters stay where torch keeps them)."""
    meta = _read_meta(path)
    where = os.path.join(path, META)
    weights = _tensor_file(path, MODEL, meta["files"])
    state_tensors = _tensor_file(path, TENSORS, meta["files"])
    values = _model_values(model, weights, os.path.join(path, MODEL))
    groups = {"optimizer": {}, "extra": {}}
    for k, v in state_tensors.items():
        head, _, rest = k.partition("/")
        if head not in groups or not rest:
            raise ValueError(f"{os.path.join(path, TENSORS)} holds an unexpected tensor {k!r}")
        groups[head][rest] = v
    try:
        opt_state = decode(meta.get("optimizer"), groups["optimizer"], where="optimizer")
        extra = decode(meta.get("extra"), groups["extra"], where="extra")
        if not isinstance(extra, dict):
            raise ValueError(f"extra must be a dict, got {type(extra).__name__}")
        if optimizer is not None:
            check_optimizer_state(opt_state, optimizer, saved_class=meta["optimizer_class"])
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e

    # load_state_dict builds new state and group objects: the old ones, kept here, put it back exactly
    before = (optimizer.state, optimizer.param_groups) if optimizer is not None else None
    try:
        if optimizer is not None:
            optimizer.load_state_dict(opt_state)
    except Exception as e:
        optimizer.state, optimizer.param_groups = before
        raise ValueError(f"{where}: {type(optimizer).__name__} refused the optimizer state: {e!r}") from e
    try:
        with torch.no_grad():
            model.load_state_dict(values, strict=True)
    except Exception:
        if optimizer is not None:
            optimizer.state, optimizer.param_groups = before
        raise
    return {"step": meta["step"], "extra": extra}
