"""0.1.0 file path of `stam_optimizer.benchmarks.legacy.mnist_sanity` (see its docstring)."""
if __name__ == "__main__":
    import _launch
    _launch.run("mnist_sanity")
