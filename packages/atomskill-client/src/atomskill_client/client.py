"""`PolicyClient`: one websocket connection to an atomskill policy server (PROTOCOL.md v1).

Synchronous and blocking on purpose: a simulator or robot loop asks for actions and
waits for them (`ActionBroker` adds the background thread when it must not wait).
One request is in flight at a time; ids increase by one per request.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Dict, Mapping, Optional

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import connect as ws_connect

from atomskill_client.msgpack_numpy import PROTOCOL_VERSION, EncodingError, packb, unpackb

log = logging.getLogger("atomskill_client")

MAX_BACKOFF_S = 8.0  # the doubling backoff between connection attempts stops growing here
CLOSE_UNAUTHORIZED = 1008
CLOSE_TOO_BIG = 1009
# Closes after which a request may be sent again on a new connection: the server's
# idle timeout (1000) and a server going away (1001) lose no request in flight.
_RECONNECTABLE_CLOSES = (1000, 1001)


class ClientError(Exception):
    """Base of every error this package raises (besides TimeoutError and ValueError)."""


class ServerError(ClientError):
    """An error reply: the request was refused, the connection stays usable."""

    def __init__(self, code: str, field: Optional[str], message: str):
        self.code, self.field, self.message = code, field, message
        where = f" at {field}" if field else ""
        super().__init__(f"server error {code}{where}: {message}")


class Unauthorized(ClientError):
    """The server closed the connection with 1008: no token or the wrong one."""


class ConnectFailed(ClientError, ConnectionError):
    """No connection after every try."""


class ConnectionLost(ClientError, ConnectionError):
    """The server closed an open connection (see `code` and `reason`)."""

    def __init__(self, message: str, code: int, reason: str):
        self.code, self.reason = code, reason
        super().__init__(message)


class ProtocolError(ClientError):
    """The server said something PROTOCOL.md v1 does not allow."""


class ObservationError(ClientError, ValueError):
    """An observation that does not match the server's metadata (`key` names the entry)."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"observation[{key!r}]: {message}" if key else f"observation: {message}")


def _close_details(exc: ConnectionClosed):
    frame = exc.rcvd  # the server's close frame; None when the TCP connection just dropped
    return (frame.code, frame.reason) if frame is not None else (1006, "connection dropped")


def check_observation(observation: Mapping[str, Any], spec: Mapping[str, Mapping]) -> None:
    """Raises ObservationError unless `observation` has exactly the metadata's keys (those
    marked "optional" may be missing), with
    their dtypes and shapes (no batch axis) and finite floats: the server would refuse it."""
    if not isinstance(observation, Mapping):
        raise ObservationError("", f"expected a dict of arrays, got {type(observation).__name__}")
    # Keys the metadata marks optional (the server fills them, e.g. the instruction's
    # embedding from the reset) may be left out.
    missing = sorted(k for k in set(spec) - set(observation) if not spec[k].get("optional"))
    extra = sorted(set(observation) - set(spec))
    if missing or extra:
        key = (missing or extra)[0]
        raise ObservationError(key, f"keys differ from the server's metadata: missing {missing}, "
                                    f"extra {extra}; the server expects {sorted(spec)}")
    for key, entry in spec.items():
        if key not in observation:
            continue  # an optional key left out
        value = observation[key]
        if entry.get("dtype") == "str":
            if not isinstance(value, str):
                raise ObservationError(key, f"expected a str, got {type(value).__name__}")
            continue
        if not isinstance(value, (np.ndarray, np.generic)):
            raise ObservationError(key, f"expected a numpy array of {entry['dtype']} "
                                        f"{list(entry['shape'])}, got {type(value).__name__}")
        dtype = value.dtype.newbyteorder("<") if value.dtype.str.startswith(">") else value.dtype
        if dtype.str != entry["dtype"]:
            raise ObservationError(key, f"dtype {value.dtype} ({value.dtype.str}), the server "
                                        f"expects {entry['dtype']} ({np.dtype(entry['dtype'])}); "
                                        f"convert with .astype(np.{np.dtype(entry['dtype'])})")
        if list(value.shape) != list(entry["shape"]):
            raise ObservationError(key, f"shape {list(value.shape)}, the server expects "
                                        f"{list(entry['shape'])} (one observation, no batch axis)")
        if dtype.kind == "f" and not np.all(np.isfinite(value)):
            bad = np.argwhere(~np.isfinite(value))[0].tolist()
            raise ObservationError(key, f"non-finite value {value[tuple(bad)]} at index {bad}")


