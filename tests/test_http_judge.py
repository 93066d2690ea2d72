"""HttpJudge against a real (tiny) OpenAI-compatible server on 127.0.0.1: request body, cache, retries, failures."""

import base64
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mmstudy.io import DataError
from mmstudy.judges.base import JudgeRequest
from mmstudy.judges.http import HttpJudge

MODEL = "judge-model-7b"
KEY_ENV = "MMSTUDY_TEST_JUDGE_KEY"


class FakeServer:
    """What the handler answers and what it saw. `plan` holds (status, body) answers used first, in order;
    after that each request gets a 200 whose content echoes the prompt."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = []  # (path, headers, raw body)
        self.plan = []
        self.served_model = None  # None: answer as the requested model
        self.hang = False  # never answer (until teardown)
        self.trickle = 0.0  # > 0: send the body one byte per this many seconds
        self.release = threading.Event()
        self.barrier = None  # the first barrier.parties requests wait for each other
        self.base_url = ""

    @property
    def hits(self):
        return len(self.calls)

    def bodies(self):
        return [json.loads(raw) for _, _, raw in self.calls]


def _prompt_of(body):
    content = body["messages"][-1]["content"]
    return content if isinstance(content, str) else content[0]["text"]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        """What a followed 301/302 arrives as: recorded, and answered as if it were the verdict."""
        fake = self.server.fake
        with fake.lock:
            fake.calls.append((self.path, self.headers, b""))
        data = json.dumps({"model": MODEL, "choices": [{"message": {"role": "assistant", "content": "hijacked"}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data.encode())

    def do_POST(self):
        fake = self.server.fake
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with fake.lock:
            fake.calls.append((self.path, self.headers, raw))
            index = len(fake.calls) - 1
            step = fake.plan.pop(0) if fake.plan else None
        if fake.barrier is not None and index < fake.barrier.parties:
            fake.barrier.wait()
        if fake.hang:
            fake.release.wait(5)
            return
        if step is None:
            body = json.loads(raw)
            step = (200, {"model": fake.served_model or body["model"],
                          "choices": [{"message": {"role": "assistant", "content": f"answer: {_prompt_of(body)}"}}]})
        status, payload = step
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", payload["location"])
            if isinstance(payload, dict) and "retry_after" in payload:
                self.send_header("Retry-After", str(payload["retry_after"]))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if fake.trickle:
                for i in range(len(data)):
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                    if fake.release.wait(fake.trickle):
                        return
            else:
                self.wfile.write(data)
        except OSError:
            pass


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv(KEY_ENV, raising=False)
    fake = FakeServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.fake = fake
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    fake.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield fake
    fake.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=2)


@pytest.fixture
def sleeps():
    return []


def make(server, sleeps, **kwargs):
    kwargs = {"api_key_env": KEY_ENV, "max_retries": 2, "sleep": sleeps.append} | kwargs
    return HttpJudge(server.base_url, MODEL, **kwargs)


def cache_files(cache_dir):
    return sorted(cache_dir.rglob("*.json")) if cache_dir.exists() else []


# -- the request -----------------------------------------------------------------------------------------------


def test_request_body_text_only(server, sleeps):
    judge = make(server, sleeps)
    request = JudgeRequest("Is the answer right?", system="You are a strict judge.", task="mmhal", key="q1",
                           context={"truth": "GROUND-TRUTH-XYZ"}, max_tokens=64)
    [reply] = judge.complete([request])
    assert reply.text == "answer: Is the answer right?" and reply.error is None and not reply.cached
    assert reply.attempts == 1
    [(path, headers, raw)] = server.calls
    assert path == "/v1/chat/completions"
    assert headers["Content-Type"] == "application/json"
    assert headers.get("Authorization") is None
    assert b"GROUND-TRUTH-XYZ" not in raw and b"context" not in raw and b"mmhal" not in raw
    assert json.loads(raw) == {"model": MODEL, "temperature": 0.0, "max_tokens": 64,
                               "messages": [{"role": "system", "content": "You are a strict judge."},
                                            {"role": "user", "content": "Is the answer right?"}]}
    assert judge.name == f"http:{server.base_url}#{MODEL}"
    assert judge.stats == {"requests": 1, "failures": 0, "retries": 0, "cache_hits": 0, "model_mismatch": 0}
    assert judge.served_models == {MODEL}


def test_image_sent_as_data_url_and_trailing_slash(server, sleeps, tmp_path):
    image = tmp_path / "cat.PNG"
    image.write_bytes(b"\x89PNG\r\n\x1a\nnot-really-pixels")
    jpeg = tmp_path / "dog.jpg"
    jpeg.write_bytes(b"\xff\xd8\xffjpeg-bytes")
    judge = HttpJudge(server.base_url + "/", MODEL, api_key_env=KEY_ENV)
    replies = judge.complete([JudgeRequest("Describe.", image=str(image), key="a"),
                              JudgeRequest("Describe.", image=str(jpeg), key="b")])
    assert [r.text for r in replies] == ["answer: Describe.", "answer: Describe."]
    assert {path for path, _, _ in server.calls} == {"/v1/chat/completions"}
    by_url = {}
    for body in server.bodies():
        assert [m["role"] for m in body["messages"]] == ["user"]
        text, picture = body["messages"][0]["content"]
        assert text == {"type": "text", "text": "Describe."}
        assert picture["type"] == "image_url"
        by_url[picture["image_url"]["url"]] = body
    assert set(by_url) == {"data:image/png;base64," + base64.b64encode(image.read_bytes()).decode(),
                           "data:image/jpeg;base64," + base64.b64encode(jpeg.read_bytes()).decode()}


def test_auth_header_only_when_env_var_set(server, sleeps, monkeypatch):
    judge = make(server, sleeps)
    judge.complete([JudgeRequest("one")])
    monkeypatch.setenv(KEY_ENV, "sk-test-123")
    judge.complete([JudgeRequest("two")])
    assert [h.get("Authorization") for _, h, _ in server.calls] == [None, "Bearer sk-test-123"]


def test_missing_image_is_a_data_error_before_any_network_call(server, sleeps, tmp_path):
    judge = make(server, sleeps)
    missing = tmp_path / "nope.png"
    with pytest.raises(DataError, match=r"'item-7'.*image file not found.*nope\.png"):
        judge.complete([JudgeRequest("fine"), JudgeRequest("look", image=str(missing), key="item-7")])
    assert server.hits == 0


# -- the cache -------------------------------------------------------------------------------------------------


def test_cache_hit_avoids_the_server_and_survives_a_new_instance(server, sleeps, tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(b"\x89PNGpixels")
    cache = tmp_path / "cache"
    request = JudgeRequest("Rate it.", image=str(image), key="k")
    first = make(server, sleeps, cache_dir=cache).complete([request])[0]
    assert first.text == "answer: Rate it." and not first.cached and server.hits == 1

    [entry_path] = cache_files(cache)
    entry = json.loads(entry_path.read_text())
    assert entry_path.parent.name == entry_path.stem[:2] and entry["hash"] == entry_path.stem
    assert entry["reply"] == "answer: Rate it." and entry["served_model"] == MODEL
    assert "base64" not in entry_path.read_text()
    assert entry["request"]["model"] == MODEL
    assert entry["request"]["messages"][0]["content"][1]["image_url"]["bytes"] == len(b"\x89PNGpixels")

    again = make(server, sleeps, cache_dir=cache)
    second = again.complete([request, JudgeRequest("Rate it.", image=str(image), key="other key, same body")])
    assert [r.text for r in second] == ["answer: Rate it."] * 2 and all(r.cached for r in second)
    assert server.hits == 1
    assert again.stats["cache_hits"] == 2 and again.stats["requests"] == 2

    image.write_bytes(b"\x89PNGother-pixels")  # same path, new bytes: a new key
    assert not again.complete([request])[0].cached and server.hits == 2


def test_without_cache_dir_every_call_reaches_the_server(server, sleeps):
    judge = make(server, sleeps)
    judge.complete([JudgeRequest("q")])
    judge.complete([JudgeRequest("q")])
    assert server.hits == 2 and judge.stats["cache_hits"] == 0


@pytest.mark.parametrize("content", ["{not json", '{"hash": "x"}', "[1, 2]"])
def test_corrupt_cache_file_is_a_clear_error(server, sleeps, tmp_path, content):
    cache = tmp_path / "cache"
    request = JudgeRequest("q")
    make(server, sleeps, cache_dir=cache).complete([request])
    [entry_path] = cache_files(cache)
    entry_path.write_text(content)
    with pytest.raises(DataError, match="corrupt judge cache entry") as info:
        make(server, sleeps, cache_dir=cache).complete([request])
    assert str(entry_path) in str(info.value)
    assert entry_path.read_text() == content and server.hits == 1


# -- retries and failures --------------------------------------------------------------------------------------


def test_retries_503_then_succeeds_with_exponential_backoff(server, sleeps, tmp_path):
    server.plan = [(503, {"error": "busy"}), (503, {"error": "busy"})]
    judge = make(server, sleeps, max_retries=4, backoff_s=0.5, cache_dir=tmp_path / "cache")
    [reply] = judge.complete([JudgeRequest("q")])
    assert reply.text == "answer: q" and reply.attempts == 3
    assert sleeps == [0.5, 1.0]
    assert server.hits == 3
    assert judge.stats["retries"] == 2 and judge.stats["failures"] == 0
    assert len(cache_files(tmp_path / "cache")) == 1


def test_429_is_retried(server, sleeps):
    server.plan = [(429, {"error": "slow down"})]
    [reply] = make(server, sleeps).complete([JudgeRequest("q")])
    assert reply.text == "answer: q" and sleeps == [1.0]


def test_persistent_500_fails_and_is_not_cached(server, sleeps, tmp_path):
    server.plan = [(500, {"error": "boom"})] * 6
    cache = tmp_path / "cache"
    judge = make(server, sleeps, max_retries=2, cache_dir=cache)
    [reply] = judge.complete([JudgeRequest("q", key="k500")])
    assert reply.text is None and reply.attempts == 3 and "HTTP 500" in reply.error and "boom" in reply.error
    assert sleeps == [1.0, 2.0] and server.hits == 3
    assert judge.stats == {"requests": 1, "failures": 1, "retries": 2, "cache_hits": 0, "model_mismatch": 0}
    assert cache_files(cache) == []
    judge.complete([JudgeRequest("q", key="k500")])
    assert server.hits == 6  # a failure is asked again, not served from a cache


def test_400_is_not_retried(server, sleeps):
    server.plan = [(400, {"message": "context length exceeded"})]
    judge = make(server, sleeps)
    [reply] = judge.complete([JudgeRequest("q")])
    assert reply.text is None and reply.attempts == 1
    assert "HTTP 400" in reply.error and "context length exceeded" in reply.error
    assert server.hits == 1 and sleeps == [] and judge.stats["retries"] == 0 and judge.stats["failures"] == 1


def test_connection_refused_fails_after_retries(sleeps):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = HttpJudge(f"http://127.0.0.1:{port}/v1", MODEL, max_retries=3, sleep=sleeps.append)
    [reply] = judge.complete([JudgeRequest("q")])
    assert reply.text is None and reply.attempts == 4 and "cannot reach" in reply.error
    assert sleeps == [1.0, 2.0, 4.0]
    assert judge.stats["failures"] == 1 and judge.stats["retries"] == 3


def test_timeout_is_retried_then_fails(server, sleeps):
    server.hang = True
    judge = make(server, sleeps, max_retries=1, timeout_s=0.2)
    [reply] = judge.complete([JudgeRequest("q")])
    assert reply.text is None and reply.attempts == 2 and "timed out" in reply.error
    assert server.hits == 2 and sleeps == [1.0]


@pytest.mark.parametrize("payload", [b"<html>gateway</html>", {"choices": []},
                                     {"choices": [{"message": {"role": "assistant", "content": None}}]},
                                     {"model": MODEL}])
def test_malformed_200_is_a_failure(server, sleeps, tmp_path, payload):
    server.plan = [(200, payload)]
    judge = make(server, sleeps, cache_dir=tmp_path / "cache")
    [reply] = judge.complete([JudgeRequest("q")])
    assert reply.text is None and reply.error.startswith("200 response")
    assert "choices[0].message.content" in reply.error or "not JSON" in reply.error
    assert judge.stats["failures"] == 1 and server.hits == 1 and sleeps == []
    assert cache_files(tmp_path / "cache") == []


# -- pinning, concurrency, specs -------------------------------------------------------------------------------


def test_model_mismatch_is_counted_and_warned_once(server, sleeps, tmp_path, caplog):
    server.served_model = "some-other-model"
    judge = make(server, sleeps, cache_dir=tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="mmstudy.judges.http"):
        replies = judge.complete([JudgeRequest("a"), JudgeRequest("b")])
        judge.complete([JudgeRequest("c")])
    assert [r.text for r in replies] == ["answer: a", "answer: b"]
    assert judge.stats["model_mismatch"] == 3 and judge.served_models == {"some-other-model"}
    warnings = [r for r in caplog.records if "some-other-model" in r.getMessage()]
    assert len(warnings) == 1
    assert all(json.loads(p.read_text())["served_model"] == "some-other-model"
               for p in cache_files(tmp_path / "cache"))


def test_concurrent_requests_keep_input_order(server, sleeps):
    server.barrier = threading.Barrier(4, timeout=2)  # passes only if 4 requests are in flight at once
    judge = make(server, sleeps, max_workers=4)
    prompts = [f"question {i}" for i in range(10)]
    replies = judge.complete([JudgeRequest(p, key=str(i)) for i, p in enumerate(prompts)])
    assert [r.text for r in replies] == [f"answer: {p}" for p in prompts]
    assert server.hits == 10 and judge.stats["requests"] == 10 and judge.stats["failures"] == 0
    assert judge.complete([]) == []


def test_from_spec(tmp_path):
    judge = HttpJudge.from_spec("http://127.0.0.1:8000/v1/#org/Model-7B", cache_dir=tmp_path)
    assert (judge.base_url, judge.model, judge.cache_dir) == ("http://127.0.0.1:8000/v1", "org/Model-7B", tmp_path)
    assert judge.url == "http://127.0.0.1:8000/v1/chat/completions"
    assert judge.name == "http:http://127.0.0.1:8000/v1#org/Model-7B"
    for spec in ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1#", "http://127.0.0.1:8000/v1#  "):
        with pytest.raises(ValueError, match="names no model"):
            HttpJudge.from_spec(spec)
    with pytest.raises(ValueError, match="http:// or https://"):
        HttpJudge.from_spec("127.0.0.1:8000/v1#m")


# -- what must never get through ---------------------------------------------------------------------------------


def _second_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.fake = FakeServer()
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return httpd


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_refused_and_the_key_stays_home(server, sleeps, monkeypatch, tmp_path, status):
    other = _second_server()
    try:
        monkeypatch.setenv(KEY_ENV, "sk-secret")
        target = f"http://127.0.0.1:{other.server_address[1]}/v1/chat/completions"
        server.plan = [(status, {"location": target})]
        judge = make(server, sleeps, cache_dir=tmp_path / "cache")
        [reply] = judge.complete([JudgeRequest("q", key="r1")])
        assert reply.text is None and "redirect" in reply.error and "refused" in reply.error
        assert other.fake.hits == 0 and server.hits == 1 and not cache_files(tmp_path / "cache")
        assert judge.stats["failures"] == 1 and sleeps == []
    finally:
        other.shutdown()
        other.server_close()


def test_a_key_over_plain_http_to_another_host_is_warned_about(monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, "sk-secret")
    with caplog.at_level(logging.WARNING, logger="mmstudy.judges.http"):
        HttpJudge("http://127.0.0.1:9/v1", MODEL, api_key_env=KEY_ENV)
        HttpJudge("https://judge.example.org/v1", MODEL, api_key_env=KEY_ENV)
        assert not caplog.records
        HttpJudge("http://judge.example.org/v1", MODEL, api_key_env=KEY_ENV)
    assert "unencrypted" in caplog.text and "judge.example.org" in caplog.text and "sk-secret" not in caplog.text


def test_an_oversized_reply_is_a_failure_and_never_cached(server, sleeps, tmp_path):
    big = {"model": MODEL, "choices": [{"message": {"role": "assistant", "content": "x" * 5000}}]}
    server.plan = [(200, big)]
    judge = make(server, sleeps, cache_dir=tmp_path / "cache", max_reply_bytes=1000)
    [reply] = judge.complete([JudgeRequest("q", key="r1")])
    assert reply.text is None and "larger than 1000 bytes" in reply.error
    assert not cache_files(tmp_path / "cache") and server.hits == 1


def test_retry_after_is_honoured_up_to_a_minute(server, sleeps):
    server.plan = [(429, {"retry_after": 7}), (503, {"retry_after": 3600})]
    [reply] = make(server, sleeps).complete([JudgeRequest("q")])
    assert reply.text == "answer: q" and sleeps == [7.0, 60.0]


def test_a_trickling_reply_is_cut_off_at_the_timeout(server, sleeps):
    import time

    server.trickle = 0.05                      # about 150 bytes: 7 s if waited on byte by byte
    start = time.monotonic()
    [reply] = make(server, sleeps, timeout_s=0.4, max_retries=0).complete([JudgeRequest("q")])
    assert reply.text is None and "within 0.4 s" in reply.error and time.monotonic() - start < 3


def test_an_edited_cache_entry_is_refused(server, sleeps, tmp_path):
    judge = make(server, sleeps, cache_dir=tmp_path / "cache")
    judge.complete([JudgeRequest("q")])
    [path] = cache_files(tmp_path / "cache")
    entry = json.loads(path.read_text())
    assert entry["format"] == 2 and len(entry["reply_sha256"]) == 64
    path.write_text(json.dumps(entry | {"reply": "answer: yes, 10/10"}))
    with pytest.raises(DataError, match="does not match its checksum"):
        make(server, sleeps, cache_dir=tmp_path / "cache").complete([JudgeRequest("q")])
    path.write_text(json.dumps({k: v for k, v in entry.items() if k != "reply_sha256"} | {"format": 1}))
    [reply] = make(server, sleeps, cache_dir=tmp_path / "cache").complete([JudgeRequest("q")])
    assert reply.cached and reply.text == "answer: q"           # an entry of format 1 is read as it is


def test_a_judge_whose_every_call_failed_fails_the_command(server, sleeps, caplog):
    from mmstudy.cli import build_parser
    from mmstudy.judges.base import check_judge_calls

    server.plan = [(500, {"error": "down"})] * 3
    judge = make(server, sleeps, max_retries=0)
    judge.complete([JudgeRequest("a"), JudgeRequest("b")])
    with pytest.raises(ValueError, match="every one of the 2 calls to judge"):
        check_judge_calls(judge)
    judge.complete([JudgeRequest("c"), JudgeRequest("d")])          # one more failure, one answer
    with caplog.at_level(logging.WARNING):
        check_judge_calls(judge)
    assert "3 of 4 judge calls failed" in caplog.text
    args = build_parser().parse_args(["eval", "--model", "m", "--data", "d", "--out", "o.json", "--judge-timeout",
                                      "5", "--judge-retries", "1"])
    assert (args.judge_timeout, args.judge_retries) == (5.0, 1)


def test_a_cached_reply_from_another_model_counts_as_a_mismatch(server, sleeps, tmp_path):
    server.served_model = "some-other-model"
    make(server, sleeps, cache_dir=tmp_path / "cache").complete([JudgeRequest("q")])
    again = make(server, sleeps, cache_dir=tmp_path / "cache")
    [reply] = again.complete([JudgeRequest("q")])
    assert reply.cached and again.stats["model_mismatch"] == 1 and again.served_models == {"some-other-model"}


def test_train_online_passes_the_judge_limits_to_the_http_judge(tmp_path):
    from mmstudy.cli import build_parser
    from mmstudy.commands.common import judge_limits
    from mmstudy.training.online import OnlineConfig, pair_source

    args = build_parser().parse_args(["train-online", "--prompts", "p.jsonl", "--model", "m", "--image-root", "i",
                                      "--out", "o", "--judge", "http:http://127.0.0.1:9/v1#judge-model",
                                      "--judge-timeout", "3", "--judge-retries", "2"])
    source = pair_source(OnlineConfig(mode="online_dpo"), tmp_path, judge=args.judge,
                         judge_options=judge_limits(args))
    assert (source.judge.timeout_s, source.judge.max_retries) == (3.0, 2)
