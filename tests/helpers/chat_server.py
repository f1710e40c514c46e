"""A real chat-completions server on localhost for tests, with injected faults.

It speaks ``POST /v1/chat/completions`` like vLLM or a hosted API, answers with a deterministic
rewrite of the last user message (:func:`rewrite`), and records every request it receives, so
tests can check what a client sent, how often, and that nothing was answered twice::

    with ChatServer(faults=first_attempt_faults()) as server:
        backend = OpenAIBackend(base_url=server.base_url, model="m", ...)
        ...
        assert server.ok_contents() == Counter(messages)

``faults(body, n_previous_attempts_of_same_body)`` picks each request's fate: None (a normal
reply), ``"429"``/``"500"``/any other status code (an error reply), ``"timeout"`` (no reply for
``timeout_sleep_s``, then the connection is closed) or ``"malformed"`` (status 200 with a body
that is not JSON or has no choices).

``hold_after(k)`` makes every request after the k-th successful reply wait without a reply until
``release()`` closes it: a client killed meanwhile has been answered exactly k times.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATH = "/v1/chat/completions"
FAULTS = ("429", "500", "timeout", "malformed")
Faults = Callable[[dict, int], "str | None"]


def rewrite(text: str) -> str:
    """The server's reply to a last user message ``text``."""
    return "REWRITTEN: " + text[::-1]


def last_user_message(body: dict) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return str(message.get("content", ""))
    return ""


def planned_fault(text: str, kinds: tuple[str, ...] = FAULTS) -> str | None:
    """The fault :func:`first_attempt_faults` injects for a last user message ``text`` (a hash mod 5)."""
    bucket = zlib.crc32(text.encode()) % 5
    return kinds[bucket] if bucket < len(kinds) else None


def first_attempt_faults(kinds: tuple[str, ...] = FAULTS) -> Faults:
    """Each message's first attempt gets its :func:`planned_fault`; every retry succeeds."""
    return lambda body, n_previous: planned_fault(last_user_message(body), kinds) if n_previous == 0 else None


def always(kind: str) -> Faults:
    """The same fault on every attempt."""
    return lambda body, n_previous: kind


@dataclass
class Record:
    body: dict | None  # None when the request body was not JSON
    authorization: str | None  # the Authorization header as received
    attempt: int  # earlier requests with the same body
    arrived: float  # time.monotonic()
    outcome: str  # "ok", "held", "timeout", "malformed" or a status code such as "429"