class PolicyClient:
    """A connection to `atomskill serve` (PROTOCOL.md version 1).

    Connects on construction: up to `1 + retries` attempts, waiting `backoff` seconds
    after the first failure and doubling (capped at 8 s), so a client started with its
    server waits for the server's warm-up. A close with 1008 (bad token) raises
    `Unauthorized` at once. `metadata` is the server's first frame (observation keys,
    action dim, chunk length, control_hz, limits).

    `reset(...)` starts an episode, `infer(observation)` returns the reply dict
    (`actions` [n, A], `chunk` [h, A], ... as numpy arrays). An error reply raises
    `ServerError` and the connection stays usable. No reply within `recv_timeout`
    raises TimeoutError (the late reply is dropped when it comes). A connection that
    the server closed while idle (idle timeout, restart) is reopened once
    automatically, as by `reconnect()`.
    """

    def __init__(self, uri: str = "ws://127.0.0.1:8000", token: Optional[str] = None,
                 connect_timeout: float = 10.0, recv_timeout: float = 30.0, retries: int = 5,
                 backoff: float = 0.5, max_message_bytes: int = 16 * 2**20):
        self.uri = uri
        self._token = token
        self.connect_timeout = float(connect_timeout)
        self.recv_timeout = float(recv_timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_message_bytes = int(max_message_bytes)  # largest reply frame accepted
        self._lock = threading.RLock()  # one request at a time, whichever thread asks
        self._next_id = 1
        self._abandoned = set()  # ids of requests that timed out: their late replies
        self._last_task: Optional[Dict[str, Any]] = None
        self._conn = None
        self.reconnects = 0
        self.metadata: Dict[str, Any] = {}
        self._conn, self.metadata = self._open()

    # -- connecting ----------------------------------------------------------------

    def _open(self):
        """(connection, metadata) after up to 1 + retries attempts."""
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        attempts = max(1, self.retries + 1)
        delay, start, last = self.backoff, time.monotonic(), None
        for attempt in range(1, attempts + 1):
            try:
                conn = ws_connect(self.uri, additional_headers=headers,
                                  open_timeout=self.connect_timeout, close_timeout=2.0,
                                  max_size=self.max_message_bytes, compression=None)
                # Entered as a context manager (websockets >= 17.1 warns otherwise);
                # close() exits it.
                conn.__enter__()
            except InvalidURI as exc:
                raise ValueError(f"PolicyClient: {self.uri!r} is not a websocket URI "
                                 f"(expected ws://HOST:PORT): {exc}") from exc
            except (OSError, InvalidHandshake, EOFError) as exc:
                status = getattr(getattr(exc, "response", None), "status_code", None)
                if status in (401, 403):
                    raise Unauthorized(f"{self.uri} refused the handshake with HTTP {status}; "
                                       f"pass the server's token: PolicyClient(token=...)") from exc
                last = exc
            else:
                try:
                    return conn, self._read_metadata(conn)
                except (ConnectionLost, TimeoutError) as exc:  # closed at once: try again
                    conn.close()
                    last = exc
                except BaseException:
                    conn.close()
                    raise
            if attempt < attempts:
                log.warning("connecting to %s failed (%s: %s); try %d/%d in %.2f s", self.uri,
                            type(last).__name__, last, attempt + 1, attempts, delay)
                time.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
        raise ConnectFailed(
            f"could not connect to {self.uri} after {attempts} tries in "
            f"{time.monotonic() - start:.1f} s; last error: {type(last).__name__}: {last}. Is "
            f"`atomskill serve` running there? Its port opens only after warm-up (every "
            f"inference function compiled); raise retries/backoff to wait longer.")

    def _read_metadata(self, conn) -> Dict[str, Any]:
        frame = self._recv_frame(conn, self.connect_timeout, "the metadata frame")
        metadata = self._decode(frame)
        if metadata.get("type") != "metadata":
            raise ProtocolError(f"{self.uri}: first frame has type {metadata.get('type')!r}, "
                                f"expected 'metadata'")
        if metadata.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolError(f"{self.uri} speaks protocol {metadata.get('protocol')!r}; this "
                                f"atomskill-client speaks {PROTOCOL_VERSION}: install the "
                                f"client of the server's version")
        if not isinstance(metadata.get("observation"), dict):
            raise ProtocolError(f"{self.uri}: metadata without an 'observation' map")
        return metadata

    def reconnect(self) -> None:
        """Close the connection and open a new one (with the same retries).

        The server keeps the policy's state per connection (current skill, ensembling
        buffers, observation history); a new connection starts without any. So the
        last `reset(...)`, if there was one, is replayed on the new connection: `infer`
        works at once, but the episode's policy state starts over as at that reset.
        """
        with self._lock:
            self._close_conn()
            self._abandoned.clear()  # late replies of the old connection never come
            old = self.metadata
            self._conn, self.metadata = self._open()
            self.reconnects += 1
            for key in ("params_sha256", "statistics_sha256"):
                if old.get(key) != self.metadata.get(key):
                    log.warning("%s after reconnecting: %s changed (%s -> %s): another "
                                "policy is being served", self.uri, key, old.get(key),
                                self.metadata.get(key))
            if self._last_task is not None:
                log.warning("%s: reconnected; replaying the last reset %s (the policy's "
                            "state of this episode starts over)", self.uri, self._last_task)
                self._request({"type": "reset", "task": dict(self._last_task)}, "reset",
                              may_reconnect=False)

    # -- requests --------------------------------------------------------------------

    def reset(self, task: str = "", instruction: str = "", layout: int = 0, seed: int = 0,
              episode: int = 0) -> Dict[str, Any]:
        """Start an episode on this connection; equal arguments give equal episodes
        (they seed the policy's sampling). Returns the server's reply."""
        spec = {"task": str(task), "instruction": str(instruction), "layout": int(layout),
                "seed": int(seed), "episode": int(episode)}
        with self._lock:
            reply = self._request({"type": "reset", "task": spec}, "reset")
            self._last_task = spec
        return reply

    def infer(self, observation: Mapping[str, Any],
              timestamp: Optional[float] = None) -> Dict[str, Any]:
        """The reply to one observation (every metadata key, arrays without a batch
        axis): `actions` [n, A] to execute, then observe again; `chunk` [h, A], the
        plan after those; `timing`; `keypose`/`skill` for methods that have them.
        The observation is checked against the metadata before it is sent."""
        check_observation(observation, self.metadata["observation"])
        if self._last_task is None:
            raise RuntimeError("PolicyClient.infer before reset(): start an episode with "
                               "client.reset(task=..., instruction=...) first")
        message = {"type": "infer", "observation": dict(observation)}
        if timestamp is not None:
            message["timestamp"] = float(timestamp)
        return self._request(message, "action")

    def _request(self, message: Dict[str, Any], expect: str,
                 may_reconnect: bool = True) -> Dict[str, Any]:
        with self._lock:
            if self._conn is None:
                raise ConnectionLost(f"PolicyClient({self.uri}) is closed", 1000, "closed")
            rid = self._next_id
            self._next_id += 1
            message = dict(message, id=rid)
            try:
                frame = packb(message)
            except EncodingError as exc:
                raise ValueError(f"{message['type']} request: {exc}") from exc
            limit = (self.metadata.get("limits") or {}).get("max_message_bytes")
            if limit and len(frame) > limit:
                raise ValueError(f"{message['type']} request of {len(frame)} bytes is over "
                                 f"the server's max_message_bytes={limit}: send smaller images")
            what = f"the reply to {message['type']} request {rid}"
            try:
                self._send(frame)
                return self._receive(rid, expect, what)
            except ConnectionLost as exc:
                if not (may_reconnect and exc.code in _RECONNECTABLE_CLOSES):
                    raise
                log.warning("%s closed the connection (%d %s); reconnecting and sending "
                            "request %d again", self.uri, exc.code, exc.reason, rid)
                self.reconnect()
                self._send(frame)
                return self._receive(rid, expect, what)

    def _send(self, frame: bytes) -> None:
        try:
            self._conn.send(frame)
        except ConnectionClosed as exc:
            raise self._closed_error(exc, "sending a request") from exc

    def _recv_frame(self, conn, timeout: float, what: str) -> bytes:
        try:
            frame = conn.recv(timeout=timeout)
        except TimeoutError:
            raise TimeoutError(f"no {what} from {self.uri} within {timeout:g} s") from None
        except ConnectionClosed as exc:
            raise self._closed_error(exc, f"waiting for {what}") from exc
        if isinstance(frame, str):
            raise ProtocolError(f"{self.uri} sent a text frame ({frame[:80]!r}); protocol "
                                f"{PROTOCOL_VERSION} uses binary msgpack frames only")
        return frame

    def _receive(self, rid: int, expect: str, what: str) -> Dict[str, Any]:
        deadline = time.monotonic() + self.recv_timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                frame = self._recv_frame(self._conn, max(remaining, 0.0), what)
            except TimeoutError:
                self._abandoned.add(rid)
                raise TimeoutError(
                    f"no reply to request {rid} from {self.uri} within recv_timeout="
                    f"{self.recv_timeout:g} s: the server is overloaded or stuck. The "
                    f"connection stays open (the late reply will be dropped); "
                    f"reconnect() starts afresh") from None
            reply = self._decode(frame)
            reply_id = reply.get("id")
            if reply_id in self._abandoned and reply_id != rid:
                self._abandoned.discard(reply_id)
                log.warning("%s: dropped the late reply to request %s", self.uri, reply_id)
                continue
            if reply.get("type") == "error" and reply_id in (rid, None):
                raise ServerError(str(reply.get("code")), reply.get("field"),
                                  str(reply.get("message")))
            if reply_id != rid:
                raise ProtocolError(f"{self.uri} answered request {rid} with a reply for id "
                                    f"{reply_id!r} (type {reply.get('type')!r})")
            if reply.get("type") != expect:
                raise ProtocolError(f"{self.uri} answered request {rid} with type "
                                    f"{reply.get('type')!r}, expected {expect!r}")
            return reply

    def _decode(self, frame: bytes) -> Dict[str, Any]:
        try:
            message = unpackb(frame)
        except EncodingError as exc:
            raise ProtocolError(f"{self.uri} sent a frame this client cannot decode: {exc}") \
                from exc
        if not isinstance(message, dict):
            raise ProtocolError(f"{self.uri} sent a {type(message).__name__}, not a map")
        return message

    def _closed_error(self, exc: ConnectionClosed, during: str) -> ClientError:
        code, reason = _close_details(exc)
        if code == CLOSE_UNAUTHORIZED:
            return Unauthorized(f"{self.uri} closed the connection with 1008 ({reason!r}) "
                                f"while {during}: pass the server's token, "
                                f"PolicyClient(token=...) (the server's --token or "
                                f"ATOMSKILL_SERVE_TOKEN)")
        hint = ("a frame was far over the server's max_message_bytes" if code == CLOSE_TOO_BIG
                else "call reconnect() to open a new connection")
        return ConnectionLost(f"{self.uri} closed the connection (code {code}, reason "
                              f"{reason!r}) while {during}: {hint}", code, reason)

    # -- closing ---------------------------------------------------------------------

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # closing a broken connection: nothing left to release
                pass

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._close_conn()

    def __enter__(self) -> "PolicyClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
