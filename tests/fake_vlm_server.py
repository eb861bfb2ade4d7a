"""A scripted OpenAI-compatible chat-completions server on loopback, for tests.

    with FakeVLMServer([ok("grasp", "..."), status(500), slow(1.0, ok(...))]) as server:
        VLMAnnotator(base_url=server.base_url, model="fake", ...)

Each request consumes the next scripted reply (a callable script gets the request
body instead); a run past the end of the script gets HTTP 500 "script exhausted".
Requests are recorded; a slow reply whose client hangs up before the delay is over
is not sent, and its request is marked `client_hung_up` (how a test sees that the
client gave up, without timing it). The server binds 127.0.0.1 on an ephemeral
port, serves from a daemon thread and shuts itself down on exit or after
`lifetime_s` at the latest.
"""

from __future__ import annotations

import dataclasses
import json
import select
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclasses.dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    delay_s: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()


def completion(content) -> bytes:
    return json.dumps({"id": "fake", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": content},
         "finish_reason": "stop"}]}).encode()


def ok(label: str | None = "grasp", description: str | None = "the robot grasps it",
       wrap: str = "{}") -> Reply:
    """A well-formed answer; `wrap` formats the JSON text (e.g. a ``` fence around {})."""
    obj = {}
    if description is not None:
        obj["description"] = description
    if label is not None:
        obj["label"] = label
    return Reply(body=completion(wrap.replace("{}", json.dumps(obj))))


def text(content: str) -> Reply:
    return Reply(body=completion(content))


def status(code: int, retry_after: str | None = None) -> Reply:
    headers = (("Retry-After", retry_after),) if retry_after is not None else ()
    return Reply(status=code, body=json.dumps({"error": f"fake {code}"}).encode(),
                 headers=headers)


def slow(delay_s: float, reply: Reply) -> Reply:
    return dataclasses.replace(reply, delay_s=delay_s)


def _hung_up_within(conn: socket.socket, delay_s: float) -> bool:
    """Waits `delay_s`; True as soon as the client closes its end (EOF or reset)."""
    deadline = time.monotonic() + delay_s
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([conn], [], [], remaining)
        if not readable:
            return False
        try:
            if conn.recv(1, socket.MSG_PEEK) == b"":
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        # The client sent more bytes (it should not): just wait out the delay.
        time.sleep(max(0.0, deadline - time.monotonic()))
        return False
    return False


class FakeVLMServer:
    def __init__(self, script: list[Reply] | Callable[[dict], Reply], lifetime_s: float = 60.0):
        self.script = script
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._lifetime_s = lifetime_s
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                reply, record = server._next(self.path, dict(self.headers), body)
                if reply.delay_s and _hung_up_within(self.connection, reply.delay_s):
                    record["client_hung_up"] = True
                    return
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply.body)))
                    for k, v in reply.headers:
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left: expected in timeout tests

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._timer = threading.Timer(lifetime_s, self.stop)
        self._timer.daemon = True
        self._stopped = False

    def _next(self, path: str, headers: dict, body) -> tuple[Reply, dict]:
        with self._lock:
            record = {"path": path, "headers": headers, "body": body, "client_hung_up": False}
            self.requests.append(record)
            if callable(self.script):
                return self.script(body), record
            if not self.script:
                return Reply(status=500, body=b'{"error": "script exhausted"}'), record
            return self.script.pop(0), record

    def start(self) -> FakeVLMServer:
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._timer.cancel()
        if self._thread.is_alive():  # shutdown() waits for serve_forever forever otherwise
            self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeVLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
