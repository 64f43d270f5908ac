"""LongBench v1 / LongBench-E evaluator, comparable with published LongBench numbers (reference commit 2e00731)."""

from eval.longbench.benchmark import LongBenchBenchmark, score_records, summarize

__all__ = ["LongBenchBenchmark", "score_records", "summarize"]
