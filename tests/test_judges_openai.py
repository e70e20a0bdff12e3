"""The OpenAI-compatible judge against a canned HTTP server on 127.0.0.1 (no network)."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rspo.judges import JudgeError, build_judge, symmetric_prefer

KEY = "sk-test-SECRET-0123456789"


class FakeServer:
    """Loopback server; ``respond(n, body, headers) -> (status, payload, delay, headers)``."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict, dict]] = []
        self.respond = lambda n, body, headers: (200, completion("A"), 0.0, {})
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = dict(self.headers.items())
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    body = {}
                with server._lock:
                    server.requests.append((headers, body))
                    n = len(server.requests)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    status, payload, delay, extra = server.respond(n, body, headers)
                    time.sleep(delay)
                    with server._lock:  # done "processing": count before the client can see
                        server.in_flight -= 1  # the reply and send its next request
                    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                    self.send_response(status)
                    for k, v in extra.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(content: str, top: dict[str, float] | None = None) -> dict:
    """A chat-completions response; ``top`` maps tokens to probabilities for logprobs."""
    choice: dict = {"index": 0, "message": {"role": "assistant", "content": content}}
    if top is not None:
        tops = [{"token": t, "logprob": math.log(p)} for t, p in top.items()]
        choice["logprobs"] = {
            "content": [{"token": content, "logprob": tops[0]["logprob"], "top_logprobs": tops}]
        }
    return {"id": "x", "object": "chat.completion", "choices": [choice]}


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RSPO_TEST_KEY", KEY)
    s = FakeServer()
    yield s
    s.close()


def make(server: FakeServer, sleeps: list[float] | None = None, **kw):
    """An openai judge pointed at the fake server, with a recording no-op sleep."""
    record = sleeps if sleeps is not None else []
    settings = dict(model="judge-model", base_url=server.url, api_key_env="RSPO_TEST_KEY")
    settings.update(kw)
    return build_judge("openai", sleep=record.append, **settings)


def test_logprobs_give_probabilities_and_requests_are_well_formed(server):
    def respond(n, body, headers):
        good_first = "[RESPONSE A]\ngood" in body["messages"][-1]["content"]
        top = {"A": 0.6, "B": 0.2, "C": 0.2} if good_first else {" B": 0.5, "A": 0.1, "**": 0.4}
        return 200, completion("A" if good_first else "B", top), 0.02, {}

    server.respond = respond
    judge = make(server, max_concurrency=2)
    assert judge.order_sensitive
    prompts = ["q1", "q2", "q3"] * 2
    a, b = ["good", "bad", "good"] * 2, ["bad", "good", "bad"] * 2
    ps = judge.prefer(prompts, a, b)
    assert ps == pytest.approx([0.75, 1 / 6, 0.75] * 2)
    assert server.max_in_flight <= 2 and len(server.requests) == 6
    headers, body = server.requests[0]
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert body["model"] == "judge-model" and body["max_tokens"] == 1
    assert body["logprobs"] is True and body["top_logprobs"] == 5
    assert body["messages"][0]["role"] == "system"
    user = body["messages"][1]["content"]
    assert "[PROMPT]\nq" in user and "[RESPONSE B]\n" in user
    # both orders in one batch: ½(0.75 + 1 − 1/6)
    assert symmetric_prefer(judge, ["q"], ["good"], ["bad"]) == pytest.approx([19 / 24])


def test_hard_verdicts_and_unparseable(server):
    replies = {"x": " **A**", "y": "B.", "z": "Neither"}
    server.respond = lambda n, body, h: (
        200,
        completion(replies[body["messages"][-1]["content"].split("[PROMPT]\n")[1][0]]),
        0.0,
        {},
    )
    judge = make(server, logprobs=False)
    assert judge.prefer(["x", "y"], ["a", "a"], ["b", "b"]) == [1.0, 0.0]
    assert "logprobs" not in server.requests[-1][1]
    with pytest.raises(JudgeError, match="could not parse a verdict.*Neither"):
        judge.prefer(["z"], ["a"], ["b"])
    assert make(server, logprobs=False, on_unparseable="half").prefer(["z"], ["a"], ["b"]) == [0.5]


