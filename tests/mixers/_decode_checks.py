"""Decoding checks shared by the mixer tests: a decode run against the whole sequence in one call (moba, nsa,
mla, path_attn), and for the block-selecting attentions (moba, nsa) a ragged prefill's continuation and the
compiled-decode rule."""

from __future__ import annotations

import dataclasses

import torch


def check_compiled_decode_rule(monkeypatch, module, m):
    """Under torch.compile (module.compiling() True) a mixer reads no host value: it recomputes every
    cached block summary instead of skipping the cached ones. That path, run eagerly, must equal the
    cached one, output and every state field, on rows whose seen counts differ. m: a float64 eval mixer
    of d_model 32."""
    x = torch.randn(2, 14, 32, dtype=torch.float64)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[0, 6:] = False  # row 0 has seen 6 tokens, row 1 eleven
    with torch.no_grad():
        _, state = m(x[:, :11], mask=mask, return_state=True)
        y, s = m(x[:, 11:], state=state, return_state=True)
        monkeypatch.setattr(module, "compiling", lambda: True)
        yc, sc = m(x[:, 11:], state=state, return_state=True)
    torch.testing.assert_close(yc, y, rtol=1e-12, atol=1e-12)
    for f in dataclasses.fields(s):
        torch.testing.assert_close(getattr(sc, f.name), getattr(s, f.name), rtol=1e-12, atol=1e-12)


def assert_decode_equals_whole(m, x, mask=None, prefill=0):
    """m (an eval mixer) on all of x in one call, then on its first `prefill` tokens in one call (0: none)
    and on the rest one token at a time, the state carried (no gradients): the outputs agree within 1e-10,
    at the tokens that mask keeps when one is given. Returns the one call's output and state, and the
    last step's state."""
    masked = (lambda a, b: {}) if mask is None else (lambda a, b: {"mask": mask[:, a:b]})
    T = x.shape[1]
    with torch.no_grad():
        full, s_full = m(x, **masked(0, T), return_state=True)
        ys, s = [], None
        if prefill:
            y, s = m(x[:, :prefill], **masked(0, prefill), return_state=True)
            ys.append(y)
        for t in range(prefill, T):
            y, s = m(x[:, t: t + 1], **masked(t, t + 1), state=s, return_state=True)
            ys.append(y)
    y = torch.cat(ys, 1)
    keep = slice(None) if mask is None else mask
    torch.testing.assert_close(y[keep], full[keep], rtol=1e-10, atol=1e-10)
    return full, s_full, s


def check_ragged_padding_then_continuation(m, T, n_next, hole):
    """m: a float64 eval mixer of d_model 32. x [2, T], the continuation nxt [2, n_next] and 3 padding
    tokens drawn in that order from the global generator. Row 0 gets the 3 tokens as left padding, row 1 a
    hole of 3 zero tokens after `hole` tokens (both masked); the padded prefill's outputs at the kept
    tokens, and the continuation from its state, equal the unpadded run of x then nxt (1e-10)."""
    x = torch.randn(2, T, 32, dtype=torch.float64)
    nxt = torch.randn(2, n_next, 32, dtype=torch.float64)
    xp = torch.cat([torch.randn(2, 3, 32, dtype=torch.float64), x], 1)
    mask = torch.ones(2, T + 3, dtype=torch.bool)
    mask[0, :3] = False
    xp[1] = torch.cat([x[1, :hole], torch.zeros(3, 32, dtype=torch.float64), x[1, hole:]], 0)
    mask[1, hole:hole + 3] = False
    with torch.no_grad():
        want = m(torch.cat([x, nxt], 1))
        yp, s = m(xp, mask=mask, return_state=True)
        y2 = m(nxt, state=s)
    torch.testing.assert_close(yp[0, 3:], want[0, :T], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(yp[1, mask[1]], want[1, :T], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y2, want[:, T:], rtol=1e-10, atol=1e-10)
