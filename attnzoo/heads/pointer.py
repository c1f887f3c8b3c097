"""Attention pointer decoder with a joint (agent, node) softmax and parallel multi-agent actions.

CAMP: Hua, Berto, Son, Kang, Kwon & Park 2025, "CAMP: Collaborative Attention Model with Profiles
for Vehicle Routing Problems", AAMAS 2025, arXiv:2501.02977; built on the Attention Model of
Kool, van Hoof & Welling 2019, "Attention, Learn to Solve Routing Problems!", arXiv:1803.08475.

Shapes: query q [B, m, d] (one context query per agent), node embeddings h either shared
[B, N, d] or profiled per agent [B, m, N, d], feasible [B, m, N] bool (True = the agent may pick
the node). For agent k and node i, with K^(k), V^(k), L^(k) linear maps of agent k's nodes:

    g_k       = MHA(W_q q_k; K^(k), V^(k), feasible_k)          glimpse, heads of d / n_heads
    u_{k,i}   = W_o g_k · L^(k)_i / sqrt(d)
    logit_k,i = C · tanh(u_{k,i} + b_{k,i})   (C = tanh_clipping = 10; None: no clipping;
                                               b = optional score_bias, default 0)
    logit_k,i = -inf where the pair is infeasible
    P_{k,i}   = softmax over all m·N pairs jointly                   (joint_log_softmax)

Parallel action (select_actions): every agent picks a node from its row of the joint softmax,
P(i | k) = P_{k,i} / Σ_j P_{k,j} (= softmax_i of its logits; argmax when greedy). When several
agents pick the same node that is not shareable, the agent with the highest joint probability
P_{k,i} keeps it (ties: the lower agent index) and every other one takes its `fallback` node
(the caller's choice: stay where it is, or go to the depot); fallbacks are not re-checked for
conflicts, so give a node nobody else can take (the agent's own position, or a shareable depot).
`log_prob` is Σ_k log P(choice_k | k) over all agents, the exact log-likelihood of the sampled
choices, which determine the outcome (for REINFORCE); `kept` says which agents' choices survived.

AgentCommunication is CAMP's communication layer: a pre-norm Transformer block (RMSNorm,
bidirectional softmax attention across the m agents, SwiGLU) applied to the agents' queries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from attnzoo.models.lm import Block
from attnzoo.registry import build


@dataclass
class PointerKeys:
    """Projected nodes, each [B, m or 1, N, d] (1 when the nodes are shared by all agents)."""

    glimpse_k: torch.Tensor
    glimpse_v: torch.Tensor
    logit_k: torch.Tensor


@dataclass
class PointerActions:
    """choice [B, m] each agent's pick; action [B, m] after conflict resolution; kept [B, m] bool;
    choice_log_prob [B, m] = log P(choice_k | k); log_prob [B] = its sum over agents;
    joint_prob [B, m] = P_{k, choice_k} (what conflicts are ranked by)."""

    choice: torch.Tensor
    action: torch.Tensor
    kept: torch.Tensor
    choice_log_prob: torch.Tensor
    log_prob: torch.Tensor
    joint_prob: torch.Tensor


class PointerDecoder(nn.Module):
    def __init__(self, d_model: int, *, n_heads: int = 8, tanh_clipping: float | None = 10.0):
        super().__init__()
        if d_model <= 0 or n_heads <= 0 or d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be a positive multiple of n_heads={n_heads}")
        if tanh_clipping is not None and tanh_clipping <= 0:
            raise ValueError(f"tanh_clipping must be > 0 or None, got {tanh_clipping}")
        self.d_model = d_model
        self.n_heads = n_heads
        self.tanh_clipping = tanh_clipping
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.node_proj = nn.Linear(d_model, 3 * d_model, bias=False)  # glimpse K, glimpse V, logit key L
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def project_nodes(self, nodes: torch.Tensor) -> PointerKeys:
        """nodes [B, N, d] (shared) or [B, m, N, d] (per agent) -> PointerKeys; compute once per instance."""
        if nodes.dim() not in (3, 4) or nodes.shape[-1] != self.d_model:
            raise ValueError(f"nodes must be [B, N, {self.d_model}] or [B, m, N, {self.d_model}], "
                             f"got {tuple(nodes.shape)}")
        if not nodes.is_floating_point():
            raise ValueError(f"nodes must be floating point, got {nodes.dtype}")
        if nodes.dim() == 3:
            nodes = nodes[:, None]
        k, v, l_ = self.node_proj(nodes).chunk(3, dim=-1)
        return PointerKeys(k, v, l_)

    def _check(self, query, keys: PointerKeys, feasible):
        if query.dim() != 3 or query.shape[-1] != self.d_model:
            raise ValueError(f"query must be [B, m, {self.d_model}], got {tuple(query.shape)}")
        B, m, _ = query.shape
        kb, km, N, _ = keys.logit_k.shape
        if kb != B or km not in (1, m):
            raise ValueError(f"nodes must be [B={B}, N, d] or [B={B}, m={m}, N, d], "
                             f"got keys for batch {kb} and {km} agents")
        if feasible.dtype != torch.bool or tuple(feasible.shape) != (B, m, N):
            raise ValueError(f"feasible must be bool [B, m, N] = {(B, m, N)}, got {feasible.dtype} "
                             f"{tuple(feasible.shape)}")
        if not bool(feasible.any(-1).all()):
            raise ValueError("every agent needs at least one feasible node (e.g. the depot or staying put)")

    def glimpse(self, query, keys: PointerKeys, feasible) -> torch.Tensor:
        """g [B, m, d]: multi-head attention of each agent's query over its feasible nodes."""
        B, m, d = query.shape
        H, dh = self.n_heads, d // self.n_heads
        q = self.q_proj(query).view(B, m, H, dh)
        k = keys.glimpse_k.unflatten(-1, (H, dh)).transpose(-2, -3)  # [B, m|1, H, N, dh]
        v = keys.glimpse_v.unflatten(-1, (H, dh)).transpose(-2, -3)
        blocked = ~feasible[:, :, None, :]
        if k.shape[1] == 1:  # shared nodes: one key set for all agents, batched over heads
            s = q.transpose(1, 2) @ k[:, 0].transpose(-1, -2)  # [B, H, m, N]
            s = s.masked_fill(blocked.transpose(1, 2), float("-inf")) / math.sqrt(dh)
            g = (torch.softmax(s, dim=-1) @ v[:, 0]).transpose(1, 2)  # [B, m, H, dh]
        else:
            s = (q[..., None, :] @ k.transpose(-1, -2)).squeeze(-2)  # [B, m, H, N]
            s = s.masked_fill(blocked, float("-inf")) / math.sqrt(dh)
            g = (torch.softmax(s, dim=-1)[..., None, :] @ v).squeeze(-2)
        return self.out_proj(g.reshape(B, m, d))

    def forward(self, query, nodes, *, feasible, score_bias=None) -> torch.Tensor:
        """query [B, m, d], nodes (tensor or PointerKeys), feasible [B, m, N] -> logits [B, m, N].

        score_bias [B, m, N] (optional) is added to u before clipping: a known per-pair score such as
        minus the travel distance, as in USPR's profile-aware score reshaping (arXiv:2505.05119).
        """
        keys = nodes if isinstance(nodes, PointerKeys) else self.project_nodes(nodes)
        self._check(query, keys, feasible)
        if score_bias is not None and tuple(score_bias.shape) != tuple(feasible.shape):
            raise ValueError(f"score_bias must be [B, m, N] = {tuple(feasible.shape)}, got {tuple(score_bias.shape)}")
        g = self.glimpse(query, keys, feasible)
        if keys.logit_k.shape[1] == 1:
            u = g @ keys.logit_k[:, 0].transpose(-1, -2)
        else:
            u = (g[..., None, :] @ keys.logit_k.transpose(-1, -2)).squeeze(-2)
        u = u / math.sqrt(self.d_model)
        if score_bias is not None:
            u = u + score_bias
        if self.tanh_clipping is not None:
            u = self.tanh_clipping * torch.tanh(u)
        return u.masked_fill(~feasible, float("-inf"))


