"""A backend for any OpenAI-compatible chat-completions endpoint: a vLLM server or a hosted API.

Requests go out from a thread pool, each worker with its own ``requests.Session`` (a session is
not safe to share between threads); replies come back to the caller's thread, which may hold a
single-threaded SQLite connection. Transient failures (429, 408, 5xx, dropped connections,
timeouts, malformed replies) are retried with capped exponential backoff; other 4xx fail at once,
since sending the same request again cannot help.

The API key is read once from the named environment variable and kept in a private attribute;
every failure reason and log message is scrubbed of it, in case a server echoes it back.
"""

from __future__ import annotations

import email.utils
import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import requests

from ptft.derive.backend import Backend, Reply, Request, RequestFailed

log = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({408, 429})  # and every 5xx
_TRANSIENT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


class _Transient(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _StartSpacer:
    """Spaces request starts ``60 / per_minute`` seconds apart across all threads.

    Even spacing rather than a bucket: it never bursts, so a server-side limit counted over any
    window is respected, at the cost of not using idle time saved up earlier.
    """

    def __init__(self, per_minute: float | None):
        self._interval = 60.0 / per_minute if per_minute else 0.0
        self._lock = threading.Lock()
        self._next = 0.0

    def wait(self, stop: threading.Event) -> bool:
        """Wait for this thread's start slot; False if ``stop`` was set meanwhile."""
        if not self._interval:
            return not stop.is_set()
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._interval
        return not stop.wait(start - now)


def _retry_after(response: requests.Response) -> float | None:
    """The server's ``Retry-After`` in seconds (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _token_count(usage: object, name: str) -> int:
    value = usage.get(name) if isinstance(usage, dict) else None
    return value if isinstance(value, int) else 0


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        concurrency: int = 8,
        requests_per_minute: float | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 6,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise ValueError("need concurrency >= 1, max_retries >= 0 and timeout_s > 0")
        if requests_per_minute is not None and requests_per_minute <= 0:
            raise ValueError("requests_per_minute must be positive or None")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.requests_per_minute = requests_per_minute
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._api_key: str | None = None
        if api_key_env is not None:
            self._api_key = os.environ.get(api_key_env) or None
            if self._api_key is None:
                raise ValueError(f"environment variable {api_key_env} (the API key) is unset or empty")
        self._url = f"{self.base_url}/chat/completions"
        self._spacer = _StartSpacer(requests_per_minute)  # shared by every run of this backend

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(base_url={self.base_url!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r}, concurrency={self.concurrency}, "
            f"requests_per_minute={self.requests_per_minute}, timeout_s={self.timeout_s}, "
            f"max_retries={self.max_retries})"
        )

    def run(
        self,
        requests: Sequence[Request],
        on_reply: Callable[[Request, Reply], None],
        on_failure: Callable[[Request, str], None],
    ) -> None:
        stop = threading.Event()
        local = threading.local()
        sessions: list = []
        sessions_lock = threading.Lock()

        def send(request: Request) -> Reply | str | None:
            session = getattr(local, "session", None)
            if session is None:
                session = local.session = self._new_session()
                with sessions_lock:
                    sessions.append(session)
            return self._send(session, request, stop)

        # Submit only a window ahead of the workers, so a huge request list costs no futures
        # up front and an abort has little to cancel.
        window = 2 * self.concurrency
        todo = iter(requests)
        pending: dict = {}
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="openai-backend")
        try:
            while True:
                for request in itertools.islice(todo, window - len(pending)):
                    pending[pool.submit(send, request)] = request
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    request = pending.pop(future)
                    outcome = future.result()
                    if isinstance(outcome, Reply):
                        on_reply(request, outcome)
                    else:
                        on_failure(request, outcome)
        finally:
            # On a raising callback (or Ctrl-C): no new attempts start, queued ones are dropped,
            # and we wait only for the HTTP calls already on the wire (at most timeout_s).
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            for session in sessions:
                session.close()

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        if self._api_key:
            session.headers["Authorization"] = f"Bearer {self._api_key}"
        return session

    def _send(self, session: requests.Session, request: Request, stop: threading.Event) -> Reply | str | None:
        """Try ``request`` until it succeeds or retries run out: a Reply, a failure reason, or None if stopped."""
        reason = "not attempted"
        for attempt in range(self.max_retries + 1):
            if not self._spacer.wait(stop):
                return None
            try:
                return self._attempt(session, request)
            except RequestFailed as exc:
                return str(exc)
            except _Transient as exc:
                reason, retry_after = exc.reason, exc.retry_after
            except Exception as exc:  # a bug or bad setting (params not JSON): still one callback per request
                return self._scrub(f"{type(exc).__name__}: {exc}")[:300]
            if attempt == self.max_retries:
                break
            delay = self._delay(attempt, retry_after)
            log.warning(
                "request %s attempt %d/%d failed (%s); retrying in %.2f s",
                request.key[:12],
                attempt + 1,
                self.max_retries + 1,
                reason,
                delay,
            )
            if stop.wait(delay):
                return None
        return reason

    def _attempt(self, session: requests.Session, request: Request) -> Reply:
        body = {"model": self.model, "messages": list(request.messages), **request.params}
        try:
            response = session.post(self._url, json=body, timeout=self.timeout_s)
        except _TRANSIENT_ERRORS as exc:
            raise _Transient(self._scrub(f"{type(exc).__name__}: {exc}")[:300]) from None
        status = response.status_code
        if status in _RETRY_STATUS or status >= 500:
            retry_after = _retry_after(response) if status in (429, 503) else None
            raise _Transient(self._http_reason(response), retry_after)
        if not 200 <= status < 300:
            raise RequestFailed(self._http_reason(response))
        try:
            data = response.json()
            text = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise _Transient(self._scrub(f"malformed reply: {type(exc).__name__}: {exc}")[:300]) from None
        if not isinstance(text, str):
            raise _Transient(f"malformed reply: content is {type(text).__name__}, not a string")
        usage = data.get("usage")
        return Reply(
            text=text,
            prompt_tokens=_token_count(usage, "prompt_tokens"),
            completion_tokens=_token_count(usage, "completion_tokens"),
        )

    def _http_reason(self, response: requests.Response) -> str:
        # Scrub before truncating, so a cut can never leave part of the key behind.
        body = self._scrub(response.content.decode("utf-8", "replace"))
        return f"HTTP {response.status_code}: {body[:200]}"

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff_s)
        ceiling = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        return random.uniform(ceiling / 2, ceiling)  # jitter, so throttled workers do not return in step

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text
