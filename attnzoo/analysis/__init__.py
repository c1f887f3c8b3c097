"""Analyses of trained mixers: where attention goes (prefix mass, sinks, entropy, sparsity)."""
