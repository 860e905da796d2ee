"""The 0.1.0 benchmark commands, kept working with their flags and output files.

Each is run through its 0.1.0 file path, `python stam_optimizer/benchmarks/NAME.py`
(a launcher that runs `stam_optimizer.benchmarks.legacy.NAME`), or with
`python -m stam_optimizer.benchmarks.legacy.NAME`."""
