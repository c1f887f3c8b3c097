"""Benches: the zoo sweep (quality), speed/memory, cost model, reports and plots."""
