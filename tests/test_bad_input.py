"""Bad or hostile input: every model / head / trace / prompt mistake is one short line naming the
real cause, answered fast, and the app keeps working afterwards.

No network: hub calls are mocked (or HF_HUB_OFFLINE=1), the HF cache is a temp folder built here.
"""

from __future__ import annotations

import html
import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import eagle2
from eagle2 import hub
from eagle2.draft import load_drafter, load_head, resolve_head
from eagle2.head import EagleHead
from eagle2.models import load_target
from eagle2.trace import Trace
from viz.lab import guard, handlers, run, traces
from viz.lab.config import MAX_PROMPT_CHARS
from viz.lab.state import validate
from viz.sample import tiny_trace

from conftest import make_tiny_llama, run_cli

FAST_S = 3.0  # "answered at once": no retries, no waiting on the network
COMMIT = "0123456789abcdef0123456789abcdef01234567"
GOOD = dict(prompt="hello world", target="default", head="self", policy="eagle2", top_k=3, depth=3, total_tokens=8,
            temperature=0.0, top_p=1.0, max_new_tokens=8, seed=0)


def run_args(**over):
    p = {**GOOD, **over}
    return [p[k] for k in handlers.RUN_INPUTS[:11]]


def final_status(**over) -> str:
    out = list(handlers.run_handler(*run_args(**over)))
    status = html.unescape(out[-1].get("status", ""))
    assert "Traceback" not in status and "\n" not in status, status
    return status


