"""atomskill-client: talk to `atomskill serve` from any Python >= 3.8 (numpy, msgpack and
websockets only; see README.md and the server's PROTOCOL.md).

    from atomskill_client import PolicyClient, ActionBroker
    with PolicyClient("ws://127.0.0.1:8000") as client:
        client.reset(task="pick-place-v3", instruction="pick and place")
        reply = client.infer(observation)      # reply["actions"]: [n, A]
"""

from atomskill_client.broker import ActionBroker, BrokerStats
from atomskill_client.client import (ClientError, ConnectFailed, ConnectionLost,
                                     ObservationError, PolicyClient, ProtocolError, ServerError,
                                     Unauthorized)
from atomskill_client.msgpack_numpy import PROTOCOL_VERSION, EncodingError

__version__ = "0.1.0"

__all__ = [
    "ActionBroker", "BrokerStats", "ClientError", "ConnectFailed", "ConnectionLost",
    "EncodingError", "ObservationError", "PolicyClient", "ProtocolError", "PROTOCOL_VERSION",
    "ServerError", "Unauthorized",
]
