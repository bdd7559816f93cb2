"""Draft-head training pipeline: stage helpers, the unrolled (training-time-test) attention, and
an end-to-end run on the tiny model (a few prompts, one short epoch, seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eagle2 import train, train_data as td
from eagle2.head import EagleHead
from eagle2.vocab import ReducedLMHead

REPO = Path(__file__).resolve().parents[1]


def run_python(*args, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run `python ARGS...` as a user would: a fresh interpreter with the repo on PYTHONPATH."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": path})


def run_script(name: str, *args) -> subprocess.CompletedProcess:
    """Run scripts/NAME as a user would."""
    return run_python(REPO / "scripts" / name, *args)


def test_magpie_prefix_stops_at_user_turn(tiny_target):
    prefix = td.magpie_prefix(tiny_target.tokenizer)
    assert prefix.endswith("user : ")
    assert td.SENTINEL not in prefix


def test_prompt_filters():
    ok = "How do I bake bread at home without yeast?"
    assert td.prompt_verdict(ok, True) is None
    assert td.prompt_verdict(ok, False) == "unfinished"
    assert td.prompt_verdict("Hi?", True) == "short"
    assert td.prompt_verdict("The weather was nice today in the park.", True) == "not-a-request"
    assert td.prompt_verdict("Write a poem about <|im_start|> cats please", True) == "junk"
    assert td.prompt_verdict("what what what what what what what what?", True) == "repetitive"
    assert td.prompt_verdict("anything at all", False, "loose") is None


def test_prompt_openers_start_the_user_messages(tiny_target, tmp_path, monkeypatch):
    """--prompt-openers mixed: every prompt begins with a listed opener, drawn per row (seeded), and
    each opener passes the request filter; none leaves the whole message to the target."""
    from types import SimpleNamespace

    for opener in td.PROMPT_OPENERS:
        assert td.prompt_verdict(opener + " the three things that matter most here", True, opener=opener) is None, opener
    plain = "In a world where the weather was nice today, we walked in the park."
    assert td.prompt_verdict(plain, True) == "not-a-request"  # without the opener: not a request
    assert td.prompt_verdict(plain, True, opener="In a world where") is None
    monkeypatch.setattr(td, "PROMPT_OPENERS", ("how", "could you", "why do", "what is the", "can"))  # tiny words
    args = SimpleNamespace(seed=5, prompt_openers="mixed", prompt_batch=6, n_prompts=12, prompt_minutes=0,
                           prompt_max_tokens=6, prompt_temperature=1.0, prompt_top_p=0.95, prompt_stop_frac=1.0,
                           prompt_filter="loose", threads=1)
    assert td.batch_openers(args, 3) == td.batch_openers(args, 3) != td.batch_openers(args, 4)
    assert len(set(td.batch_openers(args, 3))) > 1 and set(td.batch_openers(args, 3)) <= set(td.PROMPT_OPENERS)
    stats = td.stage_prompts(tiny_target, args, tmp_path)
    raw = td.read_jsonl(tmp_path / "prompts.partial.jsonl")
    assert stats["raw"] == len(raw) >= 12
    for r in raw:
        assert r["text"].startswith(tuple(td.PROMPT_OPENERS)), r["text"]
        assert r["opener"] in td.PROMPT_OPENERS
    assert td.batch_openers(SimpleNamespace(prompt_openers="none", prompt_batch=3, seed=5), 0) == ["", "", ""]


def test_cut_at_stop_and_batches():
    assert td.cut_at_stop([5, 6, 2, 2, 2], {2}) == ([5, 6, 2], True)
    assert td.cut_at_stop([5, 6], {2}) == ([5, 6], False)
    groups = td.length_batches([10, 300, 20, 290, 15], max_tokens=600)
    assert sorted(i for g in groups for i in g) == [0, 1, 2, 3, 4]
    for g in groups:
        assert max([10, 300, 20, 290, 15][i] for i in g) * len(g) <= 600 or len(g) == 1


def test_ttt_mask_structure():
    m = train.ttt_mask(5, 3, torch.float32)[0, 0] == 0  # allowed
    assert m.shape == (5, 15)
    i = 4  # step 3 at position 4: real context ends at r = 2
    assert m[i, :5].tolist() == [True, True, True, False, False]  # step-1 keys ≤ r
    assert m[i, 5:10].tolist() == [False, False, False, True, False]  # step-2 key at r+1
    assert m[i, 10:].tolist() == [False, False, False, False, True]  # itself
    assert train.ttt_mask(4, 1, torch.float32)[0, 0].eq(0).equal(torch.ones(4, 4).tril().bool())


def test_unroll_matches_sequential_drafting(tiny_target):
    """Step k at position i of the parallel unroll == drafting k steps from real context r = i-k+1."""
    from transformers import DynamicCache

    torch.manual_seed(0)
    head = EagleHead.for_target(tiny_target.config).float().eval()
    embed = tiny_target.model.get_input_embeddings()
    T, H, K = 9, tiny_target.config.hidden_size, 4
    tok = torch.randint(5, 50, (1, T + 1))
    feats = torch.randn(1, T, H)
    with torch.no_grad():
        preds = train.unroll(head, embed, tok, feats, K, 0.0, torch.float32)
        e = embed(tok[:, 1:T]).float()
        for r in range(0, T - K):
            cache = DynamicCache()
            pos = torch.arange(r + 1)[None]
            out = head(e[:, : r + 1], feats[:, : r + 1], pos, cache=cache)
            prev = out[:, -1:]
            assert torch.allclose(prev, preds[0][:, r:r + 1], atol=1e-4)
            for k in range(2, K + 1):
                i = r + k - 1
                prev = head(e[:, i:i + 1], prev, torch.tensor([[i]]), cache=cache)
                assert torch.allclose(prev, preds[k - 1][:, i:i + 1], atol=1e-4), (r, k)


def test_loss_positions_cover_answer_tokens():
    valid = train.loss_positions(torch.tensor([6]), torch.tensor([3]), 5)
    # position i predicts token i+2: answer tokens are 3, 4, 5
    assert valid[0].tolist() == [False, True, True, True, False]


def test_pipeline_end_to_end(tiny_dir, tmp_path):
    out, head_out = tmp_path / "run", tmp_path / "head"
    argv = ["--out", str(out), "--model", tiny_dir, "--dtype", "float32", "--device", "cpu",
            "--head-out", str(head_out), "--n-prompts", "8", "--prompt-batch", "4",
            "--prompt-max-tokens", "10", "--prompt-filter", "loose", "--answer-batch", "4",
            "--answer-max-tokens", "12", "--sampled-frac", "0.25", "--epochs", "1",
            "--batch-tokens", "128", "--ttt-steps", "1", "--ttt-pilot-minutes", "0.02",
            "--eval-steps", "3", "--warmup-steps", "1", "--threads", "2", "--arch", "eagle1",
            "--n-tasks", "4"]
    assert train.main(argv) == 0
    for name in ("prompts.jsonl", "answers.jsonl", "tasks.jsonl", "features.pt", "config.json", "train.json"):
        assert (out / name).exists(), name
    for name in ("config.json", "model.safetensors", "report.json", "TRAINING.md", "token_counts.json"):
        assert (head_out / name).exists(), name
    from eagle2.vocab import load_counts

    answer_tokens = sum(len(json.loads(x)["answer_ids"]) for name in ("answers.jsonl", "tasks.jsonl")
                        for x in (out / name).read_text().splitlines())  # chat and task answers
    assert sum(load_counts(head_out / "token_counts.json").values()) == answer_tokens
    head = EagleHead.from_pretrained(head_out)
    assert head.hidden_size == 64 and head.embed_tokens is None
    report = json.loads((head_out / "report.json").read_text())
    assert report["stages"]["prompts"]["kept"] == 8
    assert report["stages"]["answers"]["answers"] == 8
    acc = report["training"]["best"]["val"]["acc"]
    assert len(acc) == 3 and all(0.0 <= a <= 1.0 for a in acc)
    assert len(report["training"]["pilots"]) == 2
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    data = torch.load(out / "features.pt", weights_only=False)
    assert data["feats"].dtype == torch.bfloat16
    tasks = [json.loads(line) for line in (out / "tasks.jsonl").read_text().splitlines()]
    assert len(tasks) == 4 and report["stages"]["tasks"]["planned"] == 4
    assert int(data["offsets"][-1]) == sum(len(a["prompt_ids"]) + len(a["answer_ids"]) for a in answers + tasks)
    assert data["aux"] is None  # eagle1 needs no layer features

    # resumable: a second run skips every stage; --force train redoes only training
    mtime = (out / "features.pt").stat().st_mtime
    assert train.main(argv) == 0
    assert (out / "features.pt").stat().st_mtime == mtime
    assert train.main(argv + ["--force", "train", "--ttt-pilot-minutes", "0", "--train-vocab", "40",
                              "--head-intermediate", "96"]) == 0
    assert (out / "features.pt").stat().st_mtime == mtime
    assert EagleHead.from_pretrained(head_out).layers[0].mlp.up_proj.out_features == 96
    meta = json.loads((out / "train.json").read_text())
    assert meta["pilots"] == [] and 40 <= meta["train_vocab"] <= 41  # + EOS when it is not frequent
    assert len(meta["best"]["val"]["acc_train_vocab"]) == 3
    # a trained head continues with more layers (--head-layers grows it); it is never cut
    grow = argv + ["--force", "train", "--ttt-pilot-minutes", "0", "--init-head", str(head_out), "--head-layers", "2"]
    grow[grow.index("--head-out") + 1] = str(tmp_path / "head2")
    assert train.main(grow) == 0
    grown = EagleHead.from_pretrained(tmp_path / "head2")
    assert grown.num_layers == 2 and grown.layers[0].mlp.up_proj.out_features == 96
    assert json.loads((out / "train.json").read_text())["head_layers"] == 2
    with pytest.raises(ValueError, match="already has 2 layers"):
        train.main(grow[:-3] + [str(tmp_path / "head2"), "--head-layers", "1"])
    # without --head-out the run's own head folder is complete too: the bench and the app draft
    # from its reduced vocabulary, which needs the answer token counts beside it
    (out / "head" / "token_counts.json").unlink()
    bare = [a for i, a in enumerate(argv) if "--head-out" not in (a, argv[i - 1])]
    assert train.main(bare + ["--force", "train", "--ttt-pilot-minutes", "0"]) == 0
    assert sum(load_counts(out / "head" / "token_counts.json").values()) == answer_tokens

    # --keep-better with a fixed held-out file (--exclude-prompts): the new head and the one in
    # --head-out are scored on the same sequences of that file; the new one is copied only if its
    # chain score is not lower
    held = tmp_path / "held.npz"
    td.select_tokens(out / "head" / train.TOKENS_FILE, held, [0, 1])
    old_weights = (head_out / "model.safetensors").read_bytes()
    assert train.main(argv + ["--force", "train", "--ttt-pilot-minutes", "0", "--keep-better",
                              "--exclude-prompts", str(held)]) == 0
    kept = json.loads((out / "keep_better.json").read_text())
    assert kept["new"]["val_sequences"] == kept["old"]["val_sequences"] == 2
    assert kept["new"]["positions"] == kept["old"]["positions"] > 0
    copied = (head_out / "model.safetensors").read_bytes() != old_weights
    assert copied == (kept["new"]["score"] >= kept["old"]["score"])
    # scripts/eval_heads.py --heldout scores from the same features and agrees; it refuses a folder
    # that holds the features of another file
    res = run_script("eval_heads.py", out / "heldout", out / "head", "--heldout", held, "--threads", "1")
    assert res.returncode == 0, res.stderr
    line = json.loads(res.stdout.strip().splitlines()[-1])
    assert line["positions"] == kept["new"]["positions"]
    assert line["acc"][:3] == pytest.approx(kept["new"]["acc"], abs=1e-3)
    res = run_script("eval_heads.py", out / "heldout", out / "head", "--heldout", out / "head" / train.TOKENS_FILE)
    assert res.returncode == 2 and "holds the features of" in res.stderr.splitlines()[-1]


def test_train_vocab_rows_are_frequent_answer_tokens_and_ce_matches_a_sliced_lm_head():
    data = train.FeatureData.__new__(train.FeatureData)
    data.tokens = torch.tensor([5, 6, 7, 7, 8, 9, 8, 8, 5, 5, 9, 5], dtype=torch.int32)
    data.offsets = torch.tensor([0, 6, 12])
    data.answer_start = torch.tensor([2, 2])  # answers [7 7 8 9] and [5 5 9 5]; prompts are not counted
    data.lengths = [6, 6]
    ids = train.train_vocab_ids(data, [0, 1], 3, 20, always=[2])
    assert ids.tolist() == [2, 5, 7, 9]  # sorted; EOS on top of the three most frequent answer tokens
    assert train.train_vocab_ids(data, [0], 2, 20).tolist() == [7, 8]  # ties go to the lower id

    torch.manual_seed(0)
    lm_head = torch.nn.Linear(8, 20, bias=False)
    rows = ReducedLMHead(lm_head, ids)
    x = torch.randn(3, 8)
    assert torch.allclose(train.ce_logits(rows, x), lm_head(x)[:, ids], atol=1e-6)
    preds = [torch.randn(1, 4, 8)]
    feats = torch.randn(1, 5, 8)
    tok = torch.tensor([[0, 1, 5, 9, 7, 3]])
    valid = torch.ones(1, 4, dtype=torch.bool)
    (_, _, _, ce), = train.head_losses(preds, tok, feats, valid, rows, 1.0, 1.0, "target")[0]
    q = torch.softmax(lm_head(feats[0, 1:])[:, ids], -1)
    want = -(q * torch.log_softmax(lm_head(preds[0][0])[:, ids], -1)).sum(-1).mean()
    assert torch.allclose(ce, want, atol=1e-5)
    # data labels: tokens outside the rows (3) are skipped, the others index into the rows
    (_, _, _, ce), = train.head_losses(preds, tok, feats, valid, rows, 1.0, 1.0, "data")[0]
    logits = lm_head(preds[0][0])[:, ids][:3]
    want = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 3, 2]))
    assert torch.allclose(ce, want, atol=1e-5)


def test_features_match_target_hidden_states(tiny_dir, tmp_path):
    out = tmp_path / "run"
    argv = ["--out", str(out), "--model", tiny_dir, "--dtype", "float32", "--device", "cpu",
            "--n-prompts", "3", "--prompt-batch", "3", "--prompt-max-tokens", "6",
            "--prompt-filter", "loose", "--answer-batch", "3", "--answer-max-tokens", "5",
            "--n-tasks", "2", "--until", "features"]
    assert train.main(argv) == 0
    from eagle2.models import load_target

    tgt = load_target(tiny_dir, dtype="float32", device="cpu")
    data = torch.load(out / "features.pt", weights_only=False)
    a, b = int(data["offsets"][0]), int(data["offsets"][1])
    ids = data["tokens"][a:b].long()[None]
    with torch.no_grad():
        h = tgt.model.model(input_ids=ids).last_hidden_state[0]
    assert torch.allclose(data["feats"][a:b].float(), h, atol=0.05, rtol=0.02)
    assert not (out / "head").exists()


def test_features_from_an_earlier_run_copy_known_sequences_and_compute_the_rest(tiny_dir, tmp_path):
    first = tmp_path / "first"
    common = ["--model", tiny_dir, "--dtype", "float32", "--device", "cpu", "--until", "features"]
    assert train.main(["--out", str(first), "--n-prompts", "4", "--prompt-batch", "4", "--prompt-max-tokens", "6",
                       "--prompt-filter", "loose", "--answer-batch", "4", "--answer-max-tokens", "5", "--n-tasks", "2"] + common) == 0
    full = torch.load(first / "features.pt", weights_only=False)
    n = len(full["offsets"]) - 1
    cut = int(full["offsets"][n - 1])  # an older file without the last sequence
    old = dict(full, tokens=full["tokens"][:cut], feats=full["feats"][:cut].clone() + 1.0,
               offsets=full["offsets"][:n], aux=None)
    torch.save(old, tmp_path / "old.pt")
    second = tmp_path / "second"
    assert train.main(["--out", str(second), "--data", str(first), "--features-from", str(tmp_path / "old.pt")] + common) == 0
    got = torch.load(second / "features.pt", weights_only=False)
    assert torch.equal(got["tokens"], full["tokens"]) and got["target"] == full["target"]
    assert torch.equal(got["feats"][:cut], old["feats"])  # copied, not recomputed (shifted by +1 above)
    assert torch.allclose(got["feats"][cut:].float(), full["feats"][cut:].float(), atol=0.05, rtol=0.02)
    assert json.loads((second / "stage_features.json").read_text())["reused_sequences"] == n - 1
    with pytest.raises(ValueError, match="holds features of"):
        torch.save(dict(old, target="another-model"), tmp_path / "other.pt")
        train.main(["--out", str(tmp_path / "third"), "--data", str(first), "--features-from",
                    str(tmp_path / "other.pt")] + common)


def test_training_restarted_in_fresh_processes_ends_with_the_same_head(tiny_dir, tmp_path):
    """--restart-minutes: the command line saves the state and re-executes itself; resuming loses
    nothing (head, optimizer, place in the data and the random streams come back), so a run cut
    after every step ends with the head of a run in one process."""
    import shutil

    from safetensors.torch import load_file

    once, cut = tmp_path / "once", tmp_path / "cut"
    common = ["--model", tiny_dir, "--dtype", "float32", "--device", "cpu", "--threads", "1",
              "--epochs", "2", "--train-minutes", "0", "--batch-tokens", "160", "--ttt-steps", "1",
              "--eval-steps", "2", "--warmup-steps", "1", "--eval-every", "1.0"]
    assert train.main(["--out", str(once), "--n-prompts", "6", "--prompt-batch", "3", "--prompt-max-tokens", "6",
                       "--prompt-filter", "loose", "--answer-batch", "3", "--answer-max-tokens", "8",
                       "--n-tasks", "3"] + common) == 0
    cut.mkdir()
    for name in ("prompts.jsonl", "answers.jsonl", "tasks.jsonl", "features.pt"):
        shutil.copyfile(once / name, cut / name)
    # --force abbreviated, as argparse allows: each restart must still drop it, or training starts over
    proc = run_python("-m", "eagle2", "train", "--out", cut, "--restart-minutes", "1e-9", "--forc", "train", *common,
                      timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta, ref = (json.loads((d / "train.json").read_text()) for d in (cut, once))
    assert meta["steps"] == ref["steps"] >= 3 and meta["processes"] == meta["steps"]
    assert proc.stderr.count("resumed at step") == meta["steps"] - 1
    assert not (cut / train.STATE_FILE).exists()  # removed once the stage is done
    assert [h["val"]["acc"] for h in meta["history"]] == [h["val"]["acc"] for h in ref["history"]]
    got, want = load_file(cut / "head" / "model.safetensors"), load_file(once / "head" / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)

    # a state saved under other options is refused, not silently mixed in
    torch.save({"args": {k: getattr(train.resolve_arch_defaults(train.build_parser().parse_args(
        ["--out", str(cut)] + common)), k) for k in train.RESUME_KEYS} | {"lr": 0.5}}, cut / train.STATE_FILE)
    (cut / "head" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="--lr 0.5"):
        train.main(["--out", str(cut)] + common)
    # a state saved before an option existed counts it as left at its default
    args = train.resolve_arch_defaults(train.build_parser().parse_args(["--out", str(cut)] + common))
    older = {k: getattr(args, k) for k in train.RESUME_KEYS if k != "head_layers"}
    torch.save({"args": older}, cut / train.STATE_FILE)
    assert train.load_train_state(cut / train.STATE_FILE, args)["args"] == older


def test_reported_training_minutes_leave_out_the_held_out_evaluations(tiny_dir, tmp_path, monkeypatch):
    """The budget (--train-minutes) does not count evaluation time, and neither does the minutes
    figure a run reports: an evaluation made slow on purpose must not show up in it."""
    import time

    real = train.evaluate

    def slow_evaluate(*a, **k):
        time.sleep(1.0)
        return real(*a, **k)

    monkeypatch.setattr(train, "evaluate", slow_evaluate)
    out = tmp_path / "run"
    assert train.main(["--out", str(out), "--model", tiny_dir, "--dtype", "float32", "--device", "cpu",
                       "--threads", "1", "--n-prompts", "4", "--prompt-batch", "4", "--prompt-max-tokens", "6",
                       "--prompt-filter", "loose", "--answer-batch", "4", "--answer-max-tokens", "6",
                       "--n-tasks", "2", "--epochs", "2", "--train-minutes", "0", "--batch-tokens", "160",
                       "--ttt-steps", "1", "--eval-steps", "2", "--warmup-steps", "1", "--eval-every", "0.5"]) == 0
    meta = json.loads((out / "train.json").read_text())
    evals = len(meta["history"])
    assert evals >= 4
    assert meta["history"][-1]["minutes"] * 60 < 0.5 * evals
    assert json.loads((out / "stage_train.json").read_text())["train_minutes"] * 60 < 0.5 * evals


def test_parser_defaults():
    args = train.build_parser().parse_args(["--out", "x"])
    assert args.model == "default" and args.sampled_frac == pytest.approx(0.2)
    assert args.ce_labels == "target"
    # the default recipe (= make train) keeps the 2-hour budget, leaving ~15 min for the
    # features stage (6 min for 680k tokens here) and start-up
    budget = (args.prompt_minutes + args.answer_minutes + args.task_minutes + args.train_minutes
              + 2 * args.ttt_pilot_minutes)
    assert budget <= 105, budget
    assert args.arch == "eagle1"  # ahead of eagle3 at equal CPU time (the head's TRAINING.md)
    e3 = train.resolve_arch_defaults(train.build_parser().parse_args(["--out", "x", "--arch", "eagle3"]))
    e1 = train.resolve_arch_defaults(train.build_parser().parse_args(["--out", "x"]))
    assert (e3.noise, e3.ce_frac, e3.ttt_steps) == (0.0, 0.5, 3) and (e1.noise, e1.ce_frac, e1.ttt_steps) == (0.2, 0.25, 1)
    assert train.resolve_arch_defaults(train.build_parser().parse_args(["--out", "x", "--noise", "0.1"])).noise == 0.1


def test_plan_answers_resumes_with_full_batches_and_the_same_modes():
    from types import SimpleNamespace

    args = SimpleNamespace(seed=3, sample_temperatures="0.7,1.0", sampled_frac=0.3, answer_batch=8)
    prompts = [{"id": i, "prompt": "x" * (i % 13)} for i in range(60)]
    first = {p["id"]: t for t, b in td.plan_answers(prompts[:40], args) for p in b}
    assert len(first) == 40 and 0 < sum(t > 0 for t in first.values()) < 40
    done = set(range(0, 40, 2))
    resumed = td.plan_answers(prompts, args, done)
    modes = {p["id"]: t for t, b in resumed for p in b}
    assert set(modes) == set(range(60)) - done  # every prompt still to answer, none twice
    assert all(modes[i] == first[i] for i in modes if i < 40)  # a prompt keeps its mode
    per_mode = {}
    for t, b in resumed:
        per_mode.setdefault(t, []).append(len(b))
    assert all(sum(n < 8 for n in sizes) <= 1 for sizes in per_mode.values())  # at most one short batch per mode


def test_task_prompts_cover_the_kinds_and_leave_out_the_dev_topics():
    from eagle2 import train_tasks as tt

    prompts = tt.task_prompts(300, answers=["A long answer. " * 60], seed=1)
    kinds = {p["kind"] for p in prompts}
    assert kinds == {"summarise", "translate", "extract", "question", "code_about", "code_write", "math"}
    assert len({p["prompt"] for p in prompts}) > 250
    from pydoc_data.topics import topics

    held = [topics[k][:200] for k in tt.HELD_OUT_TOPICS]
    assert not any(h in p["prompt"] for h in held for p in prompts)
    assert tt.task_prompts(5, seed=2) == tt.task_prompts(5, seed=2)


def test_tasks_stage_takes_passages_from_other_runs(tiny_dir, tmp_path, monkeypatch):
    """--passages: the tasks stage draws on another run's greedy chat answers, and the prompts and
    answers stages do not run (new task data beside a chat run on the other core)."""
    from eagle2 import train_data as td
    from eagle2 import train_tasks

    chat_run = tmp_path / "chat"
    chat_run.mkdir()
    rows = [{"prompt": "p", "prompt_ids": [5, 6], "answer_ids": [7, 8], "finished": True, "temperature": t,
             "answer": f"answer at temperature {t}"} for t in (0.0, 1.0)]
    td.write_jsonl(chat_run / "answers.jsonl", rows)
    seen = []
    real = train_tasks.task_prompts

    def recording(n, answers=(), seed=0):
        seen.append(list(answers))
        return real(n, answers=answers, seed=seed)

    monkeypatch.setattr(train_tasks, "task_prompts", recording)
    out = tmp_path / "tasks"
    argv = ["--out", str(out), "--model", tiny_dir, "--dtype", "float32", "--device", "cpu", "--threads", "1",
            "--until", "tasks", "--n-tasks", "3", "--answer-max-tokens", "3", "--passages", str(chat_run)]
    assert train.main(argv) == 0
    assert seen == [["answer at temperature 0.0"]]  # the greedy answer only
    assert len(td.read_jsonl(out / "tasks.jsonl")) == 3
    assert not (out / "prompts.jsonl").exists() and not (out / "answers.jsonl").exists()
    for extra in (["--data", str(chat_run)], ["--until", "answers"]):
        with pytest.raises(SystemExit) as e:
            train.main(argv + extra)
        assert e.value.code == 2


@pytest.fixture(scope="module")
def tiny6_dir(tmp_path_factory):
    """A six-layer tiny Llama (EAGLE-3 fuses layers 2, n/2 and n-3)."""
    from conftest import make_tiny_llama, make_tokenizer

    folder = tmp_path_factory.mktemp("tiny6")
    tok = make_tokenizer()
    make_tiny_llama(len(tok), seed=5, layers=6).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_eagle3_pipeline_writes_layer_features_and_an_official_head(tiny6_dir, tmp_path):
    """--arch eagle3 end to end: layer features, TTT, own draft vocabulary, official layout."""
    from eagle2.draft import load_head
    from eagle2.head import Eagle3Head, eagle3_feature_layers

    out, head_out = tmp_path / "run", tmp_path / "head"
    argv = ["--out", str(out), "--model", tiny6_dir, "--dtype", "float32", "--device", "cpu",
            "--head-out", str(head_out), "--n-prompts", "4", "--prompt-batch", "4", "--prompt-max-tokens", "8",
            "--prompt-filter", "loose", "--answer-batch", "4", "--answer-max-tokens", "10", "--n-tasks", "2",
            "--epochs", "2", "--batch-tokens", "256", "--eval-steps", "3", "--warmup-steps", "1",
            "--threads", "1", "--autocast", "off", "--ttt-steps", "2", "--train-vocab", "30", "--arch", "eagle3"]
    assert train.main(argv) == 0
    data = torch.load(out / "features.pt", weights_only=False)
    assert data["aux"].shape == (data["feats"].shape[0], 3 * 64) and data["aux_layers"] == eagle3_feature_layers(6)
    head = load_head(head_out, None)
    assert isinstance(head, Eagle3Head) and 30 <= head.draft_vocab_size <= 31  # + EOS
    assert json.loads((head_out / "config.json").read_text())["architectures"] == ["LlamaForCausalLMEagle3"]
    report = json.loads((head_out / "report.json").read_text())
    assert report["training"]["arch"] == "eagle3" and report["training"]["ttt_steps_used"] == 2
    assert len(report["training"]["best"]["val"]["acc"]) == 3
    assert "EAGLE-3" in (head_out / "TRAINING.md").read_text()
    with pytest.raises(ValueError, match="eagle3 head"):  # an EAGLE-3 head cannot seed an EAGLE-1 run
        train.main(argv + ["--force", "train", "--arch", "eagle1", "--init-head", str(head_out)])

    # the written data ships beside the head as token ids; a new run resumes from it (--data),
    # continuing the head, and recomputes identical features without writing data again
    assert (head_out / train.TOKENS_FILE).exists()
    out2, head2 = tmp_path / "run2", tmp_path / "head2"
    argv2 = [x if x not in (str(out), str(head_out)) else {str(out): str(out2), str(head_out): str(head2)}[x]
             for x in argv]
    assert train.main(argv2 + ["--data", str(head_out / train.TOKENS_FILE), "--init-head", str(head_out)]) == 0
    assert not (out2 / "prompts.jsonl").exists() and (out2 / "stage_data.json").exists()
    data2 = torch.load(out2 / "features.pt", weights_only=False)
    assert torch.equal(data2["tokens"], data["tokens"]) and torch.equal(data2["aux"], data["aux"])
    assert json.loads((head2 / "report.json").read_text())["training"]["init_head"] == str(head_out)
    with pytest.raises(ValueError, match="not a training-token file"):
        train.main(["--out", str(tmp_path / "run3"), "--model", tiny6_dir, "--dtype", "float32",
                    "--data", str(head_out / "config.json")])
    # data accumulates over runs: token files and run folders concatenate
    from transformers import AutoTokenizer

    from eagle2 import train_data as td

    first = td.import_tokens([head_out / train.TOKENS_FILE], tmp_path / "run4", AutoTokenizer.from_pretrained(tiny6_dir))
    both = td.import_tokens([head_out / train.TOKENS_FILE, out], tmp_path / "run5", AutoTokenizer.from_pretrained(tiny6_dir))
    assert (both["chat"], both["tasks"], both["tokens"]) == (2 * first["chat"], 2 * first["tasks"], 2 * first["tokens"])
    rows = td.read_jsonl(tmp_path / "run5" / "answers.jsonl")
    assert [r["id"] for r in rows] == list(range(len(rows))) and rows[0]["answer_ids"] == rows[first["chat"]]["answer_ids"]
    with pytest.raises(ValueError, match="needs answers.jsonl"):
        td.import_tokens([tmp_path / "run3"], tmp_path / "run6", None)
    # a held-out file's prompts get no features: not trained on, not in the run's own split
    td.select_tokens(head_out / train.TOKENS_FILE, tmp_path / "held.npz", [0])
    held_prompt = td.read_jsonl(tmp_path / "run4" / "answers.jsonl")[0]["prompt_ids"]
    out7 = tmp_path / "run7"
    assert train.main(["--out", str(out7), "--model", tiny6_dir, "--dtype", "float32", "--device", "cpu",
                       "--threads", "1", "--arch", "eagle3", "--data", str(head_out / train.TOKENS_FILE),
                       "--until", "features", "--exclude-prompts", str(tmp_path / "held.npz")]) == 0
    kept = torch.load(out7 / "features.pt", weights_only=False)
    n_same = sum(r["prompt_ids"] == held_prompt for r in rows[: first["chat"]])
    assert len(kept["offsets"]) - 1 == first["chat"] + first["tasks"] - n_same >= 1
    assert json.loads((out7 / "stage_features.json").read_text())["excluded_sequences"] == n_same
    offs, starts = kept["offsets"].tolist(), kept["answer_start"].tolist()
    assert held_prompt not in [kept["tokens"][o: o + a].tolist() for o, a in zip(offs, starts)]


def test_eagle3_training_beats_a_random_head(tmp_path):
    """A few hundred steps on the tiny target's own greedy text: the trained EAGLE-3 head gets
    more drafts accepted on that text than the same head untrained."""
    from types import SimpleNamespace

    from conftest import make_tiny_llama
    from eagle2.decode import generate
    from eagle2.draft import EagleDrafter
    from eagle2.head import Eagle3Head, eagle3_feature_layers
    from eagle2.policies import Eagle2, Vanilla

    vocab = 64
    model = make_tiny_llama(vocab, seed=7, layers=6, init=0.1, eos=None)
    tgt = SimpleNamespace(model=model, config=model.config, device=torch.device("cpu"), eos_token_ids=[])
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(4, vocab, (5,), generator=g) for _ in range(6)]
    seqs = [torch.tensor(generate(model, p, Vanilla(), max_new_tokens=40).prompt_tokens +
                         generate(model, p, Vanilla(), max_new_tokens=40).tokens) for p in prompts]
    layers = eagle3_feature_layers(6)
    with torch.no_grad():
        outs = [model.model(input_ids=s[None], output_hidden_states=True) for s in seqs]
    data = train.FeatureData.__new__(train.FeatureData)
    data.tokens = torch.cat(seqs).int()
    data.feats = torch.cat([o.last_hidden_state[0] for o in outs])
    data.aux = torch.cat([torch.cat([o.hidden_states[i][0] for i in layers], -1) for o in outs])
    data.lengths = [len(s) for s in seqs]
    data.offsets = torch.tensor([0] + list(torch.tensor(data.lengths).cumsum(0)))
    data.answer_start = torch.full((len(seqs),), 5)
    args = train.resolve_arch_defaults(train.build_parser().parse_args(
        ["--out", str(tmp_path), "--arch", "eagle3", "--lr", "5e-3", "--batch-tokens", "512", "--eval-steps", "2",
         "--eval-every", "50", "--warmup-steps", "5", "--autocast", "off", "--train-vocab", "0", "--threads", "1"]))
    torch.manual_seed(0)
    r = train.train_head(tgt, data, list(range(6)), [0], args, ttt_steps=1, minutes=0, epochs=150, desc="tiny")
    trained = r["head"].eval()
    fresh = Eagle3Head.for_target(model.config, trained.draft_ids, target_model=model)
    accepted = {}
    for name, head in (("trained", trained), ("fresh", fresh)):
        drafter = EagleDrafter(head, model)
        accepted[name] = sum(generate(model, p, Eagle2(top_k=2, depth=4, total_tokens=8), drafter,
                                      max_new_tokens=40).origins.count("draft") for p in prompts)
    assert accepted["trained"] > 2 * accepted["fresh"] + 20, accepted


def test_select_tokens_keeps_chosen_sequences_with_every_field(tmp_path):
    """A share of a token file: the chosen sequences, in order, each with its own per-sequence fields."""
    import numpy as np

    run = tmp_path / "run"
    run.mkdir()
    chat = [{"prompt_ids": [1, 2], "answer_ids": [3, 4, 5], "temperature": 0.0, "finished": True},
            {"prompt_ids": [6], "answer_ids": [7], "temperature": 0.7, "finished": False}]
    tasks = [{"prompt_ids": [8, 9, 10], "answer_ids": [11, 12], "temperature": 1.0, "finished": True}]
    td.write_jsonl(run / "answers.jsonl", chat)
    td.write_jsonl(run / "tasks.jsonl", tasks)
    td.export_tokens(run, tmp_path / "all.npz")
    info = td.select_tokens(tmp_path / "all.npz", tmp_path / "share.npz", [2, 0])
    assert info == {"rows": 2, "of": 3, "tokens": 10, "path": str(tmp_path / "share.npz")}
    d = np.load(tmp_path / "share.npz")
    assert d["ids"].tolist() == [8, 9, 10, 11, 12, 1, 2, 3, 4, 5]
    assert d["offsets"].tolist() == [0, 5, 10]
    assert d["answer_start"].tolist() == [3, 2] and d["task"].tolist() == [1, 0]
    assert d["temperature"].tolist() == [1.0, 0.0] and d["finished"].tolist() == [True, True]
    assert str(d["schema"]) == str(np.load(tmp_path / "all.npz")["schema"])
    with pytest.raises(ValueError, match="indices"):
        td.select_tokens(tmp_path / "all.npz", tmp_path / "bad.npz", [3])
    with pytest.raises(ValueError, match="not a token file"):
        td.select_tokens(tmp_path / "missing.npz", tmp_path / "bad.npz", [0])


def test_featured_sequences_are_those_an_earlier_runs_features_hold(tmp_path):
    """The sequences of a token file that a features.pt already holds, matched by token ids cut at
    the runs' max_seq_len, so a round can copy every old feature; the script writes them as a share,
    or (--skip-featured-in) a share of the others, whose features a round computes."""
    import numpy as np

    run = tmp_path / "run"
    run.mkdir()
    chat = [{"prompt_ids": [1, 2], "answer_ids": [3, 4, 5], "temperature": 0.0, "finished": True},
            {"prompt_ids": [6], "answer_ids": [7], "temperature": 0.7, "finished": False},
            {"prompt_ids": [1, 2], "answer_ids": [3, 9], "temperature": 0.0, "finished": True}]
    td.write_jsonl(run / "answers.jsonl", chat)
    td.write_jsonl(run / "tasks.jsonl", [])
    td.export_tokens(run, tmp_path / "all.npz")
    held = [[6, 7], [1, 2, 3, 4]]  # the second sequence, and the first cut at 4 tokens
    old = tmp_path / "old"
    old.mkdir()
    torch.save({"tokens": torch.tensor([t for s in held for t in s], dtype=torch.int32),
                "offsets": torch.tensor([0, 2, 6])}, old / "features.pt")
    assert td.featured_sequences(tmp_path / "all.npz", [old], max_seq_len=4) == [0, 1]
    assert td.featured_sequences(tmp_path / "all.npz", [old / "features.pt"]) == [1]  # uncut, [1..5] differs
    with pytest.raises(ValueError, match="does not exist"):
        td.featured_sequences(tmp_path / "all.npz", [tmp_path / "nowhere"])
    sample = lambda *args: run_script("sample_tokens.py", tmp_path / "all.npz", *args)
    res = sample(tmp_path / "share.npz", "--featured-in", old, "--max-seq-len", "4")
    assert res.returncode == 0, res.stderr
    assert np.load(tmp_path / "share.npz")["ids"].tolist() == [1, 2, 3, 4, 5, 6, 7]
    res = sample(tmp_path / "none.npz", "--featured-in", tmp_path)
    assert res.returncode == 2 and "does not exist" in res.stderr.splitlines()[-1]
    # --skip-featured-in: a share drawn only from the sequences the runs do not hold
    res = sample(tmp_path / "fresh.npz", "--frac", "1", "--skip-featured-in", old, "--max-seq-len", "4")
    assert res.returncode == 0, res.stderr
    assert np.load(tmp_path / "fresh.npz")["ids"].tolist() == [1, 2, 3, 9]
    res = sample(tmp_path / "fresh.npz", "--frac", "0.5", "--skip-featured-in", old)
    assert res.returncode == 0, res.stderr
    assert len(np.load(tmp_path / "fresh.npz")["offsets"]) - 1 == 1  # half of the two sequences [1..5] and [1, 2, 3, 9]
    for bad, message in ((["--featured-in", str(old), "--skip-featured-in", str(old)], "goes with --frac"),
                         (["--frac", "1", "--skip-featured-in", str(old), str(tmp_path / "also"), "--max-seq-len", "4"],
                          "does not exist")):
        res = sample(tmp_path / "bad.npz", *bad)
        assert res.returncode == 2 and message in res.stderr.splitlines()[-1], res.stderr


def test_sample_tokens_task_frac_draws_tasks_at_their_own_share(tmp_path):
    """--task-frac leans a share toward chats (or tasks): chats are drawn at --frac, tasks at
    --task-frac, and a pair that keeps nothing, or --task-frac without --frac, is a one-line error."""
    import numpy as np

    run = tmp_path / "run"
    run.mkdir()
    row = lambda i: {"prompt_ids": [i], "answer_ids": [i + 100], "temperature": 0.0, "finished": True}
    td.write_jsonl(run / "answers.jsonl", [row(i) for i in range(6)])  # six chats
    td.write_jsonl(run / "tasks.jsonl", [row(i) for i in range(10, 14)])  # four tasks
    td.export_tokens(run, tmp_path / "all.npz")
    sample = lambda *args: run_script("sample_tokens.py", tmp_path / "all.npz", *args)
    for frac, task_frac, chats, tasks in (("0.5", "0", 3, 0), ("1", "0.25", 6, 1), ("0.5", "1", 3, 4)):
        res = sample(tmp_path / "share.npz", "--frac", frac, "--task-frac", task_frac, "--seed", "3")
        assert res.returncode == 0, res.stderr
        share = np.load(tmp_path / "share.npz")
        assert (int((share["task"] == 0).sum()), int(share["task"].sum())) == (chats, tasks)
        assert f"({tasks} task)" in res.stdout
    for bad, message in ((["--frac", "0.01", "--task-frac", "0"], "keep none"),
                         (["--featured-in", str(run), "--task-frac", "0.5"], "goes with --frac"),
                         (["--frac", "1", "--task-frac", "2"], "must be in [0, 1]")):
        res = sample(tmp_path / "bad.npz", *bad)
        assert res.returncode == 2 and message in res.stderr.splitlines()[-1], res.stderr


def test_merge_tokens_concatenates_sources_leaves_out_held_out_sequences_and_counts_answers(tmp_path):
    """The all-data merge: token files and run folders concatenate (chat rows first, then tasks),
    a sequence whose prompt the held-out file holds stays out (whatever its answer), and the answer
    counts are those of the merged answers."""
    import numpy as np

    old, new, held = tmp_path / "old", tmp_path / "new", tmp_path / "held"
    rows = {
        old: ([{"prompt_ids": [1, 2], "answer_ids": [3, 4, 5], "temperature": 0.0, "finished": True}],
              [{"prompt_ids": [8, 9], "answer_ids": [11], "temperature": 1.0, "finished": False}]),
        new: ([{"prompt_ids": [6], "answer_ids": [7, 7], "temperature": 0.7, "finished": True},
               {"prompt_ids": [20], "answer_ids": [21], "temperature": 0.0, "finished": True}], []),
        held: ([{"prompt_ids": [20], "answer_ids": [22, 23], "temperature": 1.0, "finished": True}], []),
    }
    for run, (chat, tasks) in rows.items():
        run.mkdir()
        td.write_jsonl(run / "answers.jsonl", chat)
        td.write_jsonl(run / "tasks.jsonl", tasks)
    td.export_tokens(old, tmp_path / "old.npz")
    td.export_tokens(held, tmp_path / "held.npz")
    info = td.merge_tokens([tmp_path / "old.npz", new], tmp_path / "all.npz", exclude=[tmp_path / "held.npz"])
    assert (info["rows"], info["chat"], info["tasks"], info["excluded"], info["duplicates"]) == (3, 2, 1, 1, 0)
    assert info["answer_tokens"] == 6
    d = np.load(tmp_path / "all.npz")
    assert d["ids"].tolist() == [1, 2, 3, 4, 5, 6, 7, 7, 8, 9, 11]
    assert d["offsets"].tolist() == [0, 5, 8, 11] and d["answer_start"].tolist() == [2, 1, 2]
    assert d["task"].tolist() == [0, 0, 1] and d["finished"].tolist() == [True, True, False]
    assert d["temperature"].tolist() == pytest.approx([0.0, 0.7, 1.0])
    assert td.answer_counts(tmp_path / "all.npz") == {3: 1, 4: 1, 5: 1, 7: 2, 11: 1}
    # merging the file with itself keeps every sequence and reports the copies
    again = td.merge_tokens([tmp_path / "all.npz", tmp_path / "all.npz"], tmp_path / "twice.npz")
    assert (again["rows"], again["duplicates"]) == (6, 3)
    with pytest.raises(ValueError, match="no sequences"):
        td.merge_tokens([tmp_path / "held.npz"], tmp_path / "none.npz", exclude=[tmp_path / "held.npz"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="needs answers.jsonl"):
        td.merge_tokens([tmp_path / "empty"], tmp_path / "bad.npz")


def test_merge_tokens_script_writes_the_file_and_counts_and_rejects_bad_sources(tmp_path):
    """scripts/merge_tokens.py: the merged file and its counts file in one command; a bad source
    is a one-line error with exit code 2."""
    from eagle2.vocab import load_counts

    run = tmp_path / "run"
    run.mkdir()
    td.write_jsonl(run / "answers.jsonl", [{"prompt_ids": [1], "answer_ids": [2, 2, 3], "temperature": 0.0}])
    ok = run_script("merge_tokens.py", run, "--dest", tmp_path / "all.npz", "--counts", tmp_path / "counts.json")
    assert ok.returncode == 0, ok.stderr
    assert "1 sequences (1 chat, 0 task)" in ok.stdout
    assert load_counts(tmp_path / "counts.json") == {2: 2, 3: 1}
    bad = run_script("merge_tokens.py", tmp_path / "nothing.npz", "--dest", tmp_path / "x.npz")
    assert bad.returncode == 2 and "not a training-token file" in bad.stderr and "Traceback" not in bad.stderr


def test_a_bad_exclude_prompts_file_stops_the_run_before_any_stage(tmp_path, capsys):
    """--exclude-prompts is read first: a wrong path is a usage error (exit 2), not a failure after
    the prompts and answers stages have run."""
    with pytest.raises(SystemExit) as e:
        train.main(["--out", str(tmp_path / "run"), "--exclude-prompts", str(tmp_path / "none.npz")])
    assert e.value.code == 2
    assert "--exclude-prompts" in capsys.readouterr().err and not (tmp_path / "run").exists()
