"""TTT-Linear's op (Sun et al. 2024, arXiv:2407.04620): a linear inner model with LayerNorm and residual,
f(x; W) = x + LN(W [x; 1]), trained by mini-batch gradient descent on the reconstruction loss as it reads."""

from attnzoo.ops.ttt.api import ttt_linear

__all__ = ["ttt_linear"]
