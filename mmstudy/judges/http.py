"""A judge behind any OpenAI-compatible /chat/completions endpoint (vLLM, llama.cpp server, OpenAI).

`HttpJudge` implements the `mmstudy.judges.base.Judge` protocol: it sends each `JudgeRequest` as one chat completion
(optional system message, then the user prompt with the image attached as a data URL), pinned to one model id, at
temperature 0 by default. `request.context` is oracle-only ground truth and is never sent.

    retries   connection errors, timeouts, HTTP 429 and 5xx are retried with exponential backoff
              (backoff_s * 2**attempt, or the server's Retry-After when longer, up to a minute); `timeout_s`
              bounds each attempt as a whole, not each read; any other 4xx, or a 200 without
              choices[0].message.content, fails at once. A failure is a `JudgeReply(text=None, error=...)`,
              counted in `stats["failures"]`, never cached.
    cache     with `cache_dir`, every answer is stored at `cache_dir/<hh>/<sha256>.json`, keyed by the sha256 of
              the canonical JSON of the request body (model, messages with the image bytes, temperature,
              max_tokens), with the reply's own sha256; a hit needs no network call. A corrupt or edited entry
              is an error, never silently replaced or reused.
    safety    a redirect is refused, never followed (the request, API key included, would go to another address);
              a key sent over plain http to a host other than this machine is warned about; a reply larger than
              `max_reply_bytes` is a failure.
    pinning   the model id each reply names is recorded; one that differs from the pinned id is counted in
              `stats["model_mismatch"]` and logged once.

    >>> judge = HttpJudge.from_spec("http://127.0.0.1:8000/v1#Qwen/Qwen2-VL-7B-Instruct", cache_dir="cache/judge")
    >>> judge.complete([JudgeRequest(prompt, image="images/0001.png", task="mmhal", key="0001")])
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import ipaddress
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from mmstudy.io import DataError, read_json, write_json
from mmstudy.judges.base import JudgeReply, JudgeRequest, new_stats

logger = logging.getLogger(__name__)

CACHE_FORMAT = 2            # 2 adds the reply's sha256; entries of format 1 are read unverified
MAX_RETRY_AFTER_S = 60.0
IMAGE_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
              ".webp": "image/webp", ".bmp": "image/bmp"}
_ERROR_SNIPPET_CHARS = 300


@dataclass(frozen=True)
class _Call:
    """One prepared request: the body as sent, its canonical bytes, their sha256 and a summary for the cache."""

    request: JudgeRequest
    payload: bytes
    digest: str
    summary: dict


class _BadReply(Exception):
    """A 200 response that carries no usable answer."""


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A judge's request is never re-sent to another address: the 3xx reaches `_send` as an HTTPError."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _retry_after_s(e: urllib.error.HTTPError) -> float:
    """A 429 / 503's Retry-After in seconds (the delta form; 0 when absent or a date), capped."""
    try:
        return min(max(float(e.headers.get("Retry-After", "")), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        return 0.0


def _is_this_machine(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def canonical_json(obj) -> bytes:
    """The bytes that are both hashed for the cache key and sent: sorted keys, no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _where(request: JudgeRequest) -> str:
    return f"judge request {request.key!r}" if request.key else "judge request (no key)"


def _image_parts(request: JudgeRequest) -> tuple[dict, dict]:
    """(the image_url content part as sent, its summary without the base64 payload)."""
    path = Path(request.image)
    if not path.is_file():
        raise DataError(f"{_where(request)}: image file not found: {path}")
    mime = IMAGE_MIME.get(path.suffix.lower())
    if mime is None:
        raise DataError(f"{_where(request)}: unsupported image type {path.suffix!r} for {path} "
                        f"(expected one of {', '.join(sorted(IMAGE_MIME))})")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{_where(request)}: cannot read image {path}: {e}") from e
    url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    summary = {"mime": mime, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return ({"type": "image_url", "image_url": {"url": url}},
            {"type": "image_url", "image_url": summary})


def _messages(request: JudgeRequest) -> tuple[list[dict], list[dict]]:
    """(messages as sent, messages as summarised in the cache)."""
    head = [{"role": "system", "content": request.system}] if request.system is not None else []
    if request.image is None:
        user = {"role": "user", "content": request.prompt}
        return head + [user], head + [user]
    text = {"type": "text", "text": request.prompt}
    sent, summary = _image_parts(request)
    return (head + [{"role": "user", "content": [text, sent]}],
            head + [{"role": "user", "content": [text, summary]}])


def _reply_text(raw: bytes) -> tuple[str, str | None]:
    """(choices[0].message.content, the reply's model id) of a 200 body; _BadReply without a content."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:   # malformed, not UTF-8, too deep, integers past the limit
        raise _BadReply(f"200 response is not JSON ({type(e).__name__}: {str(e)[:200]}): "
                        f"{raw[:_ERROR_SNIPPET_CHARS]!r}") from None
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        content = None
    if not isinstance(content, str):
        raise _BadReply(f"200 response without a string choices[0].message.content: "
                        f"{raw[:_ERROR_SNIPPET_CHARS].decode('utf-8', 'replace')}")
    model = data.get("model")
    return content, model if isinstance(model, str) else None


def _http_error_text(e: urllib.error.HTTPError) -> str:
    try:
        body = e.read()[:_ERROR_SNIPPET_CHARS].decode("utf-8", "replace")
    except (OSError, ValueError, AttributeError):  # best effort: the status alone is still a clear error
        body = ""
    finally:
        e.close()
    return f"HTTP {e.code} {e.reason}" + (f": {body}" if body else "")


def _retryable_status(code: int) -> bool:
    return code == 429 or code >= 500


class HttpJudge:
    """A `Judge` that asks an OpenAI-compatible server, pinned to one model id (see the module docstring)."""

    def __init__(self, base_url: str, model: str, *, cache_dir: str | Path | None = None, temperature: float = 0.0,
                 max_retries: int = 4, backoff_s: float = 1.0, timeout_s: float = 120.0,
                 api_key_env: str = "OPENAI_API_KEY", max_workers: int = 4, max_reply_bytes: int = 4 << 20,
                 sleep: Callable[[float], None] = time.sleep):
        base_url = base_url.rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"HttpJudge base_url must start with http:// or https://, got {base_url!r}")
        if not model:
            raise ValueError("HttpJudge needs a pinned model id (the model the server serves)")
        if max_retries < 0 or max_workers < 1 or backoff_s < 0 or timeout_s <= 0 or max_reply_bytes < 1:
            raise ValueError(f"HttpJudge needs max_retries >= 0, max_workers >= 1, backoff_s >= 0, timeout_s > 0 "
                             f"and max_reply_bytes >= 1, got {max_retries}, {max_workers}, {backoff_s}, {timeout_s}, "
                             f"{max_reply_bytes}")
        self.base_url = base_url
        self.url = f"{base_url}/chat/completions"
        self.model = model
        self.name = f"http:{base_url}#{model}"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.temperature = temperature
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.api_key_env = api_key_env
        self.max_workers = max_workers
        self.stats = new_stats() | {"model_mismatch": 0}
        self.served_models: set[str] = set()
        self._sleep = sleep
        self._lock = threading.Lock()
        self._warned_mismatch = False
        self.max_reply_bytes = max_reply_bytes
        self._opener = urllib.request.build_opener(_RefuseRedirects)
        host = urllib.parse.urlsplit(base_url).hostname or ""
        if base_url.startswith("http://") and os.environ.get(api_key_env) and not _is_this_machine(host):
            logger.warning("%s: the API key in $%s would travel unencrypted over plain http to %s; use https",
                           self.name, api_key_env, host)

    @classmethod
    def from_spec(cls, spec: str, **kwargs) -> "HttpJudge":
        """`HttpJudge.from_spec("http://127.0.0.1:8000/v1#MODEL_ID", cache_dir=...)`: the model id is required."""
        base_url, sep, model = spec.partition("#")
        if not sep or not model.strip():
            raise ValueError(f"HTTP judge spec {spec!r} names no model: write URL#MODEL_ID, "
                             f"e.g. http://127.0.0.1:8000/v1#Qwen/Qwen2-VL-7B-Instruct")
        return cls(base_url, model.strip(), **kwargs)

    # -- the Judge protocol ------------------------------------------------------------------------------------

    def complete(self, requests: Sequence[JudgeRequest]) -> list[JudgeReply]:
        """One reply per request, in input order. Missing images and corrupt cache entries raise before any
        network call; server failures come back as replies with text None."""
        calls = [self._prepare(r) for r in requests]
        replies: list[JudgeReply | None] = [self._cached(c) for c in calls]
        pending = [i for i, reply in enumerate(replies) if reply is None]
        self._count("requests", len(calls))
        self._count("cache_hits", len(calls) - len(pending))
        if pending:
            with ThreadPoolExecutor(max_workers=min(self.max_workers, len(pending))) as pool:
                for i, reply in zip(pending, pool.map(lambda i: self._query(calls[i]), pending)):
                    replies[i] = reply
        return replies

    # -- preparing and caching ---------------------------------------------------------------------------------

    def _prepare(self, request: JudgeRequest) -> _Call:
        messages, summary_messages = _messages(request)
        body = {"model": self.model, "messages": messages, "temperature": self.temperature,
                "max_tokens": request.max_tokens}
        payload = canonical_json(body)
        summary = body | {"messages": summary_messages}
        return _Call(request, payload, hashlib.sha256(payload).hexdigest(), summary)

    def cache_path(self, digest: str) -> Path:
        if self.cache_dir is None:
            raise ValueError(f"{self.name} has no cache_dir")
        return self.cache_dir / digest[:2] / f"{digest}.json"

    def _cached(self, call: _Call) -> JudgeReply | None:
        if self.cache_dir is None:
            return None
        path = self.cache_path(call.digest)
        if not path.exists():
            return None
        hint = "delete the file to ask the judge again"
        try:
            entry = read_json(path)
        except DataError as e:
            raise DataError(f"corrupt judge cache entry ({e}); {hint}") from e
        if not isinstance(entry, dict) or not isinstance(entry.get("reply"), str) or entry.get("hash") != call.digest:
            raise DataError(f"{path}: corrupt judge cache entry (expected an object with a string 'reply' and "
                            f"'hash' {call.digest}); {hint}")
        if entry.get("format", 1) >= 2 and entry.get("reply_sha256") != _sha256(entry["reply"]):
            raise DataError(f"{path}: the cached reply does not match its checksum (edited?); {hint}")
        logger.debug("%s: cache hit for %s", self.name, _where(call.request))
        self._check_model(entry.get("served_model"))     # a cached reply from another model counts as one
        return JudgeReply(entry["reply"], cached=True)

    def _store(self, call: _Call, text: str, served_model: str | None) -> None:
        if self.cache_dir is not None:
            write_json(self.cache_path(call.digest), {"format": CACHE_FORMAT, "hash": call.digest,
                                                      "request": call.summary, "reply": text,
                                                      "reply_sha256": _sha256(text), "served_model": served_model})

    # -- talking to the server ---------------------------------------------------------------------------------

    def _query(self, call: _Call) -> JudgeReply:
        raw, error, attempts = self._send(call)
        if raw is not None:
            try:
                text, served_model = _reply_text(raw)
            except _BadReply as e:
                error = str(e)
        if error is not None:
            self._count("failures")
            logger.warning("%s: %s failed after %d attempt(s): %s", self.name, _where(call.request), attempts, error)
            return JudgeReply(None, error=error, attempts=attempts)
        self._check_model(served_model)
        self._store(call, text, served_model)
        return JudgeReply(text, attempts=attempts)

    def _http_request(self, call: _Call) -> urllib.request.Request:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        api_key = os.environ.get(self.api_key_env)
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return urllib.request.Request(self.url, data=call.payload, headers=headers, method="POST")

    def _send(self, call: _Call) -> tuple[bytes | None, str | None, int]:
        """(200 body, None, attempts) or (None, error, attempts), retrying what may be transient."""
        error = ""
        for attempt in range(self.max_retries + 1):
            wait = 0.0
            try:
                body = self._fetch(call)
                if len(body) > self.max_reply_bytes:
                    return None, f"{self.url}: reply larger than {self.max_reply_bytes} bytes, refused", attempt + 1
                return body, None, attempt + 1
            except urllib.error.HTTPError as e:
                wait = _retry_after_s(e)
                if 300 <= e.code < 400:
                    return None, (f"{self.url}: HTTP {e.code} redirect to {e.headers.get('Location')!r} refused (the "
                                  "request and its API key are never re-sent elsewhere); give the final URL"), \
                        attempt + 1
                error = _http_error_text(e)
                if not _retryable_status(e.code):
                    return None, error, attempt + 1
            except urllib.error.URLError as e:
                error = f"cannot reach {self.url}: {e.reason}"
            except (OSError, http.client.HTTPException) as e:  # timeouts and resets while reading
                error = f"{type(e).__name__} from {self.url}: {e}"
            if attempt < self.max_retries:
                delay = max(self.backoff_s * 2 ** attempt, wait)
                self._count("retries")
                logger.info("%s: %s, retrying %s in %.1f s", self.name, error, _where(call.request), delay)
                self._sleep(delay)
        return None, error, self.max_retries + 1

    def _fetch(self, call: _Call) -> bytes:
        """One POST and its reply, within `timeout_s` in all (a server that trickles its reply byte by byte is
        cut off, not waited on for each byte), read up to one byte past `max_reply_bytes`."""
        deadline = time.monotonic() + self.timeout_s
        chunks, size = [], 0
        with self._opener.open(self._http_request(call), timeout=self.timeout_s) as response:
            while size <= self.max_reply_bytes:
                chunk = response.read1(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no whole reply within {self.timeout_s:g} s")
        return b"".join(chunks)

    # -- bookkeeping -------------------------------------------------------------------------------------------

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    def _check_model(self, served_model: str | None) -> None:
        if served_model is None:
            return
        with self._lock:
            self.served_models.add(served_model)
            if served_model == self.model:
                return
            self.stats["model_mismatch"] += 1
            first, self._warned_mismatch = not self._warned_mismatch, True
        if first:
            logger.warning("%s: the server answered as model %r, not the pinned %r (counted in "
                           "stats['model_mismatch'], warned once)", self.name, served_model, self.model)
