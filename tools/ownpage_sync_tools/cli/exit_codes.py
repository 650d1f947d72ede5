"""Documented exit statuses of `ownpage-sync` (also in docs/cli.md)."""

OK = 0  # converged (run), the plan was computed (plan), or the command did what it says
UNEXPECTED = 1  # a bug or an unexpected error; see the message (and --debug)
CONFIGURATION = 2  # a missing or malformed setting, name or permission; fix it, retrying won't help
GUARD_TRIPPED = 3  # a blast-radius guard stopped the run before any write (plan --detailed-exitcode: would stop)
NOT_CONVERGED = 4  # some operations were queued for retry or left for the next run
FAILED = 5  # a service could not be read or reached, or operations could be neither applied nor queued
RUN_IN_PROGRESS = 6  # another run holds the lease; nothing was done
CHANGES_PENDING = 7  # plan --detailed-exitcode: the plan would write to Ownpage
INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT

EPILOG = """exit status:
  0  success: converged (run), plan computed (plan; with --detailed-exitcode: nothing to do)
  1  unexpected error (--debug shows the traceback)
  2  configuration error: a setting, name or permission is wrong
  3  a safety guard tripped, nothing was written (plan --detailed-exitcode: a guard would trip)
  4  not converged: operations queued for retry or left for the next run
  5  failed: a service unreachable or refusing, or operations could not be queued
  6  another run holds the lease, nothing was done
  7  plan --detailed-exitcode: changes pending
every failure prints one line on stderr: "ownpage-sync: error: ..." """
