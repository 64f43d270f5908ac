"""RULER (NVIDIA/RULER @ c3f5e3b), generated here with the evaluated model's tokenizer: see docs/evaluation.md §2."""

from .benchmark import ALL_TASKS, ZERO_DOWNLOAD_TASKS, RulerBenchmark

__all__ = ["ALL_TASKS", "ZERO_DOWNLOAD_TASKS", "RulerBenchmark"]
