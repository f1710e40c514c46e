"""The openai backend against a real local chat-completions server that injects faults."""

import logging
import threading
import time
from collections import Counter

import pytest

from helpers.chat_server import FAULTS, ChatServer, always, first_attempt_faults, planned_fault, rewrite
from ptft.derive.backend import Request
from ptft.derive.openai_backend import OpenAIBackend

FAST = {"backoff_s": 0.01, "timeout_s": 0.3}
SECRET = "sk-test-PLANTED-5f3a9c0e7d1b"
PARAMS = {"temperature": 0.0, "max_tokens": 64, "seed": 1}


@pytest.fixture(autouse=True)
def _no_proxy_for_localhost(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def make_requests(texts):
    return [
        Request(
            key=f"{i:04d}" + "ab" * 30,
            messages=({"role": "system", "content": "Rewrite the text."}, {"role": "user", "content": text}),
            params=dict(PARAMS),
        )
        for i, text in enumerate(texts)
    ]


def run_all(backend, requests):
    """Run ``requests``; (replies, failures) by key, checking one callback per request."""
    replies, failures = {}, {}

    def on_reply(request, reply):
        assert request.key not in replies and request.key not in failures
        replies[request.key] = reply

    def on_failure(request, reason):
        assert request.key not in replies and request.key not in failures
        failures[request.key] = reason

    backend.run(requests, on_reply, on_failure)
    assert len(replies) + len(failures) == len(requests)
    return replies, failures


def retry_warnings(caplog):
    return [r for r in caplog.records if r.name == "ptft.derive.openai_backend" and r.levelno == logging.WARNING]


def test_every_fault_on_the_first_attempt_is_retried_once(caplog):
    caplog.set_level(logging.WARNING, logger="ptft.derive.openai_backend")
    texts = [f"sentence {i} about a cat on a mat" for i in range(20)]
    planned = Counter(planned_fault(text) for text in texts)
    assert all(planned[kind] for kind in FAULTS)  # the sample exercises every fault
    requests = make_requests(texts)
    with ChatServer(faults=first_attempt_faults(), timeout_sleep_s=1.0) as server:
        backend = OpenAIBackend(base_url=server.base_url, model="m", concurrency=4, **FAST)
        replies, failures = run_all(backend, requests)
    assert failures == {}
    for request, text in zip(requests, texts, strict=True):
        reply = replies[request.key]
        assert reply.text == rewrite(text)
        assert reply.prompt_tokens == len("Rewrite the text.".split()) + len(text.split())
        assert reply.completion_tokens == len(rewrite(text).split())
    assert server.ok_contents() == Counter(texts)  # each answered exactly once
    injected = sum(planned[kind] for kind in FAULTS)
    assert len(server.requests) == len(texts) + injected
    assert server.outcomes() == Counter({"ok": len(texts), **{kind: planned[kind] for kind in FAULTS}})
    assert len(retry_warnings(caplog)) == injected
    sent = {r.messages[-1]["content"]: {"model": "m", "messages": list(r.messages), **PARAMS} for r in requests}
    assert all(r.body == sent[r.body["messages"][-1]["content"]] for r in server.requests)


@pytest.mark.parametrize(("retry_after", "max_backoff_s", "min_gap"), [("0.3", 60.0, 0.3), ("100", 0.2, 0.2)])
def test_retry_after_is_honoured_and_capped(retry_after, max_backoff_s, min_gap):
    with ChatServer(faults=lambda body, n: "429" if n == 0 else None, retry_after=retry_after) as server:
        backend = OpenAIBackend(base_url=server.base_url, model="m", max_backoff_s=max_backoff_s, **FAST)
        replies, failures = run_all(backend, make_requests(["hello there"]))
    assert len(replies) == 1 and not failures
    first, second = (r.arrived for r in server.requests)
    assert min_gap - 0.01 <= second - first < min_gap + 1.0


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("500", "HTTP 500: "),
        ("503", "HTTP 503: "),
        ("429", "HTTP 429: "),
        ("malformed", "malformed reply"),
        ("timeout", "Timeout"),
    ],
)
def test_a_persisting_fault_fails_after_max_retries(fault, reason):
    texts = ["one two", "three four", "five six seven"]
    requests = make_requests(texts)
    with ChatServer(faults=always(fault), timeout_sleep_s=1.0) as server:
        backend = OpenAIBackend(base_url=server.base_url, model="m", concurrency=3, max_retries=2, **FAST)
        replies, failures = run_all(backend, requests)
    assert replies == {}
    assert all(reason in failures[r.key] for r in requests), failures
    assert server.attempts_per_content() == Counter({text: 3 for text in texts})  # max_retries + 1


