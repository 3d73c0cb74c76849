"""The simulator: `workloads` (traces and the built-in profiles), `run` (the real cores in
virtual time, measured per policy), `cli` (`llmux simulate` and the table it prints).
`llmux.simulate` is its public API."""