def one_line(e) -> str:
    text = str(e.value if hasattr(e, "value") else e)
    assert "\n" not in text and "Traceback" not in text, text
    return text


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty HF hub cache of our own (the user's is never read)."""
    root = tmp_path / "hf-cache"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    return root


@pytest.fixture
def online(monkeypatch, hf_cache):
    """Not offline (whatever the environment says); tests mock what the Hub answers."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "offline", lambda: False)
    monkeypatch.setattr(hub, "_unreachable_until", 0.0)  # no memory of an earlier test's unreachable Hub
    return hf_cache


@pytest.fixture
def offline(monkeypatch, hf_cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*a, **k):
        raise AssertionError("the Hub was asked although HF_HUB_OFFLINE is set")

    monkeypatch.setattr(hub, "model_info", no_network)
    return hf_cache


def put_in_cache(cache: Path, repo_id: str, folder) -> Path:
    """Lay `folder` out as the cached main snapshot of `repo_id` (the HF cache layout)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    shutil.copytree(folder, snap)
    return snap


def hub_answers(monkeypatch, answer):
    """Make HfApi.model_info return `answer` (or raise it, or call it)."""
    import huggingface_hub

    def fake(self, repo_id, *a, **k):
        if isinstance(answer, BaseException):
            raise answer
        return answer(repo_id, **k) if callable(answer) else answer

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", fake)


def http_error(cls, code: int):
    return cls(f"{code} Client Error", response=SimpleNamespace(headers={}, request=None, status_code=code))


def timed(fn, *a, **k):
    t0 = time.perf_counter()
    try:
        fn(*a, **k)
    except ValueError as e:
        return time.perf_counter() - t0, one_line(e)
    raise AssertionError(f"{fn.__name__}{a} did not fail")


# ---- models: folders ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["./no-such-model", "/nonexistent/model", "~/no-such-eagle2-model", "runs/a/b"])
def test_missing_model_folder(spec):
    secs, msg = timed(load_target, spec, device="cpu")
    assert msg.startswith(f"no such folder: {spec} ("), msg
    assert secs < 1.0


def _folder(tmp_path, name, config=True, weights=True, tokenizer=True, model_type="llama"):
    f = tmp_path / name
    f.mkdir()
    if config:
        (f / "config.json").write_text(json.dumps({"model_type": model_type}))
    if weights:
        (f / "model.safetensors").write_bytes(b"\0" * 16)
    if tokenizer:
        (f / "tokenizer.json").write_text("{}")
    return f


@pytest.mark.parametrize("kind, match", [
    ("no_config", r"model folder \S+ has no config\.json$"),
    ("no_weights", r"model folder \S+ has no weights \(model\.safetensors, pytorch_model\.bin or a sharded index\)"),
    ("no_tokenizer", r"model folder \S+ has no tokenizer"),
    ("bad_json", r"config\.json that is not valid JSON"),
    ("gpt2", r"is a 'gpt2' model; supported: llama, qwen2, mistral"),
    ("a_file", r"is a file, not a folder"),
])
def test_broken_model_folder(tmp_path, kind, match):
    if kind == "a_file":
        spec = tmp_path / "model.safetensors"
        spec.write_bytes(b"x")
    else:
        spec = _folder(tmp_path, "m", config=kind != "no_config", weights=kind != "no_weights",
                       tokenizer=kind != "no_tokenizer", model_type="gpt2" if kind == "gpt2" else "llama")
        if kind == "bad_json":
            (spec / "config.json").write_text("{not json")
    import re

    secs, msg = timed(load_target, str(spec), device="cpu")
    assert re.search(match, msg), msg
    assert secs < 2.0  # found before any weights are read


def test_corrupt_weights_are_one_line(tiny_dir, tmp_path):
    bad = tmp_path / "corrupt"
    shutil.copytree(tiny_dir, bad)
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad")
    _, msg = timed(load_target, str(bad), device="cpu")
    assert msg.startswith(f"cannot load model '{bad}': "), msg


def test_invalid_hub_id():
    _, msg = timed(load_target, "not a hub id!", device="cpu")
    assert msg == "model 'not a hub id!' is neither a folder nor a valid hub id (name or owner/name)"


# ---- models: the Hub -----------------------------------------------------------------------------------------
def test_hub_id_offline_not_cached_is_immediate(offline):
    secs, msg = timed(load_target, "no-such-org/no-such-model", device="cpu")
    assert msg == ("cannot load model 'no-such-org/no-such-model': the Hugging Face Hub is off (HF_HUB_OFFLINE is "
                   "set) and it is not in the local cache (and no folder of that name here)")
    assert secs < 1.0


def test_hub_unreachable_is_fast(online, monkeypatch):
    import httpx2

    hub_answers(monkeypatch, httpx2.ConnectError("[Errno -2] Name or service not known"))
    secs, msg = timed(load_target, "some-org/some-model", device="cpu")
    assert msg == ("cannot load model 'some-org/some-model': the Hugging Face Hub cannot be reached (offline?) and it "
                   "is not in the local cache (and no folder of that name here)")
    assert secs < FAST_S


def test_hub_that_hangs_is_given_up_on(online, monkeypatch):
    """A DNS lookup or a connection that hangs (no HTTP timeout covers DNS) is cut off, and the
    next question right after (the app asks for the size, then loads) does not wait again."""
    monkeypatch.setattr(hub, "PROBE_TIMEOUT_S", 0.3)
    hub_answers(monkeypatch, lambda repo_id, **k: time.sleep(20))
    secs, msg = timed(load_target, "slow-org/slow-model", device="cpu")
    assert "the Hugging Face Hub cannot be reached (offline?)" in msg
    assert secs < 2.0
    secs, msg = timed(load_target, "slow-org/other-model", device="cpu")
    assert "the Hugging Face Hub cannot be reached (offline?)" in msg and secs < 0.2


def test_unknown_hub_id(online, monkeypatch):
    from huggingface_hub.errors import RepositoryNotFoundError

    hub_answers(monkeypatch, http_error(RepositoryNotFoundError, 404))
    secs, msg = timed(load_target, "no-such-org/no-such-model", device="cpu")
    assert msg.startswith("no model 'no-such-org/no-such-model' on the Hugging Face Hub"), msg
    assert secs < FAST_S


def test_gated_hub_model(online, monkeypatch):
    from huggingface_hub.errors import GatedRepoError

    hub_answers(monkeypatch, http_error(GatedRepoError, 403))
    _, msg = timed(load_target, "meta-llama/Llama-3.1-8B", device="cpu")
    assert msg.startswith("model 'meta-llama/Llama-3.1-8B' is gated on the Hugging Face Hub: accept its terms"), msg


def test_hub_server_error(online, monkeypatch):
    from huggingface_hub.errors import HfHubHTTPError

    hub_answers(monkeypatch, http_error(HfHubHTTPError, 503))
    _, msg = timed(load_target, "org/model", device="cpu")
    assert msg == "cannot load model 'org/model': the Hugging Face Hub answered 503 and it is not in the local cache"


@pytest.mark.parametrize("files, match", [
    (["README.md", "model-q4.gguf"], "has no config.json"),
    (["config.json", "README.md"], "has no weights in safetensors or PyTorch format"),
])
def test_hub_repo_that_is_not_a_checkpoint(online, monkeypatch, files, match):
    hub_answers(monkeypatch, SimpleNamespace(siblings=[SimpleNamespace(rfilename=f, size=1) for f in files]))
    _, msg = timed(load_target, "org/gguf-only", device="cpu")
    assert msg.startswith("model 'org/gguf-only' on the Hugging Face Hub ") and match in msg, msg


def test_cached_hub_model_loads_offline(offline, tiny_dir):
    put_in_cache(offline, "local-org/tiny-llama", tiny_dir)
    t = load_target("local-org/tiny-llama", dtype="float32", device="cpu")
    assert t.source == "hub" and t.name == "local-org/tiny-llama"
    assert t.model.config.hidden_size == 64


def test_cached_hub_model_loads_when_the_hub_is_unreachable(online, monkeypatch, tiny_dir):
    import httpx2

    put_in_cache(online, "local-org/tiny-llama", tiny_dir)
    hub_answers(monkeypatch, httpx2.ConnectError("unreachable"))
    t0 = time.perf_counter()
    t = load_target("local-org/tiny-llama", dtype="float32", device="cpu")
    assert t.source == "hub" and time.perf_counter() - t0 < 20  # no retries (they take ~25 s alone)


# ---- heads ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["./no-such-head", "/nonexistent/head", "~/no-such-eagle2-head"])
def test_missing_head_folder(tiny_target, spec):
    secs, msg = timed(load_head, spec, tiny_target)
    assert msg.startswith(f"no such folder: {spec} (a draft head is a folder with config.json"), msg
    assert secs < 1.0


def test_head_folder_without_files(tiny_target, tmp_path):
    _, msg = timed(load_head, str(tmp_path), tiny_target)
    assert msg == f"draft head {tmp_path}: config.json is missing"
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64}))
    _, msg = timed(load_head, str(tmp_path), tiny_target)
    assert msg == f"draft head {tmp_path}: no model.safetensors or pytorch_model.bin"


