"""Hallucination benchmarks: one module per benchmark, each a spec plus pure scoring functions."""
