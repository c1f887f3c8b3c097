"""Selective scan (Mamba-1): h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t, y_t = C_t · h_t + D x_t."""

from attnzoo.ops.scan.api import selective_scan

__all__ = ["selective_scan"]
