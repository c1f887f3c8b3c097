"""ttt_linear: TTT-Linear's test-time-training recurrence (Sun et al. 2024, "Learning to (Learn at Test
Time): RNNs with Expressive Hidden States", arXiv:2407.04620).

    o, state = ttt_linear(q, k, v, eta, ln_weight, ln_bias, *, mini_batch=16, initial_state=None, mask=None,
                          output_final_state=False, impl="auto")

The hidden state is a linear inner model W [D, D + 1] (weights and bias) inside f(x; W) = x + LN(W [x; 1]),
trained as the sequence is read by gradient descent on ℓ(W; k_t, v_t) = ½ |f(k_t; W) − v_t|² (the paper's
reconstruction loss with θ_K x_t, θ_V x_t as k_t, v_t), in mini-batches of b real tokens whose gradients are
all taken at the weights W' the mini-batch started from:

    W_t = W_{t-1} − η_t ∇_W ℓ(W'; k_t, v_t),    o_t = f(q_t; W_t)          (b = 1: online GD, W' = W_{t-1})

q, k, v [B, T, H, D]; eta [B, T, H] (>= 0, per token and head); ln_weight, ln_bias [H, D] (the inner LN);
mask [B, T] bool or None (padded tokens change nothing and output 0). The state is a tuple
(W' [B, H, D, D + 1], W [B, H, D, D + 1], seen [B] int64: real tokens read, which fixes where the open
mini-batch stands); initial_state None means W' = W = 0, seen = 0 (a mixer passes its learned W_0).
Returns (o [B, T, H, D] in q's dtype, the final state or None). The state is float32 (float64 for float64
inputs).

impl: "reference" (reference.py, the token loop), "torch" (minibatch.py, the dual form one mini-batch at a
time), "auto" (= "torch").
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.dispatch import resolve_impl
from attnzoo.ops.common.precision import without_autocast


def check_ttt_inputs(q, k, v, eta, ln_weight, ln_bias, mini_batch, initial_state, mask) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must all be [B, T, H, D]; got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    B, T, H, D = q.shape
    if tuple(eta.shape) != (B, T, H):
        raise ValueError(f"eta must be [B, T, H] = {(B, T, H)}, got {tuple(eta.shape)}")
    for name, t in (("ln_weight", ln_weight), ("ln_bias", ln_bias)):
        if tuple(t.shape) != (H, D):
            raise ValueError(f"{name} must be [H, D] = {(H, D)}, got {tuple(t.shape)}")
    if isinstance(mini_batch, bool) or not isinstance(mini_batch, int) or mini_batch < 1:
        raise ValueError(f"mini_batch must be a positive int, got {mini_batch!r}")
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (B, T)):
        raise ValueError(f"mask must be bool [B, T] = {(B, T)}, got {mask.dtype} {tuple(mask.shape)}")
    if initial_state is not None:
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 3:
            raise ValueError("initial_state must be a tuple (W' [B, H, D, D + 1], W [B, H, D, D + 1], seen [B])")
        base, W, seen = initial_state
        for name, t in (("W'", base), ("W", W)):
            if tuple(t.shape) != (B, H, D, D + 1):
                raise ValueError(f"initial_state's {name} must be [B, H, D, D + 1] = {(B, H, D, D + 1)}, "
                                 f"got {tuple(t.shape)}")
        if tuple(seen.shape) != (B,) or seen.dtype != torch.long:
            raise ValueError(f"initial_state's seen must be int64 [B] = [{B}], got {seen.dtype} {tuple(seen.shape)}")


@without_autocast
def ttt_linear(q, k, v, eta, ln_weight, ln_bias, *, mini_batch=16, initial_state=None, mask=None,
               output_final_state=False, impl="auto"):
    """TTT-Linear (module docstring: the update, shapes, state, impl).

    Example:
        >>> B, T, H, D = 2, 20, 2, 8
        >>> q, k, v = (torch.randn(B, T, H, D) for _ in range(3))
        >>> eta = torch.full((B, T, H), 0.1)
        >>> o, (Wb, W, seen) = ttt_linear(q, k, v, eta, torch.ones(H, D), torch.zeros(H, D), mini_batch=8,
        ...                               output_final_state=True)
        >>> o.shape, W.shape, seen.tolist()
        (torch.Size([2, 20, 2, 8]), torch.Size([2, 2, 8, 9]), [20, 20])
        >>> o_ref, _ = ttt_linear(q, k, v, eta, torch.ones(H, D), torch.zeros(H, D), mini_batch=8, impl="reference")
        >>> torch.allclose(o, o_ref, atol=1e-5)
        True
    """
    check_ttt_inputs(q, k, v, eta, ln_weight, ln_bias, mini_batch, initial_state, mask)
    if impl == "triton":
        raise ValueError('ttt_linear has no Triton kernel: impl must be "auto", "reference" or "torch"')
    impl = resolve_impl(impl, q)
    if impl == "reference":
        from attnzoo.ops.ttt.reference import ttt_linear_reference as fn
    else:
        from attnzoo.ops.ttt.minibatch import minibatch_ttt_linear as fn
    return fn(q, k, v, eta, ln_weight, ln_bias, mini_batch=mini_batch, initial_state=initial_state, mask=mask,
              output_final_state=output_final_state)
