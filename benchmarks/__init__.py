"""benchmarks: e4sync measured side by side with the older e4client and with curl.

Owns the benchmark harness (``harness``), one module per benchmark (``bench_*``) and the
runner (``run.py``, which also writes docs/benchmarks.md). Everything talks only to the
simulator on 127.0.0.1, started in a separate process so that its memory is not counted.

Imports e4sync only as a program (child processes) except in ``sqlcount``, which runs a
pass in-process to count SQL statements. Nothing in ``e4sync`` imports this package.
"""
