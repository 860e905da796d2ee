"""0.1.0 file path of `stam_optimizer.benchmarks.legacy.phase1_runner` (see its docstring)."""
if __name__ == "__main__":
    import _launch
    _launch.run("phase1_runner")
