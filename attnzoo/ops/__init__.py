"""Pure functions on tensors (no parameters). Layout [B, T, H, D] for q, k, v, o."""
