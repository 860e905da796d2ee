"""The tasks of the benchmark: each module builds `Task`s (`programme.task`) from a
`Config`; `data` loads and caches the data sets, `models` holds the networks.
The suites that group them are in `programme.suites`."""
