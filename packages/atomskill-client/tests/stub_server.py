"""A small policy server speaking PROTOCOL.md v1, for the client's tests.

Its replies say where they come from: the k-th infer of a connection (k = 0, 1, ...)
answers `actions[i] = 100 * k + i` and `chunk[j] = 100 * k + n + j` in every action
dimension, so a test reads off which reply and which plan index an action is.
`offset` is added to every action. Knobs (set them between requests): `delay`
(seconds before an action reply), `fail_next` (an error reply to the next request),
`close_next` ((code, reason) closing the connection instead of replying),
`wrong_id_next`.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Dict, List, Optional

import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import serve

from atomskill_client.msgpack_numpy import packb, unpackb


def metadata(action_dim: int = 3, execute_steps: int = 1, chunk_length: int = 4,
             control_hz: float = 50.0, observation: Optional[Dict[str, Any]] = None) -> dict:
    return {"type": "metadata", "protocol": 1, "method": "stub", "policy": "stub",
            "observation": observation or {"state": {"dtype": "<f4", "shape": [5]},
                                           "language_instruction": {"dtype": "str"}},
            "action": {"dim": action_dim, "space": "action_abs"},
            "chunk_length": chunk_length, "execute_steps": execute_steps,
            "control_hz": control_hz, "statistics_sha256": "s" * 8, "params_sha256": "p" * 8,
            "limits": {"max_message_bytes": 1 << 20, "idle_timeout_s": 60.0}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StubServer:
    def __init__(self, meta: Optional[dict] = None, token: Optional[str] = None,
                 delay: float = 0.0, port: Optional[int] = None, offset: float = 0.0):
        self.metadata = meta or metadata()
        self.token = token
        self.delay = delay
        self.offset = offset
        self.port = port or free_port()
        self.fail_next: Optional[dict] = None
        self.close_next = None
        self.wrong_id_next = False
        self.connections = 0
        self.received: List[tuple] = []  # (connection number, monotonic time, message)
        self._server = None
        self._thread = None

    @property
    def uri(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> "StubServer":
        self._server = serve(self._handle, "127.0.0.1", self.port, compression=None)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._server = None

    def messages(self, kind: Optional[str] = None) -> List[dict]:
        return [m for _, _, m in self.received if kind is None or m.get("type") == kind]

    def _handle(self, conn) -> None:
        self.connections += 1
        number = self.connections
        if self.token is not None:
            if conn.request.headers.get("Authorization") != f"Bearer {self.token}":
                conn.close(1008, "unauthorized: missing or wrong token")
                return
        conn.send(packb(self.metadata))
        episode, infers = None, 0
        n = int(self.metadata["execute_steps"])
        h = int(self.metadata["chunk_length"]) - n
        dim = int(self.metadata["action"]["dim"])
        try:
            for frame in conn:
                message = unpackb(frame)
                self.received.append((number, time.monotonic(), message))
                rid = message.get("id")
                if self.close_next is not None:
                    code, reason = self.close_next
                    self.close_next = None
                    conn.close(code, reason)
                    return
                if self.fail_next is not None:
                    error, self.fail_next = self.fail_next, None
                    conn.send(packb(dict({"type": "error", "id": rid}, **error)))
                    continue
                if self.wrong_id_next:
                    self.wrong_id_next = False
                    rid = 999
                if message["type"] == "reset":
                    episode, infers = message.get("task", {}), 0
                    conn.send(packb({"type": "reset", "id": rid}))
                elif episode is None:
                    conn.send(packb({"type": "error", "id": rid, "code": "no_episode",
                                     "field": None, "message": "infer before reset"}))
                else:
                    if self.delay:
                        time.sleep(self.delay)
                    base = 100.0 * infers + self.offset
                    infers += 1
                    plan = base + np.arange(n + h, dtype=np.float32)
                    plan = np.repeat(plan[:, None], dim, axis=1)
                    reply = {"type": "action", "id": rid, "actions": plan[:n],
                             "chunk": plan[n:], "timing": {"total_ms": 0.0}}
                    if "timestamp" in message:
                        reply["timestamp"] = message["timestamp"]
                    conn.send(packb(reply))
        except ConnectionClosed:
            pass