def test_verdicts_match_the_choices_without_case_or_spacing(server):
    """A reply 'a', a top token 'a' and choices written ' A' / ' B' are the same verdicts
    (a lowercase top token read as no vote for A gave P = 0 against a 95% vote before)."""
    server.respond = lambda n, body, h: (200, completion("a", {"a": 0.95, "B": 0.05}), 0.0, {})
    assert make(server).prefer(["q"], ["x"], ["y"]) == pytest.approx([0.95])
    server.respond = lambda n, body, h: (200, completion(" A"), 0.0, {})
    judge = make(server, logprobs=False, choices=[" A", " B"])
    assert judge.prefer(["q"], ["x"], ["y"]) == [1.0]
    with pytest.raises(ValueError, match="must differ in more than case"):
        make(server, choices=["A", "a"])


def test_429_then_success_is_retried(server):
    server.respond = lambda n, body, h: (
        (429, {"error": "slow down"}, 0.0, {"Retry-After": "0"})
        if n == 1
        else (200, completion("B", {"B": 0.9, "A": 0.1}), 0.0, {})
    )
    sleeps: list[float] = []
    judge = make(server, sleeps, backoff_base=0.5)
    assert judge.prefer(["q"], ["a"], ["b"]) == pytest.approx([0.1])
    assert judge.stats["retries"] == 1 and judge.stats["attempts"] == 2
    assert len(sleeps) == 1 and 0.25 <= sleeps[0] <= 0.5


def test_repeated_500_gives_clear_error_after_n_attempts(server, caplog):
    server.respond = lambda n, body, h: (500, {"error": "boom"}, 0.0, {})
    sleeps: list[float] = []
    judge = make(server, sleeps, max_attempts=4, backoff_base=1.0, backoff_max=3.0, seed=7)
    with pytest.raises(JudgeError) as e:
        judge.prefer(["q"], ["a"], ["b"])
    msg = str(e.value)
    assert f"POST {server.url}/chat/completions" in msg
    assert "after 4 attempts" in msg and "HTTP 500" in msg
    assert len(server.requests) == 4
    assert [lo <= s <= hi for s, (lo, hi) in zip(sleeps, [(0.5, 1), (1, 2), (1.5, 3)])] == [
        True
    ] * 3
    assert "retrying" in caplog.text
    # the jitter is seeded: the same seed gives the same delays
    again: list[float] = []
    with pytest.raises(JudgeError):
        make(server, again, max_attempts=4, backoff_base=1.0, backoff_max=3.0, seed=7).prefer(
            ["q"], ["a"], ["b"]
        )
    assert again == sleeps


def test_timeout_is_retried(server):
    server.respond = lambda n, body, h: (200, completion("A"), 1.0 if n == 1 else 0.0, {})
    judge = make(server, timeout=0.2, logprobs=False)
    assert judge.prefer(["q"], ["a"], ["b"]) == [1.0]
    assert judge.stats["retries"] == 1


def test_timeouts_exhausted(server):
    server.respond = lambda n, body, h: (200, completion("A"), 0.6, {})
    judge = make(server, timeout=0.1, max_attempts=2)
    with pytest.raises(JudgeError, match="after 2 attempts; last error: timeout"):
        judge.prefer(["q"], ["a"], ["b"])


def test_connection_refused_is_retried_then_reported(monkeypatch):
    monkeypatch.setenv("RSPO_TEST_KEY", KEY)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps: list[float] = []
    judge = build_judge(
        "openai",
        model="m",
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key_env="RSPO_TEST_KEY",
        max_attempts=3,
        sleep=sleeps.append,
    )
    with pytest.raises(JudgeError, match="after 3 attempts; last error: connection error"):
        judge.prefer(["q"], ["a"], ["b"])
    assert len(sleeps) == 2


def test_malformed_json_and_bad_shapes(server):
    server.respond = lambda n, body, h: (200, b"{not json", 0.0, {})
    with pytest.raises(JudgeError, match="malformed JSON"):
        make(server).prefer(["q"], ["a"], ["b"])
    server.respond = lambda n, body, h: (200, {"choices": []}, 0.0, {})
    with pytest.raises(JudgeError, match="unexpected response shape"):
        make(server).prefer(["q"], ["a"], ["b"])


