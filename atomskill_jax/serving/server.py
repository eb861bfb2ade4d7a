"""The websocket policy server (protocol: serving/PROTOCOL.md).

    server = PolicyServer(served, host="127.0.0.1", port=8000)
    server.run()                        # blocks; `atomskill serve` does this
    with ServerThread(server) as url:   # tests and benches: in a background thread
        ...

The event loop only moves bytes: decoding, validation and the policy run in a thread
pool (one connection's requests in order), and the model functions run in one batching
thread (serving/batcher.py) that stacks the calls of connections waiting at the same
time. A slow or silent client blocks only its own connection. The port opens after
warm-up (every function compiled at every batch size); `GET /healthz` answers 200.
Bad requests get error replies and leave every connection usable; unexpected failures
are logged here and replied to as `internal`, with no traceback sent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import http
import logging
import threading
import time
from typing import Callable

import numpy as np
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from atomskill_jax.policies.program import build_runtime
from atomskill_jax.policies.runtime_settings import input_spec as settings_input_spec
from atomskill_jax.serving import codec
from atomskill_jax.serving.batcher import Batcher
from atomskill_jax.serving.policy_source import ServedPolicy
from atomskill_jax.serving.session import RequestError, Session, request_id

PROTOCOL_VERSION = 1
log = logging.getLogger(__name__)


class PolicyServer:
    def __init__(self, served: ServedPolicy, *, host: str = "127.0.0.1", port: int = 8000,
                 token: str | None = None, max_message_bytes: int = 4 * 2**20,
                 idle_timeout: float = 60.0, max_batch: int = 16, batching: bool = True,
                 max_connections: int = 64, options: dict | None = None,
                 embed: Callable | None = None):
        self.served, self.host, self.port = served, host, int(port)
        self.token = token or None
        self.max_message_bytes = int(max_message_bytes)
        self.idle_timeout = float(idle_timeout)
        self.max_connections = int(max_connections)
        self.options = dict(options or {})
        self.batcher = Batcher(served.functions, served.inputs, max_batch=max_batch,
                               batching=batching)
        self.spec = settings_input_spec(served.settings)
        self.embed = embed
        self._pool = concurrent.futures.ThreadPoolExecutor(max_connections, "policy-session")
        self._connections = 0
        self.requests = self.errors = 0
        self.ready = threading.Event()
        self.bound_port: int | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # A runtime built now: refuses bad options before the port opens.
        self._make_policy()
        self.metadata = self._metadata()

    def _make_policy(self):
        return build_runtime(self.served.runtime, self.batcher.proxies(), self.served.settings,
                             self.options)

    def _metadata(self) -> dict:
        s = self.served.settings
        spec = s["spec"]
        observation = {k: {"dtype": np.dtype(v.dtype).str, "shape": list(v.shape)}
                       for k, v in self.spec.items()}
        if "language_embedding" in observation and self.embed is not None:
            observation["language_embedding"]["optional"] = True  # from reset's instruction
        return {"type": "metadata", "protocol": PROTOCOL_VERSION, "method": self.served.method,
                "policy": spec["name"], "observation": observation,
                "action": {"dim": int(spec["action_dim"]), "space": spec["action_space"]},
                "chunk_length": int(s["horizon"]), "execute_steps": 1,
                "control_hz": s.get("control_hz"),
                "statistics_sha256": self.served.statistics_sha256,
                "params_sha256": self.served.params_sha256,
                "limits": {"max_message_bytes": self.max_message_bytes,
                           "idle_timeout_s": self.idle_timeout,
                           "max_connections": self.max_connections}}

    # -- HTTP and the handshake -----------------------------------------------------------
    def _process_request(self, connection, request):
        if request.path.split("?")[0] == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        return None

    def _authorised(self, connection) -> bool:
        if self.token is None:
            return True
        header = connection.request.headers.get("Authorization", "")
        given = header[len("Bearer "):] if header.startswith("Bearer ") else ""
        return hmac.compare_digest(given.encode(), self.token.encode())

    # -- one connection -------------------------------------------------------------------
    async def _handler(self, connection) -> None:
        if not self._authorised(connection):
            await connection.close(1008, "unauthorized: missing or wrong token "
                                         "(send 'Authorization: Bearer <token>')")
            return
        if self._connections >= self.max_connections:
            await connection.close(1013, f"busy: {self.max_connections} connections already")
            return
        self._connections += 1
        loop = asyncio.get_running_loop()
        try:
            session = await loop.run_in_executor(self._pool, self._session)
            await connection.send(codec.encode(self.metadata))
            while True:
                try:
                    message = await asyncio.wait_for(connection.recv(), self.idle_timeout)
                except asyncio.TimeoutError:
                    await connection.close(1000, "idle timeout")
                    return
                reply = await loop.run_in_executor(self._pool, self._reply, session, message)
                await connection.send(reply)
        except ConnectionClosed:
            pass
        finally:
            self._connections -= 1

    def _session(self) -> Session:
        return Session(self._make_policy, self.spec, self.batcher.timing, embed=self.embed)

    def _reply(self, session: Session, message) -> bytes:
        """Decode, validate, run, encode; every failure becomes an error reply."""
        self.requests += 1
        rid = None
        try:
            if isinstance(message, str):
                raise RequestError("bad_request", None,
                                   "text frames are refused: send binary msgpack")
            if len(message) > self.max_message_bytes:
                raise RequestError("too_large", None,
                                   f"message of {len(message)} bytes exceeds the limit of "
                                   f"{self.max_message_bytes}")
            try:
                request = codec.decode(message)
            except codec.CodecError as err:
                raise RequestError("bad_request", err.field or None, err.message) from None
            if not isinstance(request, dict):
                raise RequestError("bad_request", None, "a request is a msgpack map")
            rid = request_id(request)
            if "id" in request and rid is None:
                raise RequestError("bad_request", "id", "must be an integer or a short string")
            return codec.encode(session.handle(request))
        except RequestError as err:
            self.errors += 1
            return codec.encode({"type": "error", "id": rid, "code": err.code,
                                 "field": err.field, "message": err.message})
        except Exception:  # the server's fault: log it, tell the client without details
            self.errors += 1
            log.exception("request %r failed", rid)
            return codec.encode({"type": "error", "id": rid, "code": "internal", "field": None,
                                 "message": "the server failed on this request (see its log)"})

    # -- running --------------------------------------------------------------------------
    async def serve_async(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        start = time.perf_counter()
        await self._loop.run_in_executor(self._pool, self.batcher.warmup)
        log.info("warm in %.1f s (batch sizes %s)", time.perf_counter() - start,
                 list(self.batcher.sizes))
        async with serve(self._handler, self.host, self.port,
                         process_request=self._process_request,
                         max_size=4 * self.max_message_bytes, compression=None) as server:
            self.bound_port = next(iter(server.sockets)).getsockname()[1]
            self.ready.set()
            await self._stop.wait()

    def run(self) -> None:
        asyncio.run(self.serve_async())

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def close(self) -> None:
        self.stop()
        self.batcher.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


class ServerThread:
    """Run a PolicyServer in a daemon thread; the context gives its ws:// URL."""

    def __init__(self, server: PolicyServer, timeout: float = 600.0):
        self.server, self.timeout = server, timeout
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="policy-server", daemon=True)

    def _run(self):
        try:
            self.server.run()
        except BaseException as err:  # surfaced to the waiting caller
            self._error = err
            self.server.ready.set()

    def __enter__(self) -> str:
        self.thread.start()
        if not self.server.ready.wait(self.timeout):
            raise TimeoutError("the policy server did not become ready")
        if self._error is not None:
            raise self._error
        return f"ws://{self.server.host}:{self.server.bound_port}"

    def __exit__(self, *exc):
        self.server.close()
        self.thread.join(timeout=10)
