"""CLI (exit codes, --json keys, --trace) and the trace's JSON round trip."""

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import run_cli

import eagle2
from eagle2.trace import Trace, TraceRecorder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_generate_json(tiny_dir, tiny_head, capsys, tmp_path):
    trace_file = tmp_path / "t.json"
    code, out, err = run_cli(capsys, "generate", "--prompt", "hello world how are you ?", "--model", tiny_dir,
                             "--head", tiny_head, "--max-new-tokens", "12", "--dtype", "float32", "--json",
                             "--trace", str(trace_file))
    assert code == 0, err
    data = json.loads(out)
    for key in ("text", "new_tokens", "cycles", "tau", "seconds", "tokens_per_s", "policy"):
        assert key in data
    assert data["policy"] == "eagle2-auto" and 1 <= data["new_tokens"] <= 12  # auto tree size by default
    trace = Trace.load(trace_file)
    assert len(trace.cycles) == data["cycles"] and trace.token_text  # viewable without the tokenizer


def test_policies_agree_in_fp32(tiny_dir, tiny_head, capsys):
    texts = set()
    for policy in ("vanilla", "chain", "eagle1", "eagle2"):
        code, out, err = run_cli(capsys, "generate", "--prompt", "write a poem", "--model", tiny_dir, "--head", tiny_head,
                                 "--policy", policy, "--max-new-tokens", "16", "--dtype", "float32", "--json")
        assert code == 0, err
        texts.add(json.loads(out)["text"])
    assert len(texts) == 1


@pytest.mark.parametrize("args, msg", [
    (["--prompt", "  "], "prompt is empty"),
    (["--prompt", "hi", "--top-k", "0"], "must be >= 1"),
    (["--prompt", "hi", "--depth", "-1"], "must be >= 1"),
    (["--prompt", "hi", "--total-tokens", "0"], "must be >= 1"),
    (["--prompt", "hi", "--top-k", "2", "--depth", "2", "--total-tokens", "50"], "more than"),
    (["--prompt", "hi", "--temperature", "-1"], "temperature"),
    (["--prompt", "hi", "--top-p", "0"], "top_p"),
    (["--prompt", "hi", "--top-p", "1.5"], "top_p"),
    (["--prompt", "hi", "--max-new-tokens", "100000"], "context"),
    (["--prompt", "hi", "--head", "/nonexistent/head"], "cannot fetch draft head|config.json"),
    (["--prompt", "hi", "--policy", "beam"], "invalid choice"),
])
def test_bad_input_exits_2(tiny_dir, tiny_head, capsys, args, msg):
    full = ["generate", "--model", tiny_dir, "--dtype", "float32"] + (["--head", tiny_head] if "--head" not in args else []) + args
    code, _, err = run_cli(capsys, *full)
    assert code == 2
    assert re.search(msg, err), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_model_offline_is_one_line(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "eagle2", "generate", "--prompt", "hi", "--model", "no-such-org/no-such-model"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith("error: cannot load model 'no-such-org/no-such-model'")
    assert "Traceback" not in p.stderr


def test_trace_round_trip(tiny_target, tiny_head):
    rec = TraceRecorder()
    drafter = eagle2.load_drafter(tiny_target, head=tiny_head)
    eagle2.generate_text(tiny_target, "tell me a story", drafter=drafter, observers=[rec], max_new_tokens=15)
    text = rec.trace.to_json()
    back = Trace.from_json(text)
    assert back == rec.trace
    assert back.cycles[0].expansions[0].candidates[0].value == rec.trace.cycles[0].expansions[0].candidates[0].value
    assert json.loads(text)["schema"] == "eagle2-trace/1"


@pytest.mark.parametrize("payload, msg", [
    (b"\xff\xfe not utf8", "UTF-8"), ("{not json", "not valid JSON"), ('{"schema": "other/9"}', "not an eagle2 trace"),
    ("[1, 2]", "not an eagle2 trace"), ('{"schema": "eagle2-trace/1", "cycles": [{"index": "x", "bogus": 1}]}', "malformed"),
])
def test_bad_traces(payload, msg):
    with pytest.raises(ValueError, match=msg):
        Trace.from_json(payload)
