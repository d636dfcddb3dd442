"""The optional judge against a real chat-completions HTTP server started on 127.0.0.1 by the test."""
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from codedance_jax import rewards
from codedance_jax.rewards.judge import Judge, JudgeConfig, JudgeUnavailable, parse_verdict


class ChatServer(ThreadingHTTPServer):
    """Answers POST /v1/chat/completions: "1" when the model's answer is in `accept[reference]`,
    else "0"; `reply` overrides the content, `delay_s` stalls, `fail_first` requests get a 500."""
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), ChatHandler)
        self.accept = {"pink": {"it is pink", "pink colour"}}
        self.reply, self.delay_s, self.fail_first = None, 0.0, 0
        self.requests, self.in_flight, self.max_in_flight = 0, 0, 0
        self.lock = threading.Lock()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class ChatHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.requests += 1
            number = server.requests
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            time.sleep(server.delay_s)
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": {"message": "not found"}})
            if number <= server.fail_first:
                return self._send(500, {"error": {"message": "overloaded"}}, [("retry-after-ms", "10")])
            prompt = body["messages"][0]["content"]
            reference = re.search(r"Reference answer: (.*)", prompt).group(1)
            prediction = re.search(r"Model's answer: (.*)", prompt).group(1)
            content = server.reply or ("1" if prediction in server.accept.get(reference, ()) else "0")
            self._send(200, {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": content}}]})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout)
        finally:
            with server.lock:
                server.in_flight -= 1


@pytest.fixture
def server():
    srv = ChatServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def judge_for(url, **kw):
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout_s", 5.0)
    return Judge(JudgeConfig(base_url=url, **kw))


def test_parse_verdict_never_guesses():
    assert [parse_verdict(r) for r in ["1", " 0\n", "Judgement: 1", "1 or 0", "10", "0.5", "", None, "yes"]] == \
        [True, False, True, None, None, None, None, None, None]


def test_judge_decides_only_free_form_answers_the_rules_call_wrong(server):
    judge = judge_for(server.url)
    agreed = rewards.score_response("<answer>it is pink</answer>", "pink", judge=judge, question="Colour?")
    assert (agreed.acc, agreed.rule, agreed.base) == (1, "judge", 1.0)
    refused = rewards.score_response("<answer>blue</answer>", "pink", judge=judge)
    assert (refused.acc, refused.rule) == (0, "judge")
    assert server.requests == 2
    # A list of acceptable answers reaches the judge as alternatives.
    server.accept["magenta or pink"] = {"pink colour"}
    listed = rewards.score_response("<answer>pink colour</answer>", ["magenta", "pink"], judge=judge)
    assert (listed.acc, listed.rule) == (1, "judge")
    assert server.requests == 3
    # Right by the rules, decided by a number or a choice, or unanswered: the judge is not asked.
    assert rewards.score_response("<answer>Pink.</answer>", "pink", judge=judge).rule == "string"
    assert rewards.score_response("<answer>12</answer>", "13", judge=judge).rule == "numeric"
    assert rewards.score_response("<answer>B</answer>", "A", options=["x", "y"], judge=judge).rule == "choice_letter"
    assert rewards.score_response("<think>no answer</think>", "pink", judge=judge).rule == "no_answer"
    assert server.requests == 3


def test_cache_in_memory_and_on_disk(server, tmp_path):
    cache = str(tmp_path / "judge.json")
    judge = judge_for(server.url, cache_path=cache)
    assert judge.verdict("q", "pink colour", "pink") is True
    assert judge.verdict("q", "pink colour", "pink") is True
    assert (server.requests, judge.stats["requests"], judge.stats["cache_hits"]) == (1, 1, 1)
    server.reply = "0"  # a second judge reading the file never asks the server
    again = judge_for(server.url, cache_path=cache)
    assert again.verdict("q", "pink colour", "pink") is True
    assert server.requests == 1


def test_batch_judging_is_concurrent_but_bounded(server):
    server.delay_s = 0.2
    judge = judge_for(server.url, concurrency=2)
    items = [rewards.RewardItem([f"<answer>{a}</answer>"], "pink", 0)
             for a in ["it is pink", "red", "green", "pink colour", "grey", "it is pink"]]
    batch = rewards.compute_rewards(items, kind="accuracy", judge=judge)
    assert batch.rewards.tolist() == [1, 0, 0, 1, 0, 1]
    assert [t.score.rule for t in batch.trajectories] == ["judge"] * 6
    assert server.requests == 5  # the repeated answer is asked once
    assert server.max_in_flight == 2


def test_timeout_raises_or_falls_back_and_is_counted(server):
    server.delay_s = 2.0
    strict = judge_for(server.url, timeout_s=0.3)
    with pytest.raises(JudgeUnavailable, match=re.escape(server.url)):
        rewards.score_response("<answer>it is pink</answer>", "pink", judge=strict)
    lenient = judge_for(server.url, timeout_s=0.3, fallback_to_rules=True)
    items = [rewards.RewardItem(["<answer>it is pink</answer>"], "pink", 0),
             rewards.RewardItem(["<answer>pink</answer>"], "pink", 0)]
    batch = rewards.compute_rewards(items, judge=lenient)
    assert batch.judge_fallbacks == 1 and lenient.stats["fallbacks"] == 1
    assert [(t.score.acc, t.score.rule) for t in batch.trajectories] == [(0, "string"), (1, "string")]
    assert batch.metrics()["judge_fallbacks"] == 1.0


def test_retries_after_a_server_error(server):
    server.fail_first = 1
    judge = judge_for(server.url, max_retries=2)
    assert judge.verdict("q", "it is pink", "pink") is True
    assert server.requests == 2 and judge.stats["failures"] == 0


def test_unusable_reply_is_a_failure_not_a_guess(server):
    server.reply = "I would say 1 or maybe 0"
    judge = judge_for(server.url, fallback_to_rules=True)
    assert judge.verdict("q", "it is pink", "pink") is None
    assert judge.stats["failures"] == 1 and judge.stats["fallbacks"] == 1


def test_unreachable_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = judge_for(f"http://127.0.0.1:{port}/v1", timeout_s=1.0)
    with pytest.raises(JudgeUnavailable, match=f"127.0.0.1:{port}.*APIConnectionError"):
        judge.verdict("q", "it is pink", "pink")
