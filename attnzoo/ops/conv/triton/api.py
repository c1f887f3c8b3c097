"""Triton short causal depthwise conv: the entry point, its checks and its autograd.

    y = triton_short_conv(x, weight, bias=None, *, initial_state=None, activation=None)

x [B, T, C] (float16 / bfloat16 / float32, contiguous [B, T, C] is used as is); weight [C, W] in F.conv1d's
order (oldest tap first), W <= MAX_W; bias [C] or None; initial_state [B, W-1, C] (the W-1 previous inputs)
or None (zeros); activation None or "silu"; y [B, T, C] in x's dtype:

    y_t = act(b + Σ_{j<W} w[:, j] ⊙ x_{t-W+1+j})        (x_s = initial_state[:, W-1+s] for s < 0)

The causal depthwise conv of H3 (arXiv:2212.14052) and Mamba (arXiv:2312.00752); kernels.py has the
backward's formulas. Accumulation in float32; the weight and bias are read in their own dtype (not rounded
to x's); dweight / dbias are float32 partial sums per program, summed by torch (deterministic).

Under torch.compile the op is the torch.library custom op `attnzoo::short_conv` (backward
`attnzoo::short_conv_backward`), one opaque node; in eager mode the same kernels run from a plain
autograd.Function whose vmap rule (torch.func.vmap, attnzoo.train.group) folds the vmapped dim into the
batch (weights shared) or into the channels (weights per member: a depthwise conv's channels are
independent). Nothing is kept beyond the inputs: the backward recomputes the pre-activation. Masks, the
final state and the decode cache are the caller's (ops/conv/api.py): the kernel sees real tokens first.
"""

from __future__ import annotations

from typing import Optional

import torch

from attnzoo.ops.common.dispatch import triton_interpret
from attnzoo.ops.common.opaque import compiling
from attnzoo.ops.common.tiles import MAX_GRID_YZ, cdiv, next_pow2

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_W = 8
# tile sizes: BLOCK_T x BLOCK_C (forward), BWD_BLOCK_T x BLOCK_C (backward; BWD_ROWS rows per program, so the
# dweight buffer holds B * cdiv(T + W - 1, BWD_ROWS) partial sums of [C, W]). Chosen from the registers ptxas
# reports for sm_90 (W = 4, SiLU, bf16), then timed on an H100 (benchmarks/results/short_conv/, [4, 4096, 6144]
# bf16): the first choice (BLOCK_T 16, BLOCK_C 128, BWD_BLOCK_T 8, BWD_ROWS 128, 4 warps) took 0.184 / 2.533 ms
# fwd / fwd+bwd, this one 0.194 / 1.286 (a backward 2x faster: longer row strips, fewer dweight partial sums).
TUNE = {"BLOCK_T": 16, "BLOCK_C": 64, "BWD_BLOCK_T": 16, "BWD_ROWS": 512, "num_warps": 2}


def _limits(x, weight) -> str | None:
    """What the kernel cannot take, or None (read by triton_short_supported and _check)."""
    if x.dtype not in DTYPES or weight.dtype not in DTYPES:
        return f"needs x and weight in {DTYPES}, got {x.dtype}, {weight.dtype}"
    if weight.dim() != 2 or not 1 <= weight.shape[1] <= MAX_W:
        return f"needs weight [C, W] with 1 <= W <= {MAX_W}, got {tuple(weight.shape)} (impl='torch' takes any W)"
    if x.dim() == 3 and x.shape[1] * x.shape[2] >= 2 ** 31:
        return f"needs T * C < 2^31 (int32 offsets inside a sequence), got T={x.shape[1]}, C={x.shape[2]}"
    if x.dim() == 3 and x.shape[0] > MAX_GRID_YZ:
        return f"needs B <= {MAX_GRID_YZ} sequences (the grid's third axis), got {x.shape[0]}"
    return None


def triton_short_supported(x, weight) -> bool:
    """Inputs the kernel takes (the device is dispatch's business): dtypes, W <= MAX_W, T >= 1."""
    return x.dim() == 3 and _limits(x, weight) is None and x.shape[1] > 0


