"""Development and operator tools around the library: CLI, Ownpage emulator, demo, benchmark.

Never shipped in a Lambda artifact."""
