"""The pieces of sequence parallelism in one process: the delta rule's shard map (WY chunk form) and
GLA's against plain loops, the two-level prefix of affine maps, the halo's 'keep the last W-1' product,
the ops on a group of one, and the errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnzoo.ops.delta import delta_rule
from attnzoo.ops.linear import gated_linear_attention
from attnzoo.parallel import SCHEMES, sequence_parallel, shard_bounds
from attnzoo.parallel import delta_rule as sp_delta_rule
from attnzoo.parallel import gated_linear_attention as sp_gla
from attnzoo.parallel.delta_map import affine_prefix, delta_shard_map
from attnzoo.parallel.gla import gla_shard_map
from attnzoo.parallel.halo import combine_tails, local_tail

f64 = torch.float64
B, H, K, V = 2, 2, 5, 3


def _delta_inputs(T, gated, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen, dtype=f64)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen, dtype=f64), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen, dtype=f64)
    beta = torch.sigmoid(torch.randn(B, T, H, generator=gen, dtype=f64))
    g = -3.0 * torch.rand(B, T, H, generator=gen, dtype=f64) if gated else None
    return q, k, v, beta, g


def _delta_loop(q, k, v, beta, g):
    """A = Π exp(g)(I - β k kᵀ), B = the end state from zero, Q̃_t = q_tᵀ Π_{s<=t}: one token at a time."""
    T = q.shape[1]
    eye = torch.eye(K, dtype=f64).expand(B, H, K, K)
    P, S, rows = eye.clone(), torch.zeros(B, H, K, V, dtype=f64), []
    for t in range(T):
        kt = k[:, t]
        Ft = eye - beta[:, t, :, None, None] * kt[..., :, None] * kt[..., None, :]
        if g is not None:
            Ft = torch.exp(g[:, t])[..., None, None] * Ft
        P = Ft @ P
        S = Ft @ S + beta[:, t, :, None, None] * kt[..., :, None] * v[:, t][..., None, :]
        rows.append(torch.einsum("bhk,bhkj->bhj", q[:, t], P))
    return P, S, torch.stack(rows, 1)


@pytest.mark.parametrize("T,chunk", [(1, 64), (7, 3), (37, 8), (64, 16), (65, 64)])
@pytest.mark.parametrize("gated", [False, True])
def test_delta_shard_map_equals_the_loop(T, chunk, gated):
    x = _delta_inputs(T, gated)
    A, Bm, Qt = delta_shard_map(*x, chunk=chunk)
    A_ref, B_ref, Q_ref = _delta_loop(*x)
    for have, want in ((A, A_ref), (Bm, B_ref), (Qt, Q_ref)):
        torch.testing.assert_close(have, want, rtol=1e-12, atol=1e-12)


def test_delta_shard_map_equals_the_op_run_on_identity_columns():
    """Columns of the state evolve independently: the op from S0 = [0 | I] on values [v | 0] returns
    [o_local | scale Q̃] and the final state [B | A]."""
    q, k, v, beta, g = _delta_inputs(29, True, seed=3)
    A, Bm, Qt = delta_shard_map(q, k, v, beta, g, chunk=8)
    S0 = torch.cat([torch.zeros(B, H, K, V, dtype=f64), torch.eye(K, dtype=f64).expand(B, H, K, K)], -1)
    o, S = delta_rule(q, k, torch.cat([v, torch.zeros(B, 29, H, K, dtype=f64)], -1), beta, g, scale=1.0,
                      initial_state=S0, output_final_state=True, impl="torch")
    torch.testing.assert_close(S[..., V:], A, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(S[..., :V], Bm, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(o[..., V:], Qt, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("N", [1, 2, 3, 4, 5, 9, 10, 17])
def test_affine_prefix_equals_the_sequential_composition(N):
    gen = torch.Generator().manual_seed(N)
    A = 0.5 * torch.randn(3, N, 4, 4, generator=gen, dtype=f64)
    Bm = torch.randn(3, N, 4, 2, generator=gen, dtype=f64)
    P, R = affine_prefix(A, Bm)
    p, r = torch.eye(4, dtype=f64).expand(3, 4, 4), torch.zeros(3, 4, 2, dtype=f64)
    for n in range(N):
        p, r = A[:, n] @ p, A[:, n] @ r + Bm[:, n]
        torch.testing.assert_close(P[:, n], p, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(R[:, n], r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gate", [None, "scalar", "vector", "gamma"])
def test_gla_shard_map_is_the_affine_map_of_the_op(gate):
    """S_T = A S0 + B and o(S0) - o(0) = M S0 for the single-device op, with strong decays too."""
    gen = torch.Generator().manual_seed(1)
    T = 19
    q, k = (torch.randn(B, T, H, K, generator=gen, dtype=f64) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen, dtype=f64)
    g = {"scalar": -8 * torch.rand(B, T, H, generator=gen, dtype=f64),
         "vector": F.logsigmoid(torch.randn(B, T, H, K, generator=gen, dtype=f64))}.get(gate)
    gamma = torch.tensor([-0.1, -3.0], dtype=f64) if gate == "gamma" else None
    S0 = torch.randn(B, H, K, V, generator=gen, dtype=f64)
    A, Bm, M = gla_shard_map(q, k, v, g, gamma, scale=0.7)
    o0, S_0 = gated_linear_attention(q, k, v, g, g_gamma=gamma, scale=0.7, output_final_state=True)
    o1, S_1 = gated_linear_attention(q, k, v, g, g_gamma=gamma, scale=0.7, initial_state=S0, output_final_state=True)
    torch.testing.assert_close(Bm, S_0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(S0 if A is None else A * S0, S_1 - S_0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.einsum("bthk,bhkv->bthv", M, S0), o1 - o0, rtol=1e-10, atol=1e-12)


def test_halo_product_keeps_the_last_real_inputs_across_shards():
    gen = torch.Generator().manual_seed(0)
    keep, C = 3, 2
    for _ in range(30):
        parts = [torch.randn(1, int(n), C, generator=gen, dtype=f64) for n in torch.randint(1, 6, (4,), generator=gen)]
        masks = [torch.rand(1, p.shape[1], generator=gen) < 0.5 for p in parts]
        acc, n_acc = torch.zeros(1, keep, C, dtype=f64), torch.tensor([keep])  # (zeros, keep): a fresh sequence
        real_rows = [torch.zeros(C, dtype=f64)] * keep  # brute force: every real row so far, in order
        for p, m in zip(parts, masks):
            tail, n = local_tail(p, m, keep)
            acc, n_acc = combine_tails(acc, n_acc, tail, n, keep)
            real_rows = real_rows + [p[0, t] for t in range(p.shape[1]) if m[0, t]]
            torch.testing.assert_close(acc[0], torch.stack(real_rows[-keep:]), rtol=0, atol=0)
    # associativity: (a·b)·c == a·(b·c), which the log-step scan relies on
    a, b, c = (local_tail(p, m, keep) for p, m in zip(parts[:3], masks[:3]))
    ab_c = combine_tails(*combine_tails(*a, *b, keep), *c, keep)
    a_bc = combine_tails(*a, *combine_tails(*b, *c, keep), keep)
    torch.testing.assert_close(ab_c[0], a_bc[0], rtol=0, atol=0)
    assert torch.equal(ab_c[1], a_bc[1])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_group_of_one_is_the_single_device_op(scheme):
    q, k, v, beta, g = (t.requires_grad_() if t is not None else t for t in _delta_inputs(9, True, seed=5))
    S0 = torch.randn(B, H, K, V, dtype=f64, requires_grad=True)
    for fn, args in ((sp_delta_rule, (q, k, v, beta, g)), (sp_gla, (q, k, v, g))):
        o1, S1 = fn(*args, initial_state=S0, output_final_state=True, scheme=scheme)
        ref = delta_rule if fn is sp_delta_rule else gated_linear_attention
        o0, S_0 = ref(*args, initial_state=S0, output_final_state=True)
        torch.testing.assert_close(o1, o0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(S1, S_0, rtol=1e-12, atol=1e-12)
        g1 = torch.autograd.grad((o1 ** 2).sum() + S1.sum(), [q, k, S0])
        g0 = torch.autograd.grad((o0 ** 2).sum() + S_0.sum(), [q, k, S0])
        for a, b in zip(g1, g0):
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


def test_shard_bounds_cover_the_sequence_in_order():
    for T in (1, 5, 17, 64):
        for world in (1, 2, 3, 4, 7):
            bounds = [shard_bounds(T, world, r) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == T
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="scheme must be one of"):
        with sequence_parallel(scheme="tree"):
            pass
    with pytest.raises(ValueError, match="pieces must be an int >= 1"):
        with sequence_parallel(pieces=0):
            pass
    with pytest.raises(ValueError, match="timeout must be a positive"):
        with sequence_parallel(timeout=0):
            pass
    with pytest.raises(ValueError, match="not initialised"):
        with sequence_parallel(group=object()):
            pass
    from attnzoo.ops.softmax import softmax_attention

    q = torch.randn(1, 2, 2, 4)
    with sequence_parallel(), pytest.raises(ValueError, match="KV cache"):
        softmax_attention(q, torch.randn(1, 5, 2, 4), torch.randn(1, 5, 2, 4), causal=True)