class ChatServer:
    def __init__(
        self,
        faults: Faults | None = None,
        delay_s: float = 0.0,
        timeout_sleep_s: float = 2.0,
        retry_after: str | None = None,
        api_key: str | None = None,
    ):
        """``delay_s``: time before each successful reply. ``retry_after``: a Retry-After header
        sent with injected 429s. ``api_key``: when set, requests without ``Bearer <api_key>`` get
        a 401. Every error body echoes the Authorization header received."""
        self.faults = faults or (lambda body, n_previous: None)
        self.delay_s = delay_s
        self.timeout_sleep_s = timeout_sleep_s
        self.retry_after = retry_after
        self.api_key = api_key
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._records: list[Record] = []
        self._attempts: Counter[str] = Counter()
        self._ok = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._hold_limit: int | None = None
        self._release = threading.Event()
        self._connections: set[socket.socket] = set()

    # --- lifecycle

    def __enter__(self) -> ChatServer:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.chat = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="chat-server"
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stopping.set()  # wakes delayed, timing-out and (via release) held handlers
        self.release()
        self._httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:  # ends handlers idling on keep-alive connections
            _hang_up(connection)
        self._httpd.server_close()  # joins every handler thread
        self._thread.join()

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    # --- what the tests look at

    @property
    def requests(self) -> list[Record]:
        with self._lock:
            return list(self._records)

    @property
    def max_in_flight(self) -> int:
        return self._max_in_flight

    def outcomes(self) -> Counter[str]:
        return Counter(record.outcome for record in self.requests)

    def ok_count(self) -> int:
        return self.outcomes()["ok"]

    def ok_contents(self) -> Counter[str]:
        """Successful replies per last user message: a count above 1 means work done twice."""
        return Counter(last_user_message(r.body) for r in self.requests if r.outcome == "ok")

    def attempts_per_content(self) -> Counter[str]:
        return Counter(last_user_message(r.body or {}) for r in self.requests)

    def wait_until(self, predicate: Callable[[ChatServer], bool], timeout_s: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while not predicate(self):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    # --- the hold switch

    def hold_after(self, k: int) -> None:
        """Hold every request that arrives once k successful replies (in all) have been given."""
        with self._lock:
            self._hold_limit = k
            if self._release.is_set():
                self._release = threading.Event()

    def release(self) -> None:
        """Close every held request without a reply, and serve normally from now on."""
        with self._lock:
            self._hold_limit = None
            self._release.set()

    # --- serving (handler threads)

    def _opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)
            stopping = self._stopping.is_set()
        if stopping:  # accepted while __exit__ was hanging up the others
            _hang_up(connection)

    def _closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        raw = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        authorization = handler.headers.get("Authorization")
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with self._lock:
            same_body = json.dumps(body, sort_keys=True) if body is not None else raw.decode("utf-8", "replace")
            attempt = self._attempts[same_body]
            self._attempts[same_body] += 1
            if handler.path != PATH:
                outcome = "404"
            elif not isinstance(body, dict):
                outcome = "400"
            elif self.api_key is not None and authorization != f"Bearer {self.api_key}":
                outcome = "401"
            elif self._hold_limit is not None and self._ok >= self._hold_limit:
                outcome = "held"
            else:
                outcome = self.faults(body, attempt) or "ok"
            if outcome == "ok":
                self._ok += 1  # counted now, so concurrent requests cannot overshoot a hold
            self._records.append(Record(body, authorization, attempt, time.monotonic(), outcome))
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            release = self._release
        try:
            response = self._response(outcome, body, authorization, release)
        finally:
            # Leave the in-flight count before writing, so a client that already has its reply
            # and sends the next request is never counted twice.
            with self._lock:
                self._in_flight -= 1
        if response is None:
            handler.close_connection = True
            return
        status, headers, payload = response
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _response(self, outcome: str, body, authorization, release: threading.Event):
        """(status, headers, payload) for ``outcome``, or None to close without a reply."""
        if outcome == "held":
            release.wait()
            return None
        if outcome == "timeout":
            self._stopping.wait(self.timeout_sleep_s)
            return None
        json_type = {"Content-Type": "application/json"}
        if outcome == "ok":
            self._stopping.wait(self.delay_s)
            return 200, json_type, json.dumps(self._completion(body)).encode()
        if outcome == "malformed":
            if zlib.crc32(last_user_message(body).encode()) % 2:
                return 200, json_type, b'{"object": "chat.completion", "choices": []}'
            return 200, {"Content-Type": "text/html"}, b"<html>502 upstream hiccup</html>"
        if not outcome.isdigit():
            raise ValueError(f"unknown fault {outcome!r}")
        # Error bodies echo the Authorization header received: the worst case for a key leak.
        message = f"injected fault {outcome}; Authorization was {authorization}"
        if outcome == "401" and self.api_key is not None:
            message = f"invalid API key; Authorization was {authorization}"
        headers = dict(json_type)
        if outcome == "429" and self.retry_after is not None:
            headers["Retry-After"] = self.retry_after
        return int(outcome), headers, json.dumps({"error": {"message": message, "code": int(outcome)}}).encode()

    def _completion(self, body: dict) -> dict:
        text = rewrite(last_user_message(body))
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        completion_tokens = len(text.split())
        return {
            "id": f"chatcmpl-{zlib.crc32(json.dumps(body, sort_keys=True).encode()):08x}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def _hang_up(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # so server_close() joins the handler threads
    block_on_close = True
    request_queue_size = 64
    chat: ChatServer

    def handle_error(self, request, client_address) -> None:
        # A client that gave up (a timeout, a killed process) leaves a reset socket: not news.
        if not self.chat._stopping.is_set() and not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's sessions expect
    timeout = 10  # an idle keep-alive connection holds a handler thread no longer than this
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.chat._opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.chat._closed(self.connection)

    def do_POST(self) -> None:
        self.server.chat._serve(self)

    def log_message(self, format, *args) -> None:
        pass
