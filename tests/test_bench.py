"""The benchmark CLI end to end on a tiny random Llama + random EAGLE head (seconds)."""

from __future__ import annotations

import csv
import json

import pytest

from eagle2 import bench
from eagle2.bench import BenchError, SUMMARY_KEYS, aggregate, load_questions, parse_methods

METHODS = "hf,vanilla,pld,chain,eagle1,eagle2,eagle2@total=6@vocab=16"


@pytest.fixture(scope="module")
def head_dir(tiny_dir, tmp_path_factory):
    import torch
    from transformers import AutoConfig

    from eagle2.head import EagleHead

    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("tiny-head")
    EagleHead.for_target(AutoConfig.from_pretrained(tiny_dir)).save_pretrained(folder)
    return str(folder)


@pytest.fixture()
def questions(tmp_path):
    path = tmp_path / "q.jsonl"
    rows = [{"question_id": 81, "category": "writing", "turns": ["write a poem about the cat", "make it short"]},
            {"question_id": 82, "category": "math", "turns": ["what is one and two ?"]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture()
def counts_file(tmp_path):
    from eagle2.vocab import save_counts

    path = tmp_path / "counts.json"
    save_counts({i: 100 - i for i in range(4, 40)}, path)  # ids 4..19 are the 16 most frequent
    return str(path)


def test_bench_end_to_end(tiny_dir, head_dir, questions, counts_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EAGLE2_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    rc = bench.main(["--questions", questions, "--model", tiny_dir, "--head", head_dir, "--dtype", "float32",
                     "--device", "cpu", "--methods", METHODS, "--max-new-tokens", "12", "--out", str(out),
                     "--vocab-counts", counts_file, "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "eagle2@total=6@vocab=16" in printed and "x hf" in printed
    names = parse_methods(METHODS)

    lines = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * len(names)
    for rec in lines:
        assert {"question_id", "category", "method", "turns", "turn_stats"} <= set(rec)
        assert len(rec["turns"]) == len(rec["turn_stats"]) == (2 if rec["question_id"] == 81 else 1)
        for s in rec["turn_stats"]:
            assert {"new_tokens", "seconds", "tokens_per_s", "tau", "tokens", "identical_to_vanilla"} <= set(s)
            assert 1 <= s["new_tokens"] <= 12

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= {"methods", "config", "machine", "by_category"}
    assert list(summary["methods"]) == [n.name for n in names]
    for name, m in summary["methods"].items():
        assert set(SUMMARY_KEYS) <= set(m), name
        assert m["new_tokens"] > 0 and m["seconds"] > 0
        assert m["tokens_per_s"] == pytest.approx(m["new_tokens"] / m["seconds"], rel=1e-3)
    ms = summary["methods"]
    assert ms["hf"]["speedup_vs_hf"] == pytest.approx(1.0) and ms["vanilla"]["speedup_vs_vanilla"] == pytest.approx(1.0)
    assert ms["vanilla"]["tau"] == pytest.approx(1.0) and ms["hf"]["tau"] == pytest.approx(1.0)
    assert ms["vanilla"]["median_speedup_vs_vanilla"] == pytest.approx(1.0) and ms["pld"]["median_speedup_vs_hf"] > 0
    for name in ("vanilla", "chain", "eagle1", "eagle2", "eagle2@total=6@vocab=16"):  # greedy is lossless
        assert ms[name]["identical_to_vanilla"] == pytest.approx(1.0), name
    assert set(summary["by_category"]) == {"writing", "math"}
    cfg = summary["config"]
    assert cfg["methods"]["eagle2"]["total_tokens"] == "auto"
    assert cfg["methods"]["eagle2@total=6@vocab=16"]["total_tokens"] == 6
    assert cfg["methods"]["eagle2@total=6@vocab=16"]["draft_vocab"] == 17  # 16 + the EOS token
    assert cfg["latency"]["sizes"][0] == 1 and len(cfg["latency"]["seconds"]) == len(cfg["latency"]["sizes"])
    assert {"cpu", "torch", "torch_threads"} <= set(summary["machine"])
    assert summary["machine"]["precision_probe_ms"] is None  # float32 was asked for: no precision probe ran

    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == [n.name for n in names]
    assert set(SUMMARY_KEYS) <= set(rows[0])
    html = (out / "report.html").read_text()
    assert "plotly" in html.lower() and "Speedup" in html and "by category" in html


@pytest.mark.parametrize("argv, fragment", [
    (["--methods", "hf,warp"], "unknown method 'warp'"),
    (["--limit", "0"], "--limit"),
    (["--total-tokens", "many"], "--total-tokens"),
    (["--methods", "eagle2@total=x"], "integer"),
    (["--methods", "hf@vocab=3"], "takes no options"),
    (["--methods", "eagle2@dyn=2"], "0 or 1"),
    (["--category", "poetry"], "no questions of category 'poetry'"),
    (["--temperature", "-1"], "--temperature"),
])
def test_bad_arguments_exit_2_with_one_line(argv, fragment, questions, tmp_path, capsys):
    rc = bench.main(["--questions", questions, "--out", str(tmp_path / "o"), *argv])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err and err.startswith("eagle2 bench: error:")


def test_missing_questions_file(tmp_path, capsys):
    assert bench.main(["--questions", str(tmp_path / "none.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_load_questions_formats(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text('{"question_id": 1, "category": "a", "turns": ["x", "y"]}\n\n'
                 '{"question_id": 2, "category": "b", "turns": "z"}\n'
                 '{"prompt": "w"}\n')
    qs = load_questions(p)
    assert [q.turns for q in qs] == [["x", "y"], ["z"], ["w"]]
    assert qs[2].category == "all" and qs[2].id == 4  # line number when there is no id
    assert [q.turns for q in load_questions(p, first_turn_only=True)][0] == ["x"]
    assert [q.id for q in load_questions(p, limit=1, category="b")] == [2]
    p.write_text('{"question_id": 1, "turns": []}\n')
    with pytest.raises(BenchError, match="turns"):
        load_questions(p)
    p.write_text("not json\n")
    with pytest.raises(BenchError, match="JSON"):
        load_questions(p)


def test_aggregate_is_total_over_total():
    rows = [{"new_tokens": 10, "seconds": 1.0, "target_forwards": 10, "cycles": 0, "cycle_tokens": 0,
             "mean_tree_size": None, "draft_s": 0, "verify_s": 0, "prefill_s": 0, "identical_to_vanilla": True},
            {"new_tokens": 90, "seconds": 9.0 / 2, "target_forwards": 30, "cycles": 29, "cycle_tokens": 89,
             "mean_tree_size": 4.0, "draft_s": 1, "verify_s": 2, "prefill_s": 0, "identical_to_vanilla": False}]
    a = aggregate(rows)
    assert a["tokens_per_s"] == pytest.approx(100 / 5.5)  # not the mean of 10 and 20
    assert a["tau"] == pytest.approx(100 / 40)
    assert a["identical_to_vanilla"] == pytest.approx(0.5)
    assert a["mean_accepted"] == pytest.approx(89 / 29)


def test_parse_methods():
    specs = parse_methods("hf, eagle2@total=auto@vocab=0,eagle2,eagle2@dyn=0@cal=0")
    assert specs[3].options == {"dyn": 0, "cal": 0}
    assert [s.name for s in specs][:3] == ["hf", "eagle2@total=auto@vocab=0", "eagle2"]
    assert specs[1].options == {"total": "auto", "vocab": 0} and specs[1].drafting
    with pytest.raises(BenchError, match="twice"):
        parse_methods("hf,hf")
    with pytest.raises(BenchError, match="no methods"):
        parse_methods(" , ")


def test_calibration_flag_tallies_every_drafted_node(tiny_dir, head_dir, questions, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EAGLE2_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    rc = bench.main(["--questions", questions, "--model", tiny_dir, "--head", head_dir, "--dtype", "float32",
                     "--device", "cpu", "--methods", "vanilla,eagle2@total=6", "--max-new-tokens", "10",
                     "--out", str(out), "--no-progress", "--calibration"])
    assert rc == 0
    assert "draft value vs acceptance" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    cal = summary["calibration"]
    assert list(cal) == ["eagle2@total=6"]  # vanilla drafts nothing
    c = cal["eagle2@total=6"]
    cycles = summary["methods"]["eagle2@total=6"]["new_tokens"]  # ≥ one verified tree per 1+ tokens
    assert c["nodes"] >= 6 and sum(r["n"] for r in c["by_value"]) == c["nodes"]
    assert 0 < sum(r["n"] for r in c["by_confidence"]) <= c["nodes"] and cycles > 0
    for r in c["by_value"] + c["by_confidence"]:
        assert r["lo"] <= r["mean"] <= r["hi"] and 0 <= r["rate"] <= 1
    assert "Calibration" in (out / "report.html").read_text()


def test_calibration_table_bins_and_rates():
    from eagle2.calibration import NodeOutcome, format_table, table

    nodes = [NodeOutcome(0.95, 0.95, "accepted"), NodeOutcome(0.92, 0.92, "rejected"),
             NodeOutcome(0.03, 0.6, "unreached"), NodeOutcome(0.04, 0.04, "rejected"),
             NodeOutcome(1.0, 1.0, "accepted")]
    by_value = table(nodes, "value")
    assert [(r["lo"], r["n"], r["rate"]) for r in by_value] == [(0.02, 2, 0.0), (0.9, 3, pytest.approx(2 / 3))]
    by_conf = table(nodes, "confidence")  # the unreached node was never tested
    assert sum(r["n"] for r in by_conf) == 4 and not any(r["lo"] == 0.5 for r in by_conf)
    assert "| 0.90–1.00 | 3 |" in format_table(by_value)
    with pytest.raises(ValueError, match="by must be"):
        table(nodes, "depth")