def test_head_hub_id_offline(offline, tiny_target):
    secs, msg = timed(load_head, "someone/eagle-head", tiny_target)
    assert msg.startswith("cannot fetch draft head 'someone/eagle-head': the Hugging Face Hub is off"), msg
    assert secs < 1.0


def test_head_hub_id_unknown(online, monkeypatch, tiny_target):
    from huggingface_hub.errors import RepositoryNotFoundError

    hub_answers(monkeypatch, http_error(RepositoryNotFoundError, 404))
    _, msg = timed(load_head, "someone/eagle-head", tiny_target)
    assert msg.startswith("no draft head 'someone/eagle-head' on the Hugging Face Hub"), msg


def test_cached_hub_head_loads_offline(offline, tiny_target, tiny_head):
    snap = put_in_cache(offline, "someone/tiny-head", tiny_head)
    assert resolve_head("someone/tiny-head", tiny_target) == snap
    assert isinstance(load_head("someone/tiny-head", tiny_target), EagleHead)


@pytest.fixture(scope="module")
def foreign_heads(tmp_path_factory, tiny_target):
    """Heads made for other models: another hidden size, another vocabulary."""
    root = tmp_path_factory.mktemp("foreign-heads")
    vocab = tiny_target.model.config.vocab_size
    EagleHead.for_target(make_tiny_llama(vocab, hidden=32).config).save_pretrained(root / "hidden32")
    EagleHead.for_target(make_tiny_llama(vocab + 50).config).save_pretrained(root / "vocab")
    return {"hidden": str(root / "hidden32"), "vocab": str(root / "vocab"), "n": vocab}


def test_head_for_another_model(tiny_target, foreign_heads):
    _, msg = timed(load_head, foreign_heads["hidden"], tiny_target)
    assert msg == (f"draft head {foreign_heads['hidden']} was made for another model: head hidden size 32 does not "
                   "fit the target's 64")
    _, msg = timed(load_drafter, tiny_target, foreign_heads["vocab"])
    n = foreign_heads["n"]
    assert msg == f"draft head {foreign_heads['vocab']} was made for another model: head vocab {n + 50} does not fit the target's {n}"


