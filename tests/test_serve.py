"""serve-config: our tree sizes as SGLang / vLLM launch flags, checked against the engines' sources.

Conventions (README): our `depth` = depth of the deepest draft token; `total_tokens` counts draft
tokens, not the root. Engine sources read for the conversions and pinned flag sets below:

* SGLang 0.5.23 (PyPI wheel `sglang==0.5.23`, package `sglang/srt/`):
  - `speculative/eagle_worker_v2.py` `draft_forward`: `for i in range(speculative_num_steps)` calls
    `select_top_k_tokens` (level i+1; level 1 = the top-k from the draft-extend pass) and breaks
    before the forward when `i == num_steps - 1`: num_steps = tree levels = our depth.
  - `speculative/eagle_utils.py` `organize_draft_results`: `torch.topk(score_list, num_draft_token - 1)`
    over the concatenated level scores (topk for level 1, topk² per later level = our max_candidates):
    the root is counted, num_draft_tokens = our total_tokens + 1.
  - `arg_groups/speculative_hook.py`: with `speculative_eagle_topk == 1` it sets
    `speculative_num_draft_tokens = speculative_num_steps + 1`; `_auto_choose_speculative_params`
    returns (5, 4, 8) for LlamaForCausalLM targets and (3, 1, 4) for STANDALONE / many MTP models.
  - `models/llama_eagle.py`: EntryClass `LlamaForCausalLMEagle` (fc = nn.Linear with bias).
* vLLM 0.33.0 (PyPI wheel `vllm==0.33.0`):
  - `vllm/v1/spec_decode/llm_base_proposer.py`: one draft token from the first pass, then
    `for token_index in range(num_speculative_tokens - 1)`; `num_sampled_tokens_per_req =
    num_speculative_tokens + 1`: a chain of num_speculative_tokens = our depth.
  - `vllm/config/speculative.py`: `SpeculativeConfig` fields `method`, `model`,
    `num_speculative_tokens`; `SpeculativeMethod` includes "eagle", "eagle3"; no tree option.
  - `vllm/engine/arg_utils.py`: `--speculative-config` is `json.loads`-typed;
    `vllm/entrypoints/common/cli_args.py` `make_arg_parser` adds the positional `model_tag`.
  - `vllm/model_executor/models/llama_eagle.py`: EagleLlamaForCausalLM's fc has `bias=False`.
* Official EAGLE (github SafeAILab/EAGLE, EAGLE-2 commit bfeb532, same at HEAD cb7e084):
  `eagle/model/cnets.py` `Model.__init__` stores `total_tokens - 1`, `topK_genrate` expands
  `for i in range(depth)` after the first level; `ea_model.py` defaults total_token=59, depth=5, top_k=10.

The real parsers are exercised only where the engine imports (a side environment:
`pip install --no-deps sglang` / `vllm` plus their small pure-Python imports; vLLM needs
VLLM_TARGET_DEVICE=cpu without a GPU); the pinned sets below are checked always.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import typing

import pytest

from eagle2.cli import main
from eagle2.serve import (DEFAULT_HEAD_DIR, DEFAULT_TARGET_HUB_ID, FIXED_TREE, ServeSettings, check_tree,
                          detect_head_kind, eagle_repo_settings, from_sglang, max_candidates, serve_command,
                          sglang_command, sglang_tree, vllm_chain, vllm_command)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Checked against sglang 0.5.23: ServerArgs.add_cli_args (sglang/srt/server_args.py) option strings.
SGLANG_VERSION = "0.5.23"
SGLANG_FLAGS = {"--model-path", "--speculative-algorithm", "--speculative-draft-model-path",
                "--speculative-num-steps", "--speculative-eagle-topk", "--speculative-num-draft-tokens",
                "--dtype", "--tp-size", "--host", "--port"}
SGLANG_DTYPES = {"auto", "half", "float16", "bfloat16", "float", "float32"}
SGLANG_ALGORITHMS = {"EAGLE", "EAGLE3"}  # sglang/srt/speculative/spec_info.py SpeculativeAlgorithm
# Checked against vllm 0.33.0: make_arg_parser(FlexibleArgumentParser()) (vllm/entrypoints/common/cli_args.py).
VLLM_VERSION = "0.33.0"
VLLM_FLAGS = {"--speculative-config", "--dtype", "--tensor-parallel-size", "--host", "--port"}
VLLM_DTYPES = {"auto", "half", "float16", "bfloat16", "float", "float32"}
VLLM_SPEC_KEYS = {"method", "model", "num_speculative_tokens"}  # SpeculativeConfig fields we emit
VLLM_METHODS = {"eagle", "eagle3"}  # members of vllm.config.speculative.SpeculativeMethod


def options(argv: list[str]) -> set[str]:
    return {a for a in argv if a.startswith("--")}


def make_head(folder, **config):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


VARIANTS = [ServeSettings(), ServeSettings(top_k=4, depth=5, total_tokens=7, dtype="bfloat16", tp=2,
                                           host="0.0.0.0", port=8080),
            ServeSettings(top_k=1, depth=3, total_tokens=3, dtype="float32", port=30001)]


# --- conversions -----------------------------------------------------------------------------

def test_sglang_conversion_known_cases():
    # SGLang's Llama default (speculative_hook.py _auto_choose_speculative_params: 5, 4, 8) is our 4/5/7.
    assert sglang_tree(4, 5, 7) == {"speculative_num_steps": 5, "speculative_eagle_topk": 4,
                                    "speculative_num_draft_tokens": 8}
    assert from_sglang(5, 4, 8) == {"top_k": 4, "depth": 5, "total_tokens": 7}
    # The paper's GPU tree: 60 draft tokens + the root = 61 verified (organize_draft_results keeps n - 1).
    assert sglang_tree(10, 6, 60)["speculative_num_draft_tokens"] == 61
    assert sglang_tree(10, 6, 60)["speculative_num_steps"] == 6
    # A chain (topk 1): SGLang forces num_draft_tokens = num_steps + 1 (speculative_hook.py); (3, 1, 4) is its
    # STANDALONE default = our chain of depth 3.
    assert sglang_tree(1, 3, 3) == {"speculative_num_steps": 3, "speculative_eagle_topk": 1,
                                    "speculative_num_draft_tokens": 4}
    assert from_sglang(3, 1, 4) == {"top_k": 1, "depth": 3, "total_tokens": 3}
    assert from_sglang(3, 1, 2) == {"top_k": 1, "depth": 3, "total_tokens": 3}  # SGLang's override
    for k, d, t in [(4, 5, 7), (10, 6, 60), (2, 3, 10), (1, 4, 4)]:
        assert from_sglang(*sglang_tree(k, d, t).values()) == {"top_k": k, "depth": d, "total_tokens": t}


def test_depth_is_cut_to_total_tokens():
    # A kept node's ancestors are kept, so no kept token is deeper than total_tokens: fewer steps, same tree.
    assert sglang_tree(1, 5, 3) == {"speculative_num_steps": 3, "speculative_eagle_topk": 1,
                                    "speculative_num_draft_tokens": 4}
    assert sglang_tree(4, 8, 2)["speculative_num_steps"] == 2
    assert vllm_chain(depth=6, total_tokens=3) == 3


def test_candidate_pool_matches_ours_and_sglang():
    from eagle2.tree import max_candidates as ours

    for k, d in [(1, 1), (1, 7), (4, 5), (10, 6), (3, 2)]:
        # SGLang: score_list = topk (level 1) + topk*topk per later level (eagle_utils.organize_draft_results).
        assert max_candidates(k, d) == ours(k, d) == k + (d - 1) * k * k
    check_tree(4, 5, max_candidates(4, 5))
    with pytest.raises(ValueError, match="more than"):
        sglang_tree(4, 5, max_candidates(4, 5) + 1)


def test_vllm_chain_is_depth():
    # llm_base_proposer.py: num_speculative_tokens draft tokens, verified with num_speculative_tokens + 1.
    assert vllm_chain(depth=5, total_tokens=12) == 5
    assert vllm_chain(depth=1, total_tokens=1) == 1


def test_eagle_repo_convention():
    # EAGLE-2 release defaults (ea_model.py total_token=59, depth=5, top_k=10) = our top_k 10, depth 6, 58 drafts.
    assert eagle_repo_settings(10, 6, 58) == {"total_token": 59, "depth": 5, "top_k": 10}
    assert eagle_repo_settings(4, 1, 4) == {"total_token": 5, "depth": 0, "top_k": 4}


# --- head kind -----------------------------------------------------------------------------------

def test_head_kind_detection(tmp_path):
    assert detect_head_kind(DEFAULT_HEAD_DIR) == "eagle1"
    assert detect_head_kind(make_head(tmp_path / "a", architectures=["LlamaForCausalLMEagle3"])) == "eagle3"
    assert detect_head_kind(make_head(tmp_path / "b", architectures=["LlamaForCausalLM"],
                                      draft_vocab_size=32000)) == "eagle3"
    assert detect_head_kind(make_head(tmp_path / "c", architectures=["Eagle3LlamaForCausalLM"])) == "eagle3"
    assert detect_head_kind(make_head(tmp_path / "d", architectures=["LlamaForCausalLM"], bias=False)) == "eagle1"
    assert detect_head_kind(make_head(tmp_path / "e")) == "eagle1"


def test_eagle3_head_commands(tmp_path):
    head = make_head(tmp_path / "h3", architectures=["LlamaForCausalLMEagle3"], draft_vocab_size=8)
    s = ServeSettings(model="meta-llama/Llama-3.1-8B-Instruct", head=head, top_k=8, depth=6, total_tokens=63)
    sg = sglang_command(s)
    assert sg.argv[sg.argv.index("--speculative-algorithm") + 1] == "EAGLE3"
    assert sg.argv[sg.argv.index("--speculative-num-draft-tokens") + 1] == "64"
    assert not any("architectures" in n for n in sg.notes)
    vl = vllm_command(s)
    spec = json.loads(vl.argv[vl.argv.index("--speculative-config") + 1])
    assert spec == {"method": "eagle3", "model": str(tmp_path / "h3"), "num_speculative_tokens": 6}
    assert not any("bias" in n for n in vl.notes)


# --- whole commands --------------------------------------------------------------------------

def test_default_sglang_command():
    cmd = serve_command(ServeSettings(), "sglang")
    argv = cmd.argv
    assert argv[:3] == ["python3", "-m", "sglang.launch_server"]
    value = lambda flag: argv[argv.index(flag) + 1]  # noqa: E731
    assert value("--model-path") == DEFAULT_TARGET_HUB_ID
    assert value("--speculative-draft-model-path") == str(DEFAULT_HEAD_DIR)
    assert os.path.isabs(value("--speculative-draft-model-path"))
    assert value("--speculative-algorithm") == "EAGLE"
    assert (value("--speculative-num-steps"), value("--speculative-eagle-topk"),
            value("--speculative-num-draft-tokens")) == ("6", "10", "61")  # auto -> FIXED_TREE
    assert FIXED_TREE == {"top_k": 10, "depth": 6, "total_tokens": 60}
    text = "\n".join(cmd.notes)
    assert DEFAULT_TARGET_HUB_ID in text and "GGUF" in text
    assert "auto" in text and "LlamaForCausalLMEagle" in text
    assert cmd.shell.startswith("python3 -m sglang.launch_server --model-path ")


def test_default_vllm_command():
    cmd = serve_command(ServeSettings(top_k=4, depth=5, total_tokens=12, tp=2), "vllm")
    assert cmd.argv[:3] == ["vllm", "serve", DEFAULT_TARGET_HUB_ID]
    spec = json.loads(cmd.argv[cmd.argv.index("--speculative-config") + 1])
    assert spec == {"method": "eagle", "model": str(DEFAULT_HEAD_DIR), "num_speculative_tokens": 5}
    assert cmd.argv[cmd.argv.index("--tensor-parallel-size") + 1] == "2"
    text = "\n".join(cmd.notes)
    assert "chain" in text and "top_k=4" in text and "total_tokens=12" in text
    assert "bias" in text  # our head has fc.bias; vLLM's EagleLlamaForCausalLM has none
    assert "'{" in cmd.shell  # the JSON is quoted for the shell


def test_flags_are_the_pinned_engine_flags():
    for s in VARIANTS:
        sg, vl = sglang_command(s), vllm_command(s)
        assert options(sg.argv) <= SGLANG_FLAGS, options(sg.argv) - SGLANG_FLAGS
        assert options(vl.argv) <= VLLM_FLAGS, options(vl.argv) - VLLM_FLAGS
        assert sg.argv[sg.argv.index("--speculative-algorithm") + 1] in SGLANG_ALGORITHMS
        spec = json.loads(vl.argv[vl.argv.index("--speculative-config") + 1])
        assert set(spec) <= VLLM_SPEC_KEYS and spec["method"] in VLLM_METHODS
        for argv, dtypes in ((sg.argv, SGLANG_DTYPES), (vl.argv, VLLM_DTYPES)):
            if "--dtype" in argv:
                assert argv[argv.index("--dtype") + 1] in dtypes


# --- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("settings, engine, match", [
    (ServeSettings(), "tgi", "unknown engine"),
    (ServeSettings(total_tokens=0), "sglang", "total_tokens must be >= 1"),
    (ServeSettings(total_tokens="big"), "sglang", "total_tokens"),
    (ServeSettings(top_k=0), "vllm", "top_k"),
    (ServeSettings(depth=2.5), "vllm", "depth"),
    (ServeSettings(top_k=2, depth=2, total_tokens=7), "sglang", "more than"),
    (ServeSettings(dtype="fp8"), "sglang", "dtype"),
    (ServeSettings(tp=0), "sglang", "tp"),
    (ServeSettings(port=70000), "vllm", "port"),
    (ServeSettings(model="no/such/folder"), "sglang", "neither a local folder nor a hub id"),
    (ServeSettings(model="org/other-model"), "sglang", "no draft head is shipped"),
    (ServeSettings(head="./missing/head/dir"), "vllm", "neither a local folder nor a hub id"),
    (ServeSettings(head_kind="eagle3"), "sglang", "does not match"),
    (ServeSettings(head_kind="medusa"), "sglang", "head_kind"),
])
def test_bad_input_is_one_line_value_error(settings, engine, match):
    with pytest.raises(ValueError, match=match) as err:
        serve_command(settings, engine)
    assert "\n" not in str(err.value)


def test_head_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json is missing"):
        serve_command(ServeSettings(head=str(tmp_path / "empty")), "sglang")


def test_hub_head_kind_is_guessed_and_said():
    cmd = serve_command(ServeSettings(model="meta-llama/Llama-3.1-8B-Instruct",
                                      head="yuhuili/EAGLE3-LLaMA3.1-Instruct-8B"), "sglang")
    assert cmd.argv[cmd.argv.index("--speculative-algorithm") + 1] == "EAGLE3"
    assert any("guessed" in n for n in cmd.notes)
    cmd = serve_command(ServeSettings(model="meta-llama/Llama-3.1-8B-Instruct",
                                      head="yuhuili/EAGLE3-LLaMA3.1-Instruct-8B", head_kind="eagle1"), "vllm")
    assert json.loads(cmd.argv[cmd.argv.index("--speculative-config") + 1])["method"] == "eagle"


# --- CLI -------------------------------------------------------------------------------------

def test_cli_json(capsys):
    code = main(["serve-config", "--engine", "sglang", "--top-k", "4", "--depth", "5", "--total-tokens", "7",
                 "--tp", "2", "--port", "8080", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    data = json.loads(out.out)
    assert set(data) == {"engine", "command", "argv", "notes", "settings"}
    assert data["settings"]["speculative_num_draft_tokens"] == 8
    assert data["argv"][data["argv"].index("--tp-size") + 1] == "2"


def test_cli_text_and_errors(capsys):
    assert main(["serve-config", "--engine", "vllm", "--depth", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("vllm serve ") and all(line.startswith("# ") for line in lines[1:])
    for argv in (["serve-config", "--engine", "tgi"], ["serve-config", "--engine", "sglang", "--total-tokens", "0"],
                 ["serve-config", "--engine", "sglang", "--top-k", "2", "--depth", "2", "--total-tokens", "9"],
                 ["serve-config", "--engine", "vllm", "--head", "./missing/head/dir"],
                 ["serve-config"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err


def test_cli_subprocess():
    env = {**os.environ, "PYTHONPATH": ROOT}
    r = subprocess.run([sys.executable, "-m", "eagle2", "serve-config", "--engine", "sglang", "--total-tokens", "12"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "--speculative-num-draft-tokens 13" in r.stdout.splitlines()[0]


# --- the engines' own parsers (only where the engine is installed) ---------------------------

def _sglang_parser():
    pytest.importorskip("sglang.srt.server_args")
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    return parser


def test_sglang_real_parser():
    parser = _sglang_parser()
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    known = {o: a for a in parser._actions for o in a.option_strings}
    assert SGLANG_FLAGS <= set(known), SGLANG_FLAGS - set(known)
    assert set(known["--dtype"].choices) == SGLANG_DTYPES
    assert SGLANG_ALGORITHMS <= set(SpeculativeAlgorithm.__members__)
    for s in VARIANTS:
        cmd = sglang_command(s)
        ns = parser.parse_args(cmd.argv[3:])
        r = cmd.resolved
        assert ns.model_path == r["model"] and ns.speculative_draft_model_path == r["head"]
        assert ns.speculative_algorithm == r["speculative_algorithm"]
        assert (ns.speculative_num_steps, ns.speculative_eagle_topk, ns.speculative_num_draft_tokens) == (
            r["speculative_num_steps"], r["speculative_eagle_topk"], r["speculative_num_draft_tokens"])
        assert ns.tp_size == s.tp and (s.port is None or ns.port == s.port)


def _vllm_parser(monkeypatch):
    if "VLLM_TARGET_DEVICE" not in os.environ:  # without a GPU vLLM cannot infer its platform
        monkeypatch.setenv("VLLM_TARGET_DEVICE", "cpu")
    pytest.importorskip("vllm.entrypoints.common.cli_args")
    from vllm.entrypoints.common.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser())


def test_vllm_real_parser(monkeypatch):
    parser = _vllm_parser(monkeypatch)
    import dataclasses

    from vllm.config.speculative import SpeculativeConfig, SpeculativeMethod

    def literals(t):
        out = set()
        for a in typing.get_args(t):
            out |= literals(a) if typing.get_origin(a) is typing.Literal else {a}
        return out

    known = {o: a for a in parser._actions for o in a.option_strings}
    assert VLLM_FLAGS <= set(known), VLLM_FLAGS - set(known)
    assert set(known["--dtype"].choices) == VLLM_DTYPES
    assert VLLM_SPEC_KEYS <= {f.name for f in dataclasses.fields(SpeculativeConfig)}
    assert VLLM_METHODS <= literals(SpeculativeMethod)
    for s in VARIANTS:
        cmd = vllm_command(s)
        ns = parser.parse_args(cmd.argv[2:])
        assert ns.model_tag == cmd.resolved["model"]
        assert ns.speculative_config == {"method": cmd.resolved["method"], "model": cmd.resolved["head"],
                                         "num_speculative_tokens": cmd.resolved["num_speculative_tokens"]}
        assert ns.tensor_parallel_size == s.tp
