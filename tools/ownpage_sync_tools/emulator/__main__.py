"""`python -m ownpage_sync_tools.emulator [flags]`: `ownpage-sync emulator [flags]` without the rest of the CLI."""

import sys

from ownpage_sync_tools.cli.emulator_command import main

if __name__ == "__main__":
    sys.exit(main())
