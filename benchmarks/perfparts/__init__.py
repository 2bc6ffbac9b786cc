"""The measurements of benchmarks/performance.py, one module each (the script is the runner)."""
