"""Checks shared by the mixer tests of the block-selecting attentions (moba, nsa)."""

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
