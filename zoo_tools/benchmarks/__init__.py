"""Speed and memory of each bundle's shipped model (``python scripts/benchmark.py``; results in docs/benchmarks.md).

One module per task; every measurement runs in a child process (:mod:`zoo_tools.benchmarks.harness`), so
each figure has a fresh interpreter, its own thread count and its own peak memory.
"""
