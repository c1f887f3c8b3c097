"""Attention maps and hidden activations of a LanguageModel: attention sinks and massive activations.

Qiu et al. (2025), "Gated Attention for Large Language Models", arXiv:2505.06708, diagnose a
trained LM by the share of attention on the first token (the "attention sink") and by the largest
hidden activation. For softmax probabilities p [B, H, T, T] of every softmax layer:

    first_token_share = mean_{layers, b, h, t >= 1} p[b, h, t, 0]

(query t = 0 is left out: it can only attend to itself). A uniform causal attention gives
mean_{t=1..T-1} 1/(t+1); `uniform_first_token_share(T)` is that reference.

    inputs, outputs = trace_blocks(lm, ids)    # what each block's mixer saw, each block's output
    maps = lm_attention_probs(lm, ids)         # [B, H, T, T] per softmax layer (None for others)
"""

from __future__ import annotations

import torch

from attnzoo.analysis.prefix_mass import attention_probs
from attnzoo.mixers.softmax import SoftmaxAttention


@torch.no_grad()
def trace_blocks(lm, ids: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run lm(ids) once; -> (each block's mixer input [B, T, d] (after its norm), each block's output
    residual stream [B, T, d]). lm is an attnzoo LanguageModel (its `blocks` hold `.mixer`)."""
    if not hasattr(lm, "blocks"):
        raise ValueError(f"lm must be a LanguageModel with .blocks, got {type(lm).__name__}")
    inputs, outputs, hooks = [], [], []
    for block in lm.blocks:
        hooks.append(block.mixer.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].detach())))
        hooks.append(block.register_forward_hook(lambda _m, _a, out: outputs.append(out[0].detach())))
    was = lm.training
    lm.eval()
    try:
        lm(ids)
    finally:
        for h in hooks:
            h.remove()
        lm.train(was)
    return inputs, outputs


@torch.no_grad()
def lm_attention_probs(lm, ids: torch.Tensor) -> list[torch.Tensor | None]:
    """Softmax probabilities [B, H, T, T] of each layer's mixer on ids [B, T] (None where the mixer
    is not softmax attention), from the inputs the mixers really saw."""
    inputs, _ = trace_blocks(lm, ids)
    return [attention_probs(b.mixer, x.float() if x.dtype != torch.float64 else x)
            if isinstance(b.mixer, SoftmaxAttention) else None
            for b, x in zip(lm.blocks, inputs)]


def first_token_share(probs: torch.Tensor) -> float:
    """probs [B, H, Tq, Tk] (causal, Tq = Tk) -> mean attention on key 0 over batch, heads and queries t >= 1."""
    if probs.dim() != 4 or probs.shape[-1] != probs.shape[-2] or probs.shape[-1] < 2:
        raise ValueError(f"probs must be [B, H, T, T] with T >= 2, got shape {tuple(probs.shape)}")
    return float(probs[:, :, 1:, 0].mean())


def uniform_first_token_share(seq_len: int) -> float:
    """The first-token share of uniform causal attention over T tokens: mean_{t=1..T-1} 1/(t+1)."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    return float(sum(1.0 / (t + 1) for t in range(1, seq_len)) / (seq_len - 1))


@torch.no_grad()
def source_output_share(mixer: SoftmaxAttention, x: torch.Tensor, prefix_len: int) -> torch.Tensor:
    """Share of a softmax mixer's output at each query that comes from the first prefix_len (source) tokens, [T].

    With p the mixer's self-attention probabilities and v its values, the output splits into
    y_src = W_o Σ_{j<P} p_j v_j + r and y_tgt = W_o Σ_{j>=P} p_j v_j, where r = mixer(x) - W_o (p v) is
    whatever else the mixer adds (partial attention's source-only branch; 0 for plain softmax).
    share[t] = mean_b ||y_src|| / (||y_src|| + ||y_tgt||). x [B, T, d_model], no padding.
    """
    B, T, _ = x.shape
    if not 0 < prefix_len <= T:
        raise ValueError(f"prefix_len must be in [1, T={T}], got {prefix_len}")
    if type(mixer).gate_output is not SoftmaxAttention.gate_output:
        raise ValueError(f"{type(mixer).__name__} gates its attention output: the split W_o (p v) does not hold")
    probs = attention_probs(mixer, x)                                         # [B, H, T, T]
    v = mixer.v_proj(x).view(B, T, mixer.n_kv_heads, mixer.head_dim)
    v = v.repeat_interleave(mixer.n_heads // mixer.n_kv_heads, dim=2)

    def out(p, vv):
        o = torch.einsum("bhij,bjhd->bihd", p, vv).reshape(B, T, -1)
        return mixer.o_proj(o.to(x.dtype))

    y_src = out(probs[..., :prefix_len], v[:, :prefix_len])
    y_tgt = out(probs[..., prefix_len:], v[:, prefix_len:])
    bias = mixer.o_proj.bias if mixer.o_proj.bias is not None else 0.0
    rest = mixer(x) - (y_src + y_tgt - bias)
    y_src = y_src + rest
    a, b = y_src.norm(dim=-1), y_tgt.norm(dim=-1)
    return (a / (a + b).clamp_min(1e-12)).mean(0)