def joint_log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """logits [B, m, N] -> log P_{k,i} [B, m, N], one softmax over all m·N (agent, node) pairs."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, m, N], got {tuple(logits.shape)}")
    B, m, N = logits.shape
    return torch.log_softmax(logits.reshape(B, m * N), dim=-1).view(B, m, N)


def resolve_conflicts(choice, joint_prob, fallback, shareable=None):
    """At most one agent per non-shareable node: the highest joint_prob wins (ties: lower index).

    choice, fallback [B, m] long; joint_prob [B, m]; shareable [B, N] bool or None.
    Returns (action [B, m], kept [B, m] bool).
    """
    m = choice.shape[1]
    same = choice[:, :, None] == choice[:, None, :]  # [B, k, j]
    if shareable is not None:
        same = same & ~torch.gather(shareable, 1, choice)[:, :, None]
    idx = torch.arange(m, device=choice.device)
    pk, pj = joint_prob[:, :, None], joint_prob[:, None, :]
    beaten = (pj > pk) | ((pj == pk) & (idx[None, None, :] < idx[None, :, None]))
    kept = ~(same & beaten).any(-1)
    return torch.where(kept, choice, fallback), kept


def select_actions(logits, *, fallback, mode: str = "greedy", shareable=None, generator=None) -> PointerActions:
    """Parallel actions of m agents from masked pointer logits [B, m, N] (see the module docstring).

    fallback [B, m] long: the node an agent takes when it loses a conflict.
    shareable [B, N] bool: nodes several agents may take at once (a depot); None = none.
    mode "greedy" (argmax of each agent's row) or "sampling".
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, m, N], got {tuple(logits.shape)}")
    B, m, N = logits.shape
    if mode not in ("greedy", "sampling"):
        raise ValueError(f"mode must be 'greedy' or 'sampling', got {mode!r}")
    if fallback.dtype != torch.long or tuple(fallback.shape) != (B, m):
        raise ValueError(f"fallback must be long [B, m] = {(B, m)}, got {fallback.dtype} {tuple(fallback.shape)}")
    if bool(((fallback < 0) | (fallback >= N)).any()):
        raise ValueError(f"fallback node indices must lie in [0, {N})")
    if shareable is not None and (shareable.dtype != torch.bool or tuple(shareable.shape) != (B, N)):
        raise ValueError(f"shareable must be bool [B, N] = {(B, N)}")
    if not bool(torch.isfinite(logits).any(-1).all()):
        raise ValueError("every agent needs at least one feasible (finite-logit) node")
    joint = joint_log_softmax(logits)
    row = torch.log_softmax(logits, dim=-1)  # log P(i | k)
    if mode == "greedy":
        choice = row.argmax(-1)
    else:
        choice = torch.multinomial(row.exp().reshape(B * m, N), 1, generator=generator).view(B, m)
    choice_lp = torch.gather(row, 2, choice[..., None]).squeeze(-1)
    joint_prob = torch.gather(joint, 2, choice[..., None]).squeeze(-1).exp()
    action, kept = resolve_conflicts(choice, joint_prob.detach(), fallback, shareable)
    return PointerActions(choice, action, kept, choice_lp, choice_lp.sum(-1), joint_prob)


class AgentCommunication(nn.Module):
    """CAMP's communication layer: q [B, m, d] -> q + MHA across agents, then + SwiGLU (pre-RMSNorm)."""

    def __init__(self, d_model: int, *, n_heads: int = 4, mlp_ratio: float = 2.0):
        super().__init__()
        mixer = build("softmax", d_model=d_model, n_heads=n_heads, causal=False, rope=False)
        self.block = Block(mixer, d_model, mlp_ratio)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        if q.dim() != 3:
            raise ValueError(f"agent queries must be [B, m, d], got {tuple(q.shape)}")
        return self.block(q)[0]
