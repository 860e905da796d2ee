"""Benchmarks of stam-optimizer: optimizer registry, timing and (later) task suites.

Entry point: the `stam-bench` command (`stam_optimizer.benchmarks.cli`).
"""
