"""0.1.0 file path of `stam_optimizer.benchmarks.legacy.fair_timing` (see its docstring)."""
if __name__ == "__main__":
    import _launch
    _launch.run("fair_timing")
