"""`make bench`: full syncs at 10k, 100k and 1M subscribers (1% churn), each in a fresh process, with
the time per phase, peak RSS, HTTP calls and the ratio to the I/O floor measured in the same run;
the 1M Ownpage read with 1 s of latency per call, sequential against the pool; a run under Ownpage
faults. Numbers, not tests: no timing is asserted, but a run that did not converge (or crashed)
makes the benchmark exit non-zero.

Modules: `data` builds a case's data (emulator seed file, source table, expected digests), `floor`
measures the I/O floor, `runner` runs a case in its own process, `converge` checks the result,
`main` orchestrates and prints the tables."""
