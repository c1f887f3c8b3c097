"""Swap a teacher's attention for any registered mixer, keeping the teacher's q/k/v/o projections.

LoLCATs (Zhang et al. 2024, arXiv:2410.10254) and LAWCAT (Liu et al. 2025, arXiv:2509.18467)
linearize a pretrained transformer by replacing each softmax attention with a linear one that
reuses the teacher's W_q, W_k, W_v, W_o and adds a few new parameters (feature maps, convs,
gates); only those new parameters learn in stage 1. Here that is done for any student mixer:

    student, new = linearize_lm(teacher_lm, "lawcat")             # every layer -> lawcat
    student, new = linearize_lm(teacher_lm, "gla*3+softmax")      # a 3:1 hybrid keeps every 4th layer

A student projection (any nn.Linear named q_proj / k_proj / v_proj / o_proj, at any depth: the
window branch of Based, both directions of a Bidirectional wrapper) takes the teacher's weight
when the shapes agree; a teacher bias is kept by giving the student's Linear a bias. `new` is the
set of student parameter names that did not come from the teacher (what stage 1 trains); a
student with no parameter of its own (Based: its Taylor map has none) counts its copied top-level
q_proj/k_proj (its feature projections) as new. `student_kwargs` picks
constructor arguments that make the shapes agree (the teacher's heads and head size; GLA's key
width expand_k = 1).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from attnzoo.mixers.bidirectional import Bidirectional
from attnzoo.models.encoder import Encoder
from attnzoo.models.lm import LanguageModel, parse_pattern
from attnzoo.registry import get_class

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
# per-mixer arguments that make its projections the teacher's shape
MATCHING_KWARGS = {"gla": {"expand_k": 1.0, "expand_v": 1.0}}


def student_kwargs(name: str, *, n_heads: int, head_dim: int, d_model: int, overrides: dict | None = None) -> dict:
    """Constructor arguments for student `name` with the teacher's head layout where it takes them."""
    params = inspect.signature(get_class(name).__init__).parameters
    kw = {}
    if "n_heads" in params:
        kw["n_heads"] = n_heads
    if "head_dim" in params and head_dim * n_heads != d_model:
        kw["head_dim"] = head_dim
    kw.update({k: v for k, v in MATCHING_KWARGS.get(name, {}).items() if k in params})
    kw.update(overrides or {})
    return kw