@pytest.mark.parametrize("status", ["400", "401", "403", "404"])
def test_other_client_errors_fail_at_once(status):
    with ChatServer(faults=always(status)) as server:
        backend = OpenAIBackend(base_url=server.base_url, model="m", max_retries=3, **FAST)
        replies, failures = run_all(backend, make_requests(["a b c"]))
    (reason,) = failures.values()
    assert reason.startswith(f"HTTP {status}: ") and f"injected fault {status}" in reason
    assert len(reason) <= len(f"HTTP {status}: ") + 200
    assert len(server.requests) == 1


def test_concurrency_bound_is_reached_and_never_exceeded():
    with ChatServer(delay_s=0.15) as server:
        backend = OpenAIBackend(base_url=server.base_url, model="m", concurrency=3, backoff_s=0.01, timeout_s=5)
        replies, failures = run_all(backend, make_requests([f"text {i}" for i in range(12)]))
    assert len(replies) == 12 and not failures
    assert server.max_in_flight == 3


def test_rate_limit_spaces_request_starts():
    with ChatServer() as server:
        backend = OpenAIBackend(base_url=server.base_url, model="m", concurrency=4, requests_per_minute=600, **FAST)
        replies, failures = run_all(backend, make_requests([f"text {i}" for i in range(11)]))
    assert len(replies) == 11
    arrivals = sorted(r.arrived for r in server.requests)
    assert 0.9 <= arrivals[-1] - arrivals[0] < 2.5  # 10 gaps of 0.1 s
    assert min(b - a for a, b in zip(arrivals, arrivals[1:], strict=False)) > 0.05


