"""Swap the self-attention of a Hugging Face BERT-style encoder for any attnzoo mixer (the `hf` extra).

LoLCATs (arXiv:2410.10254) keeps the teacher's projections; so does this adapter. A BERT-style
self-attention is a module with `query`, `key`, `value` Linears and `num_attention_heads`,
`attention_head_size` (BertSelfAttention and its copies); it maps hidden states [B, T, d] to the
context [B, T, H·d_h] before the layer's own output projection (`attention.output.dense`, which
stays the teacher's W_o). Each is replaced by `StudentSelfAttention`: a student mixer whose
q_proj / k_proj / v_proj take the teacher's weights and biases and whose o_proj is the identity;
a causal student runs in both directions, merged by the mean (Bidirectional, both directions
initialised from the teacher: Vision-RWKV arXiv:2403.02308, Vision Mamba arXiv:2401.09417).

    student = copy.deepcopy(teacher)
    pairs, new = replace_attention(student, "lawcat", teacher=teacher)   # [(teacher layer, adapter)], names
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.distill.swap import copy_projections, student_kwargs
from attnzoo.mixers.bidirectional import Bidirectional
from attnzoo.registry import build, get_card

HF_PROJECTIONS = {"q_proj": "query", "k_proj": "key", "v_proj": "value"}


def is_bert_self_attention(module: nn.Module) -> bool:
    return (all(isinstance(getattr(module, n, None), nn.Linear) for n in HF_PROJECTIONS.values())
            and hasattr(module, "num_attention_heads") and hasattr(module, "attention_head_size"))


def padding_mask(attention_mask, shape) -> torch.Tensor | None:
    """transformers' attention mask (None, [B, T] 0/1, or [B, 1, T|1, T] bool / additive float) -> bool [B, T]
    of real tokens (None when every token is real)."""
    if attention_mask is None:
        return None
    m = attention_mask
    if m.dim() == 4:
        m = m[:, 0, 0, :]
    if m.dim() != 2 or tuple(m.shape) != tuple(shape):
        raise ValueError(f"attention mask must be [B, T] = {tuple(shape)} (or [B, 1, *, T]), got "
                         f"{tuple(attention_mask.shape)}")
    if m.dtype == torch.bool:
        real = m
    elif m.is_floating_point() and attention_mask.dim() == 4:
        real = m == 0                 # additive: 0 where attended, a large negative elsewhere
    else:
        real = m != 0
    return None if bool(real.all()) else real


class StudentSelfAttention(nn.Module):
    """hidden_states [B, T, d] (+ transformers' attention_mask) -> (context [B, T, d], None)."""

    def __init__(self, mixer: nn.Module):
        super().__init__()
        self.mixer = mixer

    def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
        mask = padding_mask(attention_mask, hidden_states.shape[:2])
        return self.mixer(hidden_states, mask=mask), None


def build_student_attention(name: str, teacher_attn: nn.Module, *, overrides: dict | None = None,
                            merge: str = "mean") -> tuple[StudentSelfAttention, list[str]]:
    """One StudentSelfAttention for `teacher_attn`; -> (adapter, adapter parameter names copied from it)."""
    H, hd = teacher_attn.num_attention_heads, teacher_attn.attention_head_size
    d_model = teacher_attn.query.in_features
    if H * hd != d_model:
        raise ValueError(f"the adapter needs H * head_dim == hidden size, got {H} x {hd} != {d_model}")
    card = get_card(name)
    kwargs = student_kwargs(name, n_heads=H, head_dim=hd, d_model=d_model, overrides=overrides)
    if card.bidirectional and "causal" in _params(name):
        mixer = build(name, d_model=d_model, causal=False, **kwargs)
    else:
        mixer = build(name, d_model=d_model, **kwargs)
    sources = {k: getattr(teacher_attn, v) for k, v in HF_PROJECTIONS.items()}
    copied = copy_projections(mixer, sources)
    o = getattr(mixer, "o_proj", None)
    if isinstance(o, nn.Linear) and o.in_features == o.out_features == d_model:
        mixer.o_proj = nn.Identity()       # the layer's attention.output.dense is W_o
    if mixer.causal:
        mixer = Bidirectional(d_model, mixer=mixer, merge=merge)
        copied = [f"forward_mixer.{n}" for n in copied] + [f"backward_mixer.{n}" for n in copied]
    adapter = StudentSelfAttention(mixer)
    return adapter, [f"mixer.{n}" for n in copied]


def _params(name):
    import inspect

    from attnzoo.registry import get_class

    return inspect.signature(get_class(name).__init__).parameters


def replace_attention(student_model: nn.Module, name: str, *, teacher: nn.Module | None = None,
                      overrides: dict | None = None, merge: str = "mean"):
    """Replace every BERT-style self-attention of `student_model` (in place) by a student mixer.

    teacher: the unchanged model whose layers pair with the adapters (default: the replaced modules
    themselves). -> (pairs [(teacher layer, adapter)], set of new parameter names of student_model)."""
    found = [(n, m) for n, m in student_model.named_modules() if is_bert_self_attention(m)]
    if not found:
        raise ValueError(f"no BERT-style self-attention (query/key/value Linears) in {type(student_model).__name__}")
    t_modules = dict(teacher.named_modules()) if teacher is not None else {}
    pairs, copied = [], set()
    for path, module in found:
        adapter, names = build_student_attention(name, module, overrides=overrides, merge=merge)
        adapter.to(module.query.weight.device)
        parent_name, _, attr = path.rpartition(".")
        setattr(student_model.get_submodule(parent_name) if parent_name else student_model, attr, adapter)
        pairs.append((t_modules.get(path, module), adapter))
        copied.update(f"{path}.{n}" for n in names)
    own = {n for n, _ in student_model.named_parameters() if any(n.startswith(p + ".") for p, _ in found)}
    new = own - copied
    if not new:       # no parameter of its own (Based's Taylor map): the copied q/k feature projections learn
        new = {n for n in own if n.rsplit(".", 2)[-2] in ("q_proj", "k_proj") and ".swa." not in n}
    return pairs, new
