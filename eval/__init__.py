"""Benchmarks: RULER (generated here) and LongBench (loaded from local data), behind one interface."""
