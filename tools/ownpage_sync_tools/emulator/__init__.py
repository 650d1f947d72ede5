"""An emulator of Ownpage's Lists API over real HTTP, able to misbehave on demand (development only).

with EmulatorServer(port=0, faults=Faults(error_rate=0.2, seed=7)) as server:
    server.state.seed(1, [{"email": "a@example.com"}])
    ...  # point the client at server.url

EmulatorProcess runs it in a child process (big lists), driven over the control API.
"""

from ownpage_sync_tools.emulator.faults import Faults
from ownpage_sync_tools.emulator.process import EmulatorProcess
from ownpage_sync_tools.emulator.server import DEFAULT_CREDENTIALS, EmulatorServer
from ownpage_sync_tools.emulator.state import EmulatorState, RequestRecord

__all__ = ["DEFAULT_CREDENTIALS", "EmulatorProcess", "EmulatorServer", "EmulatorState", "Faults", "RequestRecord"]
