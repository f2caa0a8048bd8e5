"""Benchmarks: GPU memory per storage mode (`gpu_memory.py`), and speed (`python -m fantasy bench`).

The GPU benchmarks build the full-size models with random weights (no download) and have `--tiny`
dry runs of the same code on a CPU, which the tests run.
"""
