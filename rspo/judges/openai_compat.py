"""Judge ``openai``: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, TGI...).

Standard library only. The model is asked for a one-token verdict "A"/"B"; with
``logprobs`` the verdict probability comes from the top log-probabilities, otherwise the
answer is hard (1.0 / 0.0). The API key is read from an environment variable at request
time and never stored on the object, shown in ``repr``/``judge_id``, logged or raised.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import math
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rspo.judges._template import DEFAULT_PAIR_TEMPLATE, check_template, render_pair
from rspo.judges.base import Judge, JudgeError, register_judge

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = (
    "You are an impartial judge of response quality. Reply with exactly one letter."
)
RETRY_STATUS = frozenset({408, 409, 429})  # plus every 5xx
_STRIP = " \t\r\n*\"'`().:[]"


def _norm(text: str) -> str:
    """A verdict or choice as compared: no surrounding spaces, quotes or punctuation, no case."""
    return text.strip(_STRIP).casefold()


class _Retryable(Exception):
    """An attempt failed in a way worth retrying."""

    def __init__(self, what: str, retry_after: float | None = None) -> None:
        super().__init__(what)
        self.retry_after = retry_after


@register_judge("openai")
class OpenAIJudge(Judge):
    """Pairwise LLM judge over HTTP; order-sensitive, so pair it with ``symmetric_prefer``.

    Retries 408/409/429/5xx, timeouts and connection errors up to ``max_attempts`` times
    with exponential backoff and jitter (``Retry-After`` honoured, capped at
    ``backoff_max``); any other failure raises :class:`JudgeError` at once.

    ``usage`` (cumulative, thread-safe): ``calls`` (requests answered with a JSON object,
    retries not counted), ``prompt_tokens`` and ``completion_tokens`` summed from the
    responses' ``usage`` fields, and ``calls_with_usage`` (how many responses reported it).
    """

    order_sensitive = True

    def __init__(
        self,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        api_key_env: str | None = "OPENAI_API_KEY",
        template: str = DEFAULT_PAIR_TEMPLATE,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        choices: tuple[str, str] | list[str] = ("A", "B"),
        logprobs: bool = True,
        top_logprobs: int = 5,
        temperature: float = 0.0,
        max_tokens: int | None = 1,
        on_unparseable: str = "error",
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        header_env: Mapping[str, str] | None = None,
        max_concurrency: int = 8,
        max_attempts: int = 6,
        timeout: float = 60.0,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        seed: int | None = 0,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        check_template(template)
        if len(choices) != 2 or choices[0] == choices[1]:
            raise ValueError(f"openai judge: choices must be two distinct strings, got {choices}")
        if on_unparseable not in ("error", "half"):
            raise ValueError(f"on_unparseable must be 'error' or 'half', got {on_unparseable!r}")
        if max_concurrency < 1 or max_attempts < 1:
            raise ValueError("max_concurrency and max_attempts must be >= 1")
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("openai judge: base_url must be an http(s) URL like http://host/v1")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "openai judge: base_url must not contain credentials (user:password@); "
                "put the API key in the environment variable named by api_key_env"
            )
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.api_key_env = api_key_env or None
        if self.api_key_env is not None and not os.environ.get(self.api_key_env):
            raise JudgeError(
                f"openai judge: environment variable {self.api_key_env} is not set; export "
                "the API key there, or pass api_key_env=None for an endpoint without auth"
            )
        self.template = template
        self.system_prompt = system_prompt
        self.choices = (str(choices[0]), str(choices[1]))
        # replies are matched to the choices without case, spacing or quoting ("a", " A")
        self._keys = tuple(_norm(c) for c in self.choices)
        if not all(self._keys) or self._keys[0] == self._keys[1]:
            raise ValueError(
                f"openai judge: choices {list(self.choices)} must differ in more than case, "
                "spacing and punctuation"
            )
        self.logprobs = logprobs
        self.top_logprobs = top_logprobs
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.on_unparseable = on_unparseable
        self.extra_body = dict(extra_body or {})
        self._extra_headers = dict(extra_headers or {})
        # header -> environment variable holding its value (e.g. Azure's api-key): read at
        # each request, never stored in the config, the judge id or a log
        self.header_env = dict(header_env or {})
        unset = [v for v in self.header_env.values() if not os.environ.get(v)]
        if unset:
            raise JudgeError(f"openai judge: header_env names unset environment variables {unset}")
        self.max_concurrency = max_concurrency
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._rng = random.Random(seed)
        self._sleep = sleep or time.sleep
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "attempts": 0, "retries": 0, "hard_verdicts": 0}
        self.usage = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "calls_with_usage": 0}

    @property
    def judge_id(self) -> str:
        settings = [
            self.template,
            self.system_prompt,
            self.choices,
            self.logprobs,
            self.top_logprobs,
            self.temperature,
            self.max_tokens,
            self.on_unparseable,
            sorted(self.extra_body.items()),
            "verdicts-v2",  # replies matched without case (v1's cached P = 0 for "a" not reused)
        ]
        h = hashlib.sha256(json.dumps(settings, default=repr).encode()).hexdigest()[:12]
        return f"openai[url={self.base_url},model={self.model},settings={h}]"

    # -- one request ---------------------------------------------------------------

    def _payload(self, prompt: str, response_a: str, response_b: str) -> dict[str, Any]:
        messages = []
        if self.system_prompt is not None:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append(
            {"role": "user", "content": render_pair(self.template, prompt, response_a, response_b)}
        )
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
        }
        if self.max_tokens is not None:  # None: omit (e.g. use max_completion_tokens in extra_body)
            body["max_tokens"] = self.max_tokens
        if self.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = self.top_logprobs
        body.update(self.extra_body)
        return body

    def _redact(self, text: str) -> str:
        names = [self.api_key_env] if self.api_key_env else []
        for key in (os.environ.get(n) for n in [*names, *self.header_env.values()]):
            if key:
                text = text.replace(key, "***")
        return text

    def _attempt(self, data: bytes) -> bytes:
        """One HTTP POST; raises _Retryable for transient failures, JudgeError otherwise."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        headers.update(self._extra_headers)
        for header, var in self.header_env.items():
            value = os.environ.get(var)
            if not value:
                raise JudgeError(f"openai judge: environment variable {var} is unset")
            headers[header] = value
        if self.api_key_env is not None:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise JudgeError(f"openai judge: environment variable {self.api_key_env} is unset")
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as e:
            body = self._redact(e.read(300).decode("utf-8", "replace")) if e.fp else ""
            what = f"HTTP {e.code}: {body.strip()[:300]}"
            if e.code in RETRY_STATUS or e.code >= 500:
                raise _Retryable(what, _retry_after(e.headers)) from None
            raise JudgeError(
                f"openai judge: POST {self.url} failed with {what} (not retried)"
            ) from None
        except TimeoutError:
            raise _Retryable(f"timeout after {self.timeout}s") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise _Retryable(f"timeout after {self.timeout}s") from None
            raise _Retryable(f"connection error: {self._redact(str(e.reason))}") from None
        except (ConnectionError, http.client.HTTPException) as e:
            what = f"connection error: {type(e).__name__}: {self._redact(str(e))}"
            raise _Retryable(what) from None

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        """POST with retries; returns the decoded JSON object."""
        data = json.dumps(payload).encode("utf-8")
        with self._lock:
            self.stats["requests"] += 1
        last = ""
        for attempt in range(1, self.max_attempts + 1):
            with self._lock:
                self.stats["attempts"] += 1
            try:
                raw = self._attempt(data)
                break
            except _Retryable as e:
                last = str(e)
                if attempt == self.max_attempts:
                    raise JudgeError(
                        f"openai judge: POST {self.url} failed after {attempt} "
                        f"attempts; last error: {last}"
                    ) from None
                delay = self._backoff(attempt, e.retry_after)
                log.warning(
                    "openai judge: %s from %s (attempt %d/%d); retrying in %.2fs",
                    last,
                    self.url,
                    attempt,
                    self.max_attempts,
                    delay,
                )
                with self._lock:
                    self.stats["retries"] += 1
                self._sleep(delay)
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            snippet = self._redact(raw[:200].decode("utf-8", "replace"))
            raise JudgeError(
                f"openai judge: {self.url} returned malformed JSON: {snippet!r}"
            ) from None
        if not isinstance(obj, dict):
            raise JudgeError(f"openai judge: {self.url} returned JSON that is not an object")
        self._count_usage(obj.get("usage"))
        return obj

    def _count_usage(self, usage: Any) -> None:
        """Add one answered call and the tokens its ``usage`` reports (ill-typed: ignored)."""
        tokens = {}
        if isinstance(usage, dict):
            for key in ("prompt_tokens", "completion_tokens"):
                v = usage.get(key)
                if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
                    tokens[key] = v
        with self._lock:
            self.usage["calls"] += 1
            self.usage["calls_with_usage"] += bool(tokens)
            for key, v in tokens.items():
                self.usage[key] += v

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter in [½, 1] of the step; Retry-After wins if larger."""
        step = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        with self._lock:
            delay = step * (0.5 + 0.5 * self._rng.random())
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max))
        return delay

    # -- parsing -------------------------------------------------------------------

    def parse(self, obj: dict[str, Any]) -> float:
        """P(first choice) from a chat-completions response object."""
        try:
            choice = obj["choices"][0]
            content = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise JudgeError(
                f"openai judge: unexpected response shape from {self.url}: "
                f"{self._redact(json.dumps(obj)[:300])}"
            ) from None
        p = self._from_logprobs(choice.get("logprobs"))
        if p is not None:
            return p
        verdict = _norm(content)
        with self._lock:
            self.stats["hard_verdicts"] += 1
        if verdict == self._keys[0]:
            return 1.0
        if verdict == self._keys[1]:
            return 0.0
        if self.on_unparseable == "half":
            return 0.5
        raise JudgeError(
            f"openai judge: could not parse a verdict {list(self.choices)} from the reply "
            f"{self._redact(content)[:100]!r} of {self.url} (set on_unparseable='half' "
            "to score such replies 0.5)"
        )

    def _from_logprobs(self, lp: Any) -> float | None:
        """Renormalised probability of choice A among {A, B} in the first token's top-k."""
        try:
            first = lp["content"][0]
        except (KeyError, IndexError, TypeError):
            return None
        if not isinstance(first, dict):
            return None
        cands = first.get("top_logprobs") or [first]
        mass = [0.0, 0.0]
        for c in cands:
            try:
                tok, logprob = _norm(str(c["token"])), float(c["logprob"])
            except (KeyError, TypeError, ValueError):
                continue
            for k in (0, 1):
                if tok == self._keys[k]:
                    mass[k] += math.exp(logprob)
        total = mass[0] + mass[1]
        return None if total <= 0.0 else mass[0] / total

    # -- the batch -----------------------------------------------------------------

    def _one(self, triple: tuple[str, str, str]) -> float:
        return self.parse(self._post(self._payload(*triple)))

    def _prefer(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[float]:
        triples = list(zip(prompts, responses_a, responses_b))
        workers = min(self.max_concurrency, len(triples))
        if workers <= 1:
            return [self._one(t) for t in triples]
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-judge")
        try:
            futures = [pool.submit(self._one, t) for t in triples]
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _retry_after(headers: Any) -> float | None:
    """Seconds from a numeric ``Retry-After`` header, if any."""
    try:
        value = headers.get("Retry-After") if headers is not None else None
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None
