"""An alpha-beta model of the state scans: latency and bytes per rank for All-Scan, ring and all-gather.

A message of m bytes between two ranks costs alpha + m·beta (alpha: latency, beta: seconds per byte,
1 / bandwidth); combining a received piece with the local map costs gamma per byte (small on a GPU).
For one scan (forward, or the reverse in the backward) of a state of M bytes over P ranks:

    allscan   (M cut into n pieces, pipelined):   (P + n - 2) · (alpha + (M / n)(beta + gamma))
    ring      (LASP-1: the whole state per hop):  (P - 1) · (alpha + M (beta + gamma))
    allgather (LASP-2: ring all-gather of the     (P - 1) · (alpha + m beta) + (P - 1) M gamma_fold
               map and state, m = M + map bytes)

(the last rank waits for piece n-1, which left rank 0 (n-1) piece-times after piece 0 and then
crossed P-1 hops). Bytes each rank sends per scan: M for allscan and ring (one state, whatever P),
(P - 1)·m for the all-gather (every rank's state reaches every rank). A fwd+bwd runs two scans; the
all-gather's backward gathers only the states (m = M: the maps are kept from the forward).

Across nodes a chain's hop time is its slowest link's: `Link` describes one (alpha, bandwidth), and
`predict` uses the intra-node link up to `gpus_per_node` ranks and the inter-node link beyond.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Link:
    name: str
    alpha: float          # seconds per message
    bandwidth: float      # bytes per second (one direction, one GPU)
    gamma: float = 0.0    # seconds per byte to combine a received piece

    @property
    def beta(self) -> float:
        return 1.0 / self.bandwidth


def scan_seconds(scheme: str, P: int, state_bytes: float, *, alpha: float, beta: float, gamma: float = 0.0,
                 pieces: int = 4, map_bytes: float = 0.0, backward: bool = False) -> float:
    """Predicted seconds of one scan (module docstring); P = 1 costs nothing."""
    if P <= 1:
        return 0.0
    M = float(state_bytes)
    if scheme == "allscan":
        n = max(1, pieces)
        return (P + n - 2) * (alpha + (M / n) * (beta + gamma))
    if scheme == "ring":
        return (P - 1) * (alpha + M * (beta + gamma))
    if scheme == "allgather":
        m = M if backward else M + map_bytes
        return (P - 1) * (alpha + m * beta) + (P - 1) * M * gamma
    raise ValueError(f"scheme must be allscan, ring or allgather, got {scheme!r}")


def bytes_per_rank(scheme: str, P: int, state_bytes: float, *, map_bytes: float = 0.0) -> float:
    """Bytes the busiest rank sends in a fwd+bwd (forward scan plus reverse scan): for the chain a
    middle rank, which forwards one state each way (with P = 2 each rank sends once)."""
    if P <= 1:
        return 0.0
    if scheme in ("allscan", "ring"):
        return (2.0 if P > 2 else 1.0) * state_bytes
    return (P - 1) * (2.0 * state_bytes + map_bytes)


def fwd_bwd_seconds(scheme, P, state_bytes, *, alpha, beta, gamma=0.0, pieces=4, map_bytes=0.0) -> float:
    kw = dict(alpha=alpha, beta=beta, gamma=gamma, pieces=pieces, map_bytes=map_bytes)
    return scan_seconds(scheme, P, state_bytes, **kw) + scan_seconds(scheme, P, state_bytes, backward=True, **kw)


def scan_terms(scheme: str, P: int, state_bytes: float, *, pieces: int = 4, map_bytes: float = 0.0,
               backward: bool = False) -> tuple[float, float]:
    """(number of alphas, bytes multiplying beta + gamma) of one scan: the model is linear in alpha and
    beta, so measured times fit them by least squares (gamma folded into beta)."""
    if P <= 1:
        return 0.0, 0.0
    M = float(state_bytes)
    if scheme == "allscan":
        n = max(1, pieces)
        return float(P + n - 2), (P + n - 2) * M / n
    if scheme == "ring":
        return float(P - 1), (P - 1) * M
    m = M if backward else M + map_bytes
    return float(P - 1), (P - 1) * m


def fit_alpha_beta(rows) -> tuple[float, float]:
    """Least-squares (alpha, beta) from rows of (n_alpha, n_bytes, seconds), relative errors weighted
    equally (each row divided by its time)."""
    import numpy as np

    X = np.array([[a, b] for a, b, _ in rows], dtype=float)
    y = np.array([t for _, _, t in rows], dtype=float)
    w = 1.0 / y
    coef, *_ = np.linalg.lstsq(X * w[:, None], y * w, rcond=None)
    return float(coef[0]), float(coef[1])


# Assumed links for the GPU prediction (a model, not a measurement): NCCL p2p over NVLink 4 inside an
# H100 node, and over one 400 Gb/s InfiniBand NIC per GPU between nodes.
NVLINK = Link("NVLink (H100 node)", alpha=8e-6, bandwidth=150e9)
INFINIBAND = Link("InfiniBand NDR 400 Gb/s per GPU", alpha=15e-6, bandwidth=40e9)


def predict(scheme: str, P: int, state_bytes: float, *, pieces: int = 8, map_bytes: float = 0.0,
            gpus_per_node: int = 8, intra: Link = NVLINK, inter: Link = INFINIBAND) -> dict:
    """Predicted fwd+bwd scan seconds and bytes per rank on P GPUs (the slowest link sets the pace)."""
    link = intra if P <= gpus_per_node else inter
    t = fwd_bwd_seconds(scheme, P, state_bytes, alpha=link.alpha, beta=link.beta, gamma=link.gamma,
                        pieces=pieces, map_bytes=map_bytes)
    return {"scheme": scheme, "P": P, "seconds": t, "bytes_per_rank": bytes_per_rank(scheme, P, state_bytes,
                                                                                     map_bytes=map_bytes),
            "link": link.name}