# ---- the CLI: exit code 2 and one line ---------------------------------------------------------------------------
@pytest.mark.parametrize("flag, spec, msg", [
    ("--model", "./no-such-model", "error: no such folder: ./no-such-model ("),
    ("--head", "./no-such-head", "error: no such folder: ./no-such-head ("),
    ("--model", "no-such-org/no-such-model", "error: cannot load model 'no-such-org/no-such-model': the Hugging Face "
                                             "Hub is off"),
    ("--head", "no-such-org/no-such-head", "error: cannot fetch draft head 'no-such-org/no-such-head': the Hugging "
                                           "Face Hub is off"),
])
def test_cli_bad_model_or_head(offline, capsys, tiny_dir, flag, spec, msg):
    args = {"--model": tiny_dir, "--head": "default", flag: spec}
    t0 = time.perf_counter()
    code, out, err = run_cli(capsys, "generate", "--prompt", "hello", "--model", args["--model"], "--head",
                             args["--head"], "--dtype", "float32", "--max-new-tokens", "2", "--total-tokens", "8")
    assert code == 2 and out == ""
    assert err.startswith(msg) and len(err.strip().splitlines()) == 1, err
    assert time.perf_counter() - t0 < 30  # the --head cases load the tiny model first


def test_cli_head_for_another_model(capsys, tiny_dir, foreign_heads):
    code, _, err = run_cli(capsys, "generate", "--prompt", "hello", "--model", tiny_dir, "--head",
                           foreign_heads["hidden"], "--dtype", "float32", "--max-new-tokens", "2", "--total-tokens", "8")
    assert code == 2 and "was made for another model" in err and len(err.strip().splitlines()) == 1, err


# ---- prompts -------------------------------------------------------------------------------------------------
LONG_PROMPT = "hello " * 600  # 3600 characters (under the app's limit), over 600 tokens (the tiny context is 512)


def test_prompt_longer_than_the_context(tiny_target):
    _, msg = timed(eagle2.generate_text, tiny_target, LONG_PROMPT, max_new_tokens=4)
    import re

    assert re.fullmatch(r"prompt \((\d+) tokens\) \+ max_new_tokens \(4\) exceeds the model's context of 512 tokens",
                        msg), msg
    assert int(re.search(r"\d+", msg).group()) > 600


def test_app_prompt_limits(tiny_app):
    with pytest.raises(ValueError, match=rf"too long \({MAX_PROMPT_CHARS + 1} characters; at most {MAX_PROMPT_CHARS}\)"):
        validate(*run_args(prompt="x" * (MAX_PROMPT_CHARS + 1)))
    assert "exceeds the model's context of 512 tokens" in final_status(prompt=LONG_PROMPT)
    assert "Done" in final_status()  # and the next run works


# ---- traces ----------------------------------------------------------------------------------------------------
def _trace_dict():
    return json.loads(tiny_trace().to_json())


def _mutate(path, value=KeyError):
    def apply(d):
        *up, last = path
        for k in up:
            d = d[k]
        if value is KeyError:
            del d[last]
        else:
            d[last] = value
    return apply


