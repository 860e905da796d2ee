"""0.1.0 file path of `stam_optimizer.benchmarks.legacy.cifar10_cnn` (see its docstring)."""
if __name__ == "__main__":
    import _launch
    _launch.run("cifar10_cnn")
