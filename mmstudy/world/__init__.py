"""The synthetic image world: scenes with exact ground truth, their text and co-occurrence, a world directory in
the released formats, and world editions of the benchmarks."""
