"""Reduced draft vocabulary: same ids, cheaper output layer, decoding still exact."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

import eagle2
from eagle2.draft import ReducedVocabDrafter
from eagle2.vocab import (ReducedLMHead, count_answers, count_generations, counts_for,
                          coverage, load_counts, main, save_counts, top_tokens)


@pytest.fixture(scope="module")
def head(tiny_target):
    from eagle2.head import EagleHead

    torch.manual_seed(5)
    return EagleHead.for_target(tiny_target.model.config)


def test_reduced_lm_head_scatters_into_full_vocabulary(tiny_target):
    full = tiny_target.model.lm_head
    keep = [40, 3, 7, 7, 90]
    small = ReducedLMHead(full, keep)
    assert small.token_ids.tolist() == [3, 7, 40, 90]
    h = torch.randn(2, 5, full.weight.shape[1])
    out, ref = small(h), full(h)
    assert out.shape == ref.shape
    torch.testing.assert_close(out[..., [3, 7, 40, 90]], ref[..., [3, 7, 40, 90]])
    others = torch.ones(ref.shape[-1], dtype=torch.bool)
    others[[3, 7, 40, 90]] = False
    assert bool((out[..., others] == torch.finfo(out.dtype).min).all())
    assert torch.log_softmax(out.float(), -1)[..., others].exp().max() == 0
    with pytest.raises(ValueError):
        ReducedLMHead(full, [10_000])
    with pytest.raises(ValueError):
        ReducedLMHead(full, [])


@pytest.mark.parametrize("policy", ["eagle2", "chain", "eagle1"])
def test_reduced_vocabulary_is_lossless(tiny_target, head, policy):
    model, tok = tiny_target.model, tiny_target.tokenizer
    keep = list(range(3, 40))  # most of the vocabulary is missing
    drafter = ReducedVocabDrafter(head, model, keep)
    assert drafter.draft_vocab == len(keep) and drafter.name.endswith("+vocab37")
    rec = eagle2.TraceRecorder()
    for prompt in ("hello world the cat", "why is the tree fast ?"):
        ids = tok(prompt)["input_ids"]
        ref = eagle2.generate(model, ids, eagle2.Vanilla(), None, max_new_tokens=30)
        out = eagle2.generate(model, ids, eagle2.make_policy(policy), drafter, max_new_tokens=30,
                              observers=[rec] if prompt.startswith("hello") else [])
        assert out.tokens == ref.tokens
    drafted = {c.token for cyc in rec.trace.cycles for e in cyc.expansions for c in e.candidates}
    assert drafted and drafted <= set(keep)


def test_reduced_vocabulary_accepts_when_the_target_stays_inside(tiny_target, head):
    """A vocabulary that holds everything the target says loses no acceptance to the cut."""
    model, tok = tiny_target.model, tiny_target.tokenizer
    ids = tok("the dog and the cat")["input_ids"]
    ref = eagle2.generate(model, ids, eagle2.Vanilla(), None, max_new_tokens=24)
    drafter = ReducedVocabDrafter(head, model, sorted(set(ref.tokens)))
    out = eagle2.generate(model, ids, eagle2.make_policy("chain"), drafter, max_new_tokens=24)
    assert out.tokens == ref.tokens
    if len(set(ref.tokens)) == 1:  # the tiny random model repeats one token: every draft is right
        assert out.tau > 4.0  # chain depth 5: 5 drafts + 1 bonus per cycle


def test_top_tokens_and_coverage():
    counts = Counter({5: 10, 6: 10, 7: 3, 8: 0, 9: 1})
    assert top_tokens(counts, 2) == [5, 6]
    assert top_tokens(counts, 3, always=[1]) == [1, 5, 6, 7]
    assert top_tokens(counts, 10) == [5, 6, 7, 9]  # never a token that was not seen ...
    assert top_tokens(counts, 6, vocab_size=12) == [0, 1, 5, 6, 7, 9]  # ... unless asked to fill up by id
    assert top_tokens(counts, 2, vocab_size=12) == [5, 6]
    assert coverage(counts, [5, 6]) == pytest.approx(20 / 24)
    with pytest.raises(ValueError):
        top_tokens(counts, 0)


def test_counts_files(tmp_path):
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"answer_ids": [1, 2, 2]}) + "\n" + json.dumps({"answer_ids": [2, 9]}) + "\n")
    counts = count_answers(answers)
    assert counts == Counter({2: 3, 1: 1, 9: 1})
    assert load_counts(answers) == counts
    save_counts(counts, tmp_path / "c.json", {"source": "test"})
    assert load_counts(tmp_path / "c.json") == counts
    (tmp_path / "bad.json").write_text('{"schema": "x"}')
    with pytest.raises(ValueError, match="not a token counts file"):
        load_counts(tmp_path / "bad.json")
    assert main(["--from-answers", str(answers), "--out", str(tmp_path / "m.json"), "--sizes", "1,2"]) == 0
    assert load_counts(tmp_path / "m.json") == counts
    tasks = tmp_path / "tasks.jsonl"  # a run's task answers count too, summed with the chat answers
    tasks.write_text(json.dumps({"answer_ids": [9, 7]}) + "\n")
    assert main(["--from-answers", str(answers), str(tasks), "--out", str(tmp_path / "both.json"), "--sizes", "1"]) == 0
    assert load_counts(tmp_path / "both.json") == counts + Counter({9: 1, 7: 1})


def test_counts_from_the_targets_own_answers(tiny_target, tmp_path, monkeypatch):
    counts = count_generations(tiny_target, prompts=["hello world", "write a poem"], max_new_tokens=5, batch=2)
    assert 2 <= sum(counts.values()) <= 10
    monkeypatch.setenv("EAGLE2_CACHE", str(tmp_path))
    import eagle2.vocab as v

    monkeypatch.setattr(v, "PROMPTS", ("hello world",))
    monkeypatch.setattr(v, "count_generations",
                        lambda target, progress=None: count_generations(target, ("hello world",), 4))
    first, where = counts_for(tiny_target)
    assert where.startswith(str(tmp_path)) and sum(first.values()) >= 1
    again, where2 = counts_for(tiny_target)
    assert again == first and where2 == where


def test_auto_draft_vocabulary_is_measured_cached_and_lossless(tiny_target, head, tmp_path, monkeypatch):
    """draft_vocab="auto": the reduced vocabulary when the head ships token counts and a draft
    step with it is cheap enough (measured once, cached); decoding stays exact either way."""
    from eagle2 import vocab
    from eagle2.draft import EagleDrafter, load_drafter

    monkeypatch.setenv("EAGLE2_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(vocab, "AUTO_VOCAB_SIZE", 30)
    folder = tmp_path / "head"
    head.save_pretrained(folder)
    assert type(load_drafter(tiny_target, str(folder), draft_vocab="auto")) is EagleDrafter  # no counts: full
    save_counts(Counter({t: 100 - t for t in range(3, 60)}), folder / vocab.COUNTS_FILE)

    monkeypatch.setattr(vocab, "PAYS_BELOW", 1e9)  # any saving pays
    drafter = load_drafter(tiny_target, str(folder), draft_vocab="auto")
    assert isinstance(drafter, ReducedVocabDrafter) and drafter.draft_vocab == 30  # the 30 most frequent (EOS among them)
    (choice,) = (tmp_path / "cache" / "draft-vocab").glob("*.json")
    raw = json.loads(choice.read_text())
    assert raw["pays"] and raw["full_step_s"] > 0 and raw["reduced_step_s"] > 0
    monkeypatch.setattr(vocab, "PAYS_BELOW", 0.0)  # the cached decision stands
    assert isinstance(load_drafter(tiny_target, str(folder), draft_vocab="auto"), ReducedVocabDrafter)
    choice.unlink()  # measured again: nothing pays now
    assert type(load_drafter(tiny_target, str(folder), draft_vocab="auto")) is EagleDrafter

    ids = tiny_target.tokenizer("hello world the cat")["input_ids"]
    ref = eagle2.generate(tiny_target.model, ids, eagle2.Vanilla(), None, max_new_tokens=30)
    out = eagle2.generate(tiny_target.model, ids, eagle2.make_policy("eagle2"), drafter, max_new_tokens=30)
    assert out.tokens == ref.tokens
    assert isinstance(load_drafter(tiny_target, str(folder), draft_vocab=12), ReducedVocabDrafter)
