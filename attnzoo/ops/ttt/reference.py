"""The truth for TTT-Linear: a loop over tokens with the paper's mini-batch semantics (float64 for
float64 inputs, else float32), the gradient in closed form (inner.py).

For each real token t (mask True; a padded token changes nothing and outputs 0), with W' the weights at
the end of the last complete mini-batch of b real tokens (W' = W at every token when b = 1: online GD):

    W_t = W_{t-1} − η_t ∇_W ℓ(W'; k_t, v_t),    o_t = f(q_t; W_t) = q_t + LN(W_t [q_t; 1])

and W' <- W_t once the real tokens seen (`seen`, carried in the state) reach a multiple of b.
Same arguments as the public op (api.py) less impl.
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.precision import compute_dtype
from attnzoo.ops.ttt.inner import inner_output, loss_grad_z, with_one


def ttt_linear_reference(q, k, v, eta, ln_weight, ln_bias, *, mini_batch=16, initial_state=None, mask=None,
                         output_final_state=False):
    B, T, H, D = q.shape
    ct = compute_dtype(q, k, v, eta, ln_weight, ln_bias, *(initial_state or (None, None))[:2])
    qf, kf, vf, ef = q.to(ct), k.to(ct), v.to(ct), eta.to(ct)
    w, b = ln_weight.to(ct), ln_bias.to(ct)  # [H, D] against [B, H, D]
    if initial_state is None:
        base = W = torch.zeros(B, H, D, D + 1, dtype=ct, device=q.device)
        seen = torch.zeros(B, dtype=torch.long, device=q.device)
    else:
        base, W, seen = initial_state[0].to(ct), initial_state[1].to(ct), initial_state[2]
    real = torch.ones(B, T, dtype=torch.bool, device=q.device) if mask is None else mask
    outs = []
    for qt, kt, vt, et, rt in zip(qf.unbind(1), kf.unbind(1), vf.unbind(1), ef.unbind(1), real.unbind(1)):
        k1 = with_one(kt)  # [B, H, D + 1]
        z = (base @ k1[..., None])[..., 0]  # every gradient of a mini-batch is taken at W'
        gz = loss_grad_z(kt, vt, z, w, b)
        W = torch.where(rt[:, None, None, None], W - et[..., None, None] * gz[..., :, None] * k1[..., None, :], W)
        seen = seen + rt.long()
        base = torch.where((rt & (seen % mini_batch == 0))[:, None, None, None], W, base)
        outs.append(torch.where(rt[:, None, None], inner_output(qt, W, w, b), torch.zeros((), dtype=ct)))
    o = torch.stack(outs, 1).to(q.dtype)
    return o, ((base, W, seen) if output_final_state else None)
