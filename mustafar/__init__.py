"""mustafar: unstructured KV-cache pruning for LLM inference.

Kept import-light on purpose: the kernels and benchmarks must import on machines without the sweep stack.
"""

__version__ = "0.1.0"
