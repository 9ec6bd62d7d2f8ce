"""Benchmarks: every figure beside its physical limit or peer, measured in the same run.

Run ``python -m benchmarks [--quick] [--json FILE] [--plot FILE.png]``. The machines these run
on are shared and noisy: absolute numbers drift from run to run, the ratios hold.
"""
