"""The benchmark programme: the optimizer registry, the suites and sizes, the runner
that tunes and runs one task x optimizer, the scheduler that plans and resumes jobs,
and the records they write."""
