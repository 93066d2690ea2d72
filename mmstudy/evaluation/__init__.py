"""Running benchmarks on a model, scoring answer files, paired comparisons, the headroom probes and the shift from the
base."""