def test_client_errors_are_not_retried(server):
    server.respond = lambda n, body, h: (400, {"error": "bad model"}, 0.0, {})
    judge = make(server)
    with pytest.raises(JudgeError, match=r"HTTP 400.*bad model.*not retried"):
        judge.prefer(["q"], ["a"], ["b"])
    assert len(server.requests) == 1


def test_api_key_never_leaks(server, caplog):
    # a hostile/buggy server echoes the Authorization header back in its error bodies
    server.respond = lambda n, body, h: (
        503 if n == 1 else 401,
        {"error": f"bad auth {h.get('Authorization')}"},
        0.0,
        {},
    )
    with pytest.raises(ValueError, match="must not contain credentials") as bad_url:
        make(server, base_url=server.url.replace("http://", "http://user:pw@"))
    assert "pw" not in str(bad_url.value)
    judge = make(server)
    with pytest.raises(JudgeError) as e:
        judge.prefer(["q"], ["a"], ["b"])
    texts = [repr(judge), judge.judge_id, str(e.value), caplog.text, str(vars(judge))]
    assert "bad auth Bearer ***" in str(e.value)
    for t in texts:
        assert KEY not in t and "pw@" not in t


def test_missing_key_and_no_auth(server, monkeypatch):
    monkeypatch.delenv("RSPO_TEST_KEY")
    with pytest.raises(JudgeError, match="RSPO_TEST_KEY is not set"):
        make(server)
    judge = make(server, api_key_env=None, logprobs=False)
    assert judge.prefer(["q"], ["a"], ["b"]) == [1.0]
    assert "Authorization" not in server.requests[-1][0]


def test_judge_id_tracks_settings(server):
    j1, j2 = make(server), make(server, template="{prompt}|{response_a}|{response_b}")
    assert j1.judge_id != j2.judge_id and j1.judge_id == make(server).judge_id
    assert "model=judge-model" in j1.judge_id


@pytest.mark.parametrize(
    "header", ["api-key", "x-api-key", "Ocp-Apim-Subscription-Key", "Authorization"]
)
def test_a_credential_in_extra_headers_is_refused_before_it_reaches_a_saved_config(header):
    from rspo.judges import build_judge

    with pytest.raises(
        ValueError, match=rf"setting 'extra_headers.{header}' looks like a credential"
    ):
        build_judge("openai", model="m", api_key_env=None, extra_headers={header: "sk-live"})
    ok = build_judge(
        "openai", model="m", api_key_env=None, max_tokens=1, extra_headers={"X-Trace": "1"}
    )
    assert ok.max_tokens == 1


def test_header_env_sends_a_secret_header_from_the_environment_only(server, monkeypatch):
    """Azure-style `api-key` header: its value comes from the environment at each request,
    reaches the server, and is not in the judge's settings, id or repr."""
    monkeypatch.setenv("RSPO_TEST_HEADER", "hdr-secret-42")
    server.respond = lambda n, body, headers: (200, completion("A", {"A": 0.9, "B": 0.1}), 0, {})
    j = make(server, api_key_env=None, header_env={"api-key": "RSPO_TEST_HEADER"})
    assert j.prefer(["q"], ["a"], ["b"])[0] > 0.5
    sent = server.requests[0][0]
    assert {k.lower(): v for k, v in sent.items()}["api-key"] == "hdr-secret-42"
    assert "hdr-secret-42" not in repr(j) + j.judge_id
    monkeypatch.delenv("RSPO_TEST_HEADER")
    with pytest.raises(Exception, match=r"header_env names unset environment variables"):
        make(server, api_key_env=None, header_env={"api-key": "RSPO_TEST_HEADER"})


def test_settings_that_merely_mention_tokens_are_not_taken_for_credentials():
    from rspo.judges import build_judge

    j = build_judge(
        "openai", model="m", api_key_env=None, extra_body={"stop_token_ids": [1], "eos_token": "x"}
    )
    assert j.extra_body["stop_token_ids"] == [1]
