"""Documented exit statuses of `ownpage-sync` (also in docs/cli.md)."""

OK = 0  # converged (run), or the plan was computed (plan)
UNEXPECTED = 1  # a bug or an unexpected error; see the message
CONFIGURATION = 2  # a missing or malformed setting; nothing was called
GUARD_TRIPPED = 3  # a blast-radius guard stopped the run before any write
NOT_CONVERGED = 4  # some operations were queued for retry or left for the next run
FAILED = 5  # operations failed and could not be queued; or the source/Ownpage could not be read
RUN_IN_PROGRESS = 6  # another run holds the lease; nothing was done

EPILOG = """exit status:
  0  converged (run) / plan computed (plan)
  1  unexpected error
  2  configuration error, nothing was called
  3  a safety guard tripped, nothing was written
  4  not converged: operations queued for retry or left for the next run
  5  failed: source or Ownpage unreadable, or operations could not be queued
  6  another run holds the lease, nothing was done"""