def test_the_key_is_sent_but_never_shown(monkeypatch, caplog):
    monkeypatch.setenv("PTFT_TEST_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)  # urllib3's connection logs too
    texts = [f"secret test {i}" for i in range(10)]
    shown = []
    with ChatServer(faults=first_attempt_faults(("500", "429", "malformed", "timeout"))) as server:
        backend = OpenAIBackend(base_url=server.base_url, model="m", api_key_env="PTFT_TEST_API_KEY", **FAST)
        shown.append(repr(backend))
        replies, failures = run_all(backend, make_requests(texts))
    assert len(replies) == 10 and not failures
    assert {r.authorization for r in server.requests} == {f"Bearer {SECRET}"}

    # A wrong key (401) and a persisting 500: both error bodies echo the key back.
    for server_key, fault in [("another-key", None), (SECRET, "500")]:
        with ChatServer(api_key=server_key, faults=fault and always(fault)) as server:
            backend = OpenAIBackend(
                base_url=server.base_url, model="m", api_key_env="PTFT_TEST_API_KEY", max_retries=1, **FAST
            )
            replies, failures = run_all(backend, make_requests(["a b"]))
        (reason,) = failures.values()
        assert reason.startswith("HTTP 401: " if fault is None else "HTTP 500: ") and "Bearer ***" in reason
        shown += [repr(backend), str(backend), reason]

    warnings = retry_warnings(caplog)
    assert warnings and any("Bearer ***" in r.getMessage() for r in warnings)  # the check has teeth
    shown += [r.getMessage() for r in caplog.records] + [caplog.text]
    assert not [text for text in shown if "PLANTED" in text]


def test_a_missing_key_raises_naming_the_variable(monkeypatch):
    monkeypatch.delenv("PTFT_UNSET_KEY", raising=False)
    with pytest.raises(ValueError, match="PTFT_UNSET_KEY"):
        OpenAIBackend(base_url="http://127.0.0.1:1/v1", model="m", api_key_env="PTFT_UNSET_KEY")
    monkeypatch.setenv("PTFT_EMPTY_KEY", "")
    with pytest.raises(ValueError, match="PTFT_EMPTY_KEY"):
        OpenAIBackend(base_url="http://127.0.0.1:1/v1", model="m", api_key_env="PTFT_EMPTY_KEY")


def test_no_key_sends_no_authorization():
    with ChatServer() as server:
        backend = OpenAIBackend(base_url=server.base_url + "/", model="m", **FAST)
        replies, _ = run_all(backend, make_requests(["x y"]))
    assert len(replies) == 1
    assert [r.authorization for r in server.requests] == [None]


def test_callbacks_run_in_the_callers_thread():
    texts = [f"thread test {i}" for i in range(12)]
    idents = []

    def faults(body, n):  # some fail for good (401), some once (500), the rest succeed
        return planned_fault(body["messages"][-1]["content"], ("401", "500")) if n == 0 else None

    with ChatServer(faults=faults) as server:
        backend = OpenAIBackend(base_url=server.base_url, model="m", concurrency=4, **FAST)
        backend.run(
            make_requests(texts),
            lambda request, reply: idents.append(("reply", threading.get_ident())),
            lambda request, reason: idents.append(("failure", threading.get_ident())),
        )
    assert len(idents) == len(texts)
    assert {kind for kind, _ in idents} == {"reply", "failure"}
    assert {ident for _, ident in idents} == {threading.get_ident()}


def test_a_raising_callback_stops_the_run():
    seen = []

    def on_reply(request, reply):
        seen.append(request.key)
        if len(seen) == 3:
            raise RuntimeError("disk full")

    with ChatServer(delay_s=0.05) as server:
        backend = OpenAIBackend(base_url=server.base_url, model="m", concurrency=2, **FAST)
        with pytest.raises(RuntimeError, match="disk full"):
            backend.run(make_requests([f"text {i}" for i in range(40)]), on_reply, lambda request, reason: None)
        assert len(seen) == 3
        assert len(server.requests) <= 3 + 2 * 2  # only what was in flight or done, nothing new
    assert not [t for t in threading.enumerate() if t.name.startswith("openai-backend")]


def test_hold_after_answers_exactly_k_until_released():
    texts = [f"hold test {i}" for i in range(5)]
    result = []
    with ChatServer() as server:
        server.hold_after(2)
        backend = OpenAIBackend(base_url=server.base_url, model="m", concurrency=2, max_retries=0, timeout_s=5)
        client = threading.Thread(target=lambda: result.extend(run_all(backend, make_requests(texts))))
        client.start()
        assert server.wait_until(lambda s: s.outcomes()["held"] == 2)
        time.sleep(0.1)  # nothing else arrives while both workers are held
        assert server.outcomes() == Counter({"ok": 2, "held": 2})
        server.release()  # held requests are closed unanswered; the rest is served normally
        client.join(5)
        assert not client.is_alive()
    replies, failures = result
    assert len(replies) == 3 and len(failures) == 2
    assert server.ok_count() == 3 and set(server.ok_contents().values()) == {1}
    assert all("Connection" in reason for reason in failures.values()), failures


def test_an_abort_does_not_wait_for_rate_limit_slots():
    def on_reply(request, reply):
        raise RuntimeError("stop here")

    with ChatServer() as server:
        backend = OpenAIBackend(base_url=server.base_url, model="m", concurrency=2, requests_per_minute=60, **FAST)
        start = time.monotonic()
        with pytest.raises(RuntimeError, match="stop here"):
            backend.run(make_requests(["first", "second", "third"]), on_reply, lambda request, reason: None)
        assert time.monotonic() - start < 0.5  # the second slot was 1 s away
        assert len(server.requests) == 1