def _check(x, weight, bias, initial_state, activation):
    if x.dim() != 3:
        raise ValueError(f"x must be [B, T, C], got shape {tuple(x.shape)}")
    B, T, C = x.shape
    limit = _limits(x, weight)
    if limit is not None:
        raise ValueError(f"triton short conv {limit}")
    if weight.shape[0] != C:
        raise ValueError(f"weight must be [C, W] = [{C}, W], got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (C,):
        raise ValueError(f"bias must be [C] = [{C}], got {tuple(bias.shape)}")
    W = weight.shape[1]
    if initial_state is not None and tuple(initial_state.shape) != (B, W - 1, C):
        raise ValueError(f"initial_state must be [B, W-1, C] = {(B, W - 1, C)}, got {tuple(initial_state.shape)}")
    if activation not in (None, "silu"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    if T == 0:
        raise ValueError("triton short conv needs T >= 1 (impl='torch' takes empty sequences)")
    if not (x.is_cuda or triton_interpret()):
        raise ValueError("triton short conv needs CUDA tensors (or TRITON_INTERPRET=1)")


def _blocks(T, C, W, key="BLOCK_T"):
    """(rows per tile, channels per tile, rows per backward program) for this shape."""
    bt = min(TUNE[key], next_pow2(T + W - 1))
    return bt, min(TUNE["BLOCK_C"], next_pow2(C)), max(bt, TUNE["BWD_ROWS"] // bt * bt)


def _flags(x, bias, state, silu):
    # a placeholder pointer where there is no bias / state (never read: HAS_BIAS / HAS_STATE are off)
    return (x if bias is None else bias), (x if state is None else state), dict(
        HAS_BIAS=bias is not None, HAS_STATE=state is not None, SILU=bool(silu))


def _fwd(x, weight, bias, state, silu):
    from attnzoo.ops.conv.triton.kernels import short_conv_fwd_kernel

    B, T, C = x.shape
    W = weight.shape[1]
    bt, bc, _ = _blocks(T, C, W)
    y = torch.empty_like(x)
    b_arg, s_arg, flags = _flags(x, bias, state, silu)
    grid = (cdiv(T, bt), cdiv(C, bc), B)
    short_conv_fwd_kernel[grid](x, weight, b_arg, s_arg, y, T, C, W=W, BT=bt, BC=bc,
                                num_warps=TUNE["num_warps"], **flags)
    return y


def _bwd(x, weight, bias, state, silu, dy):
    from attnzoo.ops.conv.triton.kernels import short_conv_bwd_kernel

    B, T, C = x.shape
    W = weight.shape[1]
    bt, bc, rows = _blocks(T, C, W, "BWD_BLOCK_T")
    n_t = cdiv(T + W - 1, rows)
    dx = torch.empty_like(x)
    ds = torch.empty_like(state) if state is not None else None
    dw = x.new_empty(B * n_t, C, W, dtype=torch.float32)
    db = x.new_empty(B * n_t, C, dtype=torch.float32) if bias is not None else None
    b_arg, s_arg, flags = _flags(x, bias, state, silu)
    short_conv_bwd_kernel[(n_t, cdiv(C, bc), B)](
        x, weight, b_arg, s_arg, dy, dx, x if ds is None else ds, dw, dw if db is None else db, T, C, W=W,
        BT=bt, BC=bc, ROWS=rows, WP=next_pow2(W), num_warps=TUNE["num_warps"], **flags)
    dw = dw.sum(0).to(weight.dtype)
    return dx, dw, (db.sum(0).to(bias.dtype) if db is not None else None), ds


@torch.library.custom_op("attnzoo::short_conv", mutates_args=())
def short_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],  # noqa: UP045
               initial_state: Optional[torch.Tensor], silu: bool) -> torch.Tensor:  # noqa: UP045
    return _fwd(x, weight, bias, initial_state, silu)


@short_conv.register_fake
def _(x, weight, bias, initial_state, silu):
    return torch.empty_like(x)


@torch.library.custom_op("attnzoo::short_conv_backward", mutates_args=())
def short_conv_backward(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],  # noqa: UP045
    initial_state: Optional[torch.Tensor], silu: bool, dy: torch.Tensor,  # noqa: UP045
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dw, db, ds = _bwd(x, weight, bias, initial_state, silu, dy)
    empty = lambda: x.new_empty(0)  # noqa: E731 (outputs must not alias)
    return dx, dw, (db if db is not None else empty()), (ds if ds is not None else empty())


@short_conv_backward.register_fake
def _(x, weight, bias, initial_state, silu, dy):
    db = torch.empty_like(bias) if bias is not None else x.new_empty(0)
    ds = torch.empty_like(initial_state) if initial_state is not None else x.new_empty(0)
    return torch.empty_like(x), torch.empty_like(weight), db, ds


def _setup_context(ctx, inputs, output):
    x, weight, bias, initial_state, silu = inputs
    ctx.save_for_backward(x, weight, bias, initial_state)
    ctx.silu = silu


def _backward(ctx, dy):
    x, weight, bias, state = ctx.saved_tensors
    dx, dw, db, ds = short_conv_backward(x, weight, bias, state, ctx.silu, dy.contiguous())
    return dx, dw, (db if bias is not None else None), (ds if state is not None else None), None


short_conv.register_autograd(_backward, setup_context=_setup_context)


class _EagerShortConv(torch.autograd.Function):
    """The custom op's pass for eager mode, with a vmap rule: apply(x, weight, bias, state, silu) -> y."""

    @staticmethod
    def forward(x, weight, bias, initial_state, silu):
        return _fwd(x, weight, bias, initial_state, silu)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs, output)

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, state = ctx.saved_tensors
        dx, dw, db, ds = _bwd(x, weight, bias, state, ctx.silu, dy.contiguous())
        return dx, dw, db, ds, None

    @staticmethod
    def vmap(info, in_dims, x, weight, bias, initial_state, silu):
        G = info.batch_size
        lead = lambda t, d: None if t is None else (t.movedim(d, 0) if d is not None else t.expand(G, *t.shape))  # noqa: E731
        x, state = lead(x, in_dims[0]), lead(initial_state, in_dims[3])
        B, T, C = x.shape[1:]
        if in_dims[1] is None and in_dims[2] is None:  # shared weights: the members are more batch rows
            rows = lambda t: None if t is None else t.reshape(G * B, *t.shape[2:]).contiguous()  # noqa: E731
            y = _EagerShortConv.apply(rows(x), weight, bias, rows(state), silu)
            return y.reshape(G, B, T, C), 0
        # weights per member: the members are more channels, [G, B, n, C] -> [B, n, G * C]
        chans = lambda t: None if t is None else t.permute(1, 2, 0, 3).reshape(B, t.shape[2], G * C)  # noqa: E731
        weight, bias = lead(weight, in_dims[1]), lead(bias, in_dims[2])
        y = _EagerShortConv.apply(chans(x).contiguous(), weight.reshape(G * C, -1).contiguous(),
                                  None if bias is None else bias.reshape(G * C).contiguous(),
                                  None if state is None else chans(state).contiguous(), silu)
        return y.reshape(B, T, G, C).permute(2, 0, 1, 3), 0


def triton_short_conv(x, weight, bias=None, *, initial_state=None, activation=None):
    """The short causal conv (module docstring): y [B, T, C] in x's dtype."""
    _check(x, weight, bias, initial_state, activation)
    # W = 1 keeps no previous inputs: its [B, 0, C] state (no memory on a GPU) is not passed
    state = initial_state.to(x.dtype).contiguous() if initial_state is not None and weight.shape[1] > 1 else None
    args = (x.contiguous(), weight.contiguous(), None if bias is None else bias.contiguous(), state,
            activation == "silu")
    return short_conv(*args) if compiling() else _EagerShortConv.apply(*args)