@pytest.mark.parametrize("mutate, msg", [
    (_mutate(["cycles", 1, "verification"]), "trace is malformed: cycle 1: field 'verification' missing"),
    (_mutate(["cycles", 0, "index"]), "trace is malformed: cycle 0: field 'index' missing"),
    (_mutate(["cycles", 1, "expansions", 0, "candidates", 1, "confidence"], "high"),
     "trace is malformed: cycle 1: expansion 0: candidate 1: field 'confidence' must be a number, got a string"),
    (_mutate(["cycles", 1, "verification", "nodes", 2, "token"], 1.5),
     "trace is malformed: cycle 1: verification: node 2: field 'token' must be an integer, got a number"),
    (_mutate(["cycles", 0, "timings"], [1, 2]), "trace is malformed: cycle 0: timings must be an object, got a list"),
    (_mutate(["cycles", 1, "verification", "accepted_path"], [0, 9]),
     "trace is malformed: cycle 1: verification: accepted_path names node 9, the tree has 3"),
    (_mutate(["cycles", 1, "verification", "nodes"], []),
     "trace is malformed: cycle 1: verification: field 'nodes' is empty (the root node is missing)"),
    (_mutate(["output_tokens"], "abc"), "trace is malformed: field 'output_tokens' must be a list, got a string"),
    (_mutate(["cycles"]), "not an eagle2 trace: top-level key 'cycles' missing"),
    (_mutate(["schema"]), "not an eagle2 trace: top-level key 'schema' missing"),
    (_mutate(["schema"], "other/2"), "not an eagle2 trace (schema 'other/2', expected 'eagle2-trace/1')"),
])
def test_malformed_trace_names_the_field(tmp_path, mutate, msg):
    d = _trace_dict()
    mutate(d)
    with pytest.raises(ValueError) as e:
        Trace.from_json(json.dumps(d))
    assert one_line(e) == msg
    path = tmp_path / "upload.json"
    path.write_text(json.dumps(d))
    status = html.unescape(handlers.open_trace_handler(str(path))["status"])
    assert f"Could not open the uploaded trace: {msg}" in status, status
    assert "__init__" not in status and "positional" not in status


@pytest.mark.parametrize("text, msg", [
    ("this is not json", "trace is not valid JSON: Expecting value at line 1, column 1"),
    ('{"schema": "eagle2-trace/1",\n "cycles": [}', "trace is not valid JSON: Expecting value at line 2, column 13"),
    ("[1, 2]", "not an eagle2 trace: the file holds a list, not an object"),
    ("[" * 100_000, "trace is not valid JSON for eagle2: nested too deeply"),
])
def test_not_a_trace(text, msg):
    with pytest.raises(ValueError) as e:
        Trace.from_json(text)
    assert one_line(e) == msg


def test_traces_still_load():
    t = tiny_trace()
    assert Trace.from_json(t.to_json()) == t
    for f in sorted(Path(traces.EXAMPLE_TRACES).glob("*.json")):
        traces.load_trace_path(str(f))


def test_oversized_trace_states_the_limit(tmp_path, monkeypatch):
    import eagle2.trace as trace_mod

    monkeypatch.setattr(trace_mod, "MAX_TRACE_BYTES", 1000)
    with pytest.raises(ValueError) as e:
        Trace.from_json(b" " * 2048)
    assert one_line(e) == "trace is too large (2 KiB; at most 1000 bytes)"
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 2048)
    with pytest.raises(ValueError, match=r"trace big\.json is too large \(2 KiB; at most 1000 bytes\)"):
        Trace.load(big)
    # the app: refused from its size alone, before the file is read (let alone parsed)
    monkeypatch.setattr(traces, "MAX_UPLOAD_BYTES", 1000)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("an oversized upload was read"))
    status = handlers.open_trace_handler(str(big))["status"]
    assert "That trace is too large (2 KiB; at most 1000 bytes)." in status


def test_real_limit_is_stated(tmp_path, monkeypatch):
    path = tmp_path / "huge.json"
    with open(path, "wb") as f:
        f.truncate(traces.MAX_UPLOAD_BYTES + 1)  # sparse: no 50 MiB written
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("an oversized upload was read"))
    assert "That trace is too large (50.0 MiB; at most 50.0 MiB)." in handlers.open_trace_handler(str(path))["status"]


def test_trace_that_cannot_be_drawn_names_the_cycle(monkeypatch):
    def boom(trace, i):
        if i == 1:
            raise KeyError(7)
    monkeypatch.setattr(traces, "cycle_view", boom)
    with pytest.raises(ValueError) as e:
        traces.check_trace(tiny_trace())
    assert one_line(e) == "trace is malformed: cycle 1 cannot be drawn (it refers to 7, which it does not hold)"