def _with_bias(linear: nn.Linear) -> nn.Linear:
    new = nn.Linear(linear.in_features, linear.out_features, bias=True, device=linear.weight.device,
                    dtype=linear.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(linear.weight)
        new.bias.zero_()
    return new


def copy_projections(student: nn.Module, sources: dict[str, nn.Linear]) -> list[str]:
    """Copy each source Linear into every student Linear with the same attribute name and shape.

    sources maps a projection name ("q_proj", ...) to the teacher's Linear. Returns the student
    parameter names that were copied (e.g. ["q_proj.weight", "swa.q_proj.weight", ...])."""
    copied = []
    targets = [(n, m) for n, m in student.named_modules() if isinstance(m, nn.Linear)]
    for path, module in targets:
        attr = path.rpartition(".")[2]
        src = sources.get(attr)
        if src is None or tuple(src.weight.shape) != tuple(module.weight.shape):
            continue
        if src.bias is not None and module.bias is None:
            parent = student.get_submodule(path.rpartition(".")[0]) if "." in path else student
            module = _with_bias(module)
            setattr(parent, attr, module)
        with torch.no_grad():
            module.weight.copy_(src.weight)
            copied.append(f"{path}.weight")
            if module.bias is not None:
                if src.bias is not None:
                    module.bias.copy_(src.bias)
                    copied.append(f"{path}.bias")
    return copied


def projections_of(mixer: nn.Module) -> dict[str, nn.Linear]:
    """The teacher attention's q/k/v/o Linears (attnzoo SoftmaxAttention names)."""
    return {n: getattr(mixer, n) for n in PROJECTIONS if isinstance(getattr(mixer, n, None), nn.Linear)}


def _teacher_heads(mixer) -> tuple[int, int]:
    n_heads = getattr(mixer, "n_heads", None)
    head_dim = getattr(mixer, "head_dim", None)
    if n_heads is None or head_dim is None:
        raise ValueError(f"the teacher layer {type(mixer).__name__} has no n_heads/head_dim: not an attention layer")
    return n_heads, head_dim


def _swap(teacher, student_cls, build_kwargs, layer_names, student_pattern, overrides):
    """Build the student (same class as the teacher), copy shared weights, return (student, new names)."""
    cfg = teacher.init_config
    n_layers = cfg["n_layers"]
    names = parse_pattern(student_pattern, n_layers)
    teacher_kwargs = cfg.get("mixer_kwargs") or {}
    mixer_kwargs = {}
    for i, name in enumerate(names):
        if name in mixer_kwargs:
            continue
        if name == layer_names[i]:
            mixer_kwargs[name] = dict(teacher_kwargs.get(name, {}))
        else:
            n_heads, head_dim = _teacher_heads(_inner(teacher.blocks[i].mixer))
            mixer_kwargs[name] = student_kwargs(name, n_heads=n_heads, head_dim=head_dim, d_model=cfg["d_model"],
                                                overrides=(overrides or {}).get(name))
    student = student_cls(**build_kwargs, mixer=student_pattern, mixer_kwargs=mixer_kwargs)
    student.to(next(teacher.parameters()).device)
    tstate = teacher.state_dict()
    kept = set()
    with torch.no_grad():
        for key, value in student.state_dict().items():
            if ".mixer." not in key and key in tstate and tstate[key].shape == value.shape:
                value.copy_(tstate[key])
                kept.add(key)
        for i, name in enumerate(names):
            t_mixer, s_mixer = teacher.blocks[i].mixer, student.blocks[i].mixer
            prefix = f"blocks.{i}.mixer."
            if name == layer_names[i]:
                s_mixer.load_state_dict(t_mixer.state_dict())
                kept.update(prefix + k for k in s_mixer.state_dict())
            else:
                copied = copy_projections(s_mixer, projections_of(_inner(t_mixer)))
                if isinstance(s_mixer, Bidirectional) and s_mixer.merge == "sum":
                    halve_outputs(s_mixer, copied)
                own = {prefix + n for n, _ in s_mixer.named_parameters()} - {prefix + k for k in copied}
                if not own:      # nothing of its own (Based): its feature projections q, k learn instead
                    copied = [k for k in copied if k.split(".")[0] not in ("q_proj", "k_proj")]
                kept.update(prefix + k for k in copied)
    new = {n for n, _ in student.named_parameters() if n not in kept}
    return student, new


def halve_outputs(mixer: nn.Module, copied: list[str]):
    """Both directions of a summed Bidirectional start from the teacher's W_o: halve them so the
    sum starts as the mean of the two directions (the teacher's output scale)."""
    with torch.no_grad():
        for name in copied:
            if name.rpartition(".")[0].endswith("o_proj"):
                mixer.get_parameter(name).mul_(0.5)


def _inner(mixer):
    """A teacher layer, or the forward mixer of a Bidirectional wrapper."""
    return getattr(mixer, "forward_mixer", mixer)


def linearize_lm(teacher: LanguageModel, student: str, *, overrides: dict | None = None):
    """A LanguageModel with `student`'s pattern, the teacher's embeddings, norms and MLPs, and each
    swapped mixer initialised from the teacher layer's q/k/v/o. Layers whose pattern name equals
    the teacher's keep the teacher's mixer whole. overrides: {mixer name: constructor kwargs}.

    -> (student LanguageModel, set of parameter names that are new)."""
    cfg = teacher.init_config
    build_kwargs = {k: cfg[k] for k in ("vocab_size", "d_model", "n_layers", "mlp_ratio", "norm_eps")}
    return _swap(teacher, LanguageModel, build_kwargs, teacher.layer_names, student, overrides)


def linearize_encoder(teacher: Encoder, student: str, *, overrides: dict | None = None):
    """The same for an attnzoo Encoder; a causal student runs forward + reversed (Bidirectional,
    both directions initialised from the teacher)."""
    cfg = teacher.init_config
    build_kwargs = {k: cfg[k] for k in ("d_model", "n_layers", "mlp_ratio")}
    layer_names = parse_pattern(cfg["mixer"], cfg["n_layers"])
    return _swap(teacher, Encoder, build_kwargs, layer_names, student, overrides)