# ---- the app: a public Space ----------------------------------------------------------------------------------------
@pytest.fixture
def space(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/eagle2-tree-lab")
    monkeypatch.delenv("EAGLE2_APP_MAX_MODEL_BYTES", raising=False)


@pytest.mark.parametrize("over, match", [
    ({"target": "./my-model"}, "local paths are disabled on a public Space; use a hub id or the default model "
                               "(model './my-model' is a path)"),
    ({"target": "/etc"}, "(model '/etc' is a path)"),
    ({"target": "eagle2"}, "(model 'eagle2' is a path)"),  # a folder that exists here, though it looks like an id
    ({"head": "~/heads/h"}, "local paths are disabled on a public Space; use a hub id or a shipped head"),
    ({"head": "/tmp"}, "(head '/tmp' is a path)"),
])
def test_space_refuses_local_paths(space, over, match):
    with pytest.raises(ValueError) as e:
        validate(*run_args(**over))
    assert match in one_line(e)
    status = final_status(**over)
    assert "tl-warn" in status and "local paths are disabled on a public Space" in status


@pytest.mark.parametrize("over", [{}, {"head": "random"}, {"head": "default"}, {"target": "HuggingFaceTB/SmolLM2-360M"},
                                  {"head": "someone/eagle-head"}])
def test_space_allows_hub_ids_and_shipped_names(space, over):
    p = validate(*run_args(**over))
    assert (p.target, p.head) == (over.get("target", "default"), over.get("head", "self"))


def test_local_paths_allowed_off_a_space(monkeypatch, tiny_dir):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("EAGLE2_APP_PUBLIC", raising=False)
    assert validate(*run_args(target=tiny_dir, head="./h")).target == tiny_dir


def test_spec_boxes_are_one_short_line():
    with pytest.raises(ValueError, match="one short line"):
        validate(*run_args(target="a" * 400))
    with pytest.raises(ValueError, match="one short line"):
        validate(*run_args(head="x\ny"))
    with pytest.raises(ValueError, match="must be text"):
        validate(*run_args(target=["a"]))


def _sizes(files: dict):
    """A model_info(..., files_metadata=True) answer: file names and sizes."""
    return SimpleNamespace(siblings=[SimpleNamespace(rfilename=f, size=s) for f, s in files.items()])


BIG = {"model-00001-of-00002.safetensors": 4_000_000_000, "model-00002-of-00002.safetensors": 3_200_000_000,
       "consolidated.safetensors": 7_200_000_000, "config.json": 700}


def test_size_of_a_hub_model_from_its_metadata(online, monkeypatch):
    asked = []
    monkeypatch.setattr(hub, "model_info", lambda repo, files_metadata=False, timeout=None: (
        asked.append(files_metadata), _sizes(BIG))[1])
    assert guard.model_bytes("big-org/big-model") == 7_200_000_000  # not the consolidated duplicate
    assert asked == [True]
    bins = _sizes({"pytorch_model.bin": 500, "config.json": 1, "sub/model.safetensors": 9})
    assert hub.hub_weights_bytes(bins) == 500


def test_too_large_hub_model_is_refused_with_its_size(online, space, monkeypatch):
    monkeypatch.setattr(hub, "model_info", lambda repo, files_metadata=False, timeout=None: _sizes(BIG))
    with pytest.raises(ValueError) as e:
        guard.check_model_size("big-org/big-model")
    assert one_line(e) == ("model 'big-org/big-model' is too large for this app: 7.2 GB of weights, at most 2.0 GB on "
                           "this public Space (EAGLE2_APP_MAX_MODEL_BYTES)")
    monkeypatch.setenv("EAGLE2_APP_MAX_MODEL_BYTES", "1e10")
    guard.check_model_size("big-org/big-model")
    monkeypatch.setenv("EAGLE2_APP_MAX_MODEL_BYTES", "0")  # no cap
    guard.check_model_size("big-org/big-model")
    monkeypatch.setenv("EAGLE2_APP_MAX_MODEL_BYTES", "lots")
    with pytest.raises(ValueError, match="EAGLE2_APP_MAX_MODEL_BYTES must be a number of bytes"):
        guard.check_model_size("big-org/big-model")


def test_too_large_model_is_refused_before_loading(online, space, monkeypatch):
    monkeypatch.setattr(hub, "model_info", lambda repo, files_metadata=False, timeout=None: _sizes(BIG))
    monkeypatch.setattr(run, "MODELS", run.Models())
    monkeypatch.setattr(eagle2, "load_target", lambda *a, **k: pytest.fail("a too-large model was loaded"))
    status = final_status(target="big-org/big-model")
    assert "tl-error" in status and "too large for this app: 7.2 GB of weights, at most 2.0 GB" in status


def test_size_cap_defaults_and_folders(monkeypatch, tiny_dir):
    monkeypatch.delenv("EAGLE2_APP_MAX_MODEL_BYTES", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("EAGLE2_APP_PUBLIC", raising=False)
    assert guard.max_model_bytes() == guard.LOCAL_MAX_MODEL_BYTES
    monkeypatch.setenv("SPACE_ID", "x/y")
    assert guard.max_model_bytes() == guard.SPACE_MAX_MODEL_BYTES == 2_000_000_000
    monkeypatch.setenv("EAGLE2_APP_MAX_MODEL_BYTES", "1000")
    size = (Path(tiny_dir) / "model.safetensors").stat().st_size
    with pytest.raises(ValueError, match=rf"too large for this app: {hub.human_bytes(size)} of weights, at most 1.0 kB"):
        guard.check_model_size(tiny_dir)
    assert guard.model_bytes("default") is None


def test_size_of_an_unreachable_model_is_left_to_the_load(online, monkeypatch):
    import httpx2

    hub_answers(monkeypatch, httpx2.ConnectError("unreachable"))
    assert guard.model_bytes("some-org/some-model") is None


# ---- the app: failed runs are one line, and the next run works ---------------------------------------------------
@pytest.fixture
def tiny_app(monkeypatch, tiny_target):
    """A fresh model cache whose "default" is the tiny target; other specs load for real."""
    models = run.Models()
    real = models.target
    monkeypatch.setattr(models, "target", lambda name="default": tiny_target if name == "default" else real(name))
    monkeypatch.setattr(run, "MODELS", models)
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("EAGLE2_APP_PUBLIC", raising=False)
    return models


def test_bad_model_then_a_good_run(tiny_app, offline):
    t0 = time.perf_counter()
    status = final_status(target="./no-such-model")
    assert "tl-error" in status and "no such folder: ./no-such-model (" in status
    status = final_status(target="no-such-org/no-such-model")
    assert "the Hugging Face Hub is off (HF_HUB_OFFLINE is set) and it is not in the local cache" in status
    assert time.perf_counter() - t0 < FAST_S
    assert "Done" in final_status()
    assert tiny_app.loaded() == []  # nothing half-loaded was kept


def test_unreachable_hub_in_the_app_is_fast(tiny_app, online, monkeypatch):
    import httpx2

    hub_answers(monkeypatch, httpx2.ConnectError("unreachable"))
    t0 = time.perf_counter()
    status = final_status(target="HuggingFaceTB/SmolLM2-360M-Instruct")
    assert ("cannot load model 'HuggingFaceTB/SmolLM2-360M-Instruct': the Hugging Face Hub cannot be reached "
            "(offline?) and it is not in the local cache") in status
    assert time.perf_counter() - t0 < FAST_S


def test_bad_heads_then_a_good_run(tiny_app, offline, tiny_head, foreign_heads):
    assert "no such folder: ./no-such-head (" in final_status(head="./no-such-head")
    assert "cannot fetch draft head 'x/y': the Hugging Face Hub is off" in final_status(head="x/y")
    status = final_status(head=foreign_heads["hidden"])
    assert "was made for another model: head hidden size 32 does not fit the target's 64" in status
    assert "Done" in final_status(head=tiny_head)


def test_an_unexpected_crash_is_one_line_and_the_app_recovers(tiny_app, monkeypatch, tiny_target, capsys):
    def crash(name="default"):
        raise RuntimeError("CUDA error: device-side assert triggered\n  File \"x.py\", line 1\nmore")

    monkeypatch.setattr(tiny_app, "target", crash)
    status = final_status()
    assert "RuntimeError: CUDA error: device-side assert triggered" in status and "more" not in status
    assert "Traceback" in capsys.readouterr().err  # the details go to the server log, not the page
    monkeypatch.setattr(tiny_app, "target", lambda name="default": tiny_target)
    assert "Done" in final_status()
    assert not run.GEN_LOCK.locked()


def test_friendly_errors_are_short():
    assert run._friendly(ValueError("x" * 1000)).endswith("…") and len(run._friendly(ValueError("x" * 1000))) == 400
    assert run._friendly(KeyError("cycles")) == "KeyError: 'cycles'"
    assert run._friendly(MemoryError()).startswith("MemoryError: out of memory")
