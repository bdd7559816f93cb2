"""Prompt lookup merged into the EAGLE-2 tree: the n-gram index, the merge, the rates, exactness."""

from __future__ import annotations

import math

import pytest
import torch

import eagle2
from eagle2.autotree import AutoEagle2, LatencyModel, drafted_outcome
from eagle2.lookup import LookupRates, NgramIndex, PromptLookup, chain_log_confs, merge_chain
from eagle2.tree import CandidatePool


def test_index_takes_the_newest_earlier_occurrence_of_the_longest_suffix():
    ix = NgramIndex(3)
    ix.reset([5, 1, 2, 9, 1, 2, 3, 7, 1, 2])
    # suffix (1, 2) occurred twice before; the newest one was followed by 3, 7, 1, 2
    assert ix.propose(3) == (2, [3, 7, 1])
    ix.extend([3])  # suffix (1, 2, 3) occurred once: followed by 7, 1, 2, 3
    assert ix.propose(10) == (3, [7, 1, 2, 3])
    ix.extend([8])  # 8 never occurred before
    assert ix.propose(5) == (0, [])
    with pytest.raises(ValueError):
        NgramIndex(0)


def test_index_falls_back_to_shorter_ngrams():
    ix = NgramIndex(3)
    ix.reset([4, 6, 1, 2, 5, 6])
    assert ix.propose(2) == (1, [1, 2])  # (2, 5, 6) and (5, 6) are new; (6,) was followed by 1, 2


def test_index_continues_drafted_tokens():
    ix = NgramIndex(3)
    ix.reset([10, 11, 12, 13, 14, 50, 60])
    assert ix.propose(3) == (0, [])  # the context's own suffix (50, 60) never occurred before
    assert ix.propose(3, tail=[11, 12]) == (2, [13, 14, 50])  # drafted 11, 12: the context goes on with 13
    assert ix.propose(2, tail=[60, 10]) == (1, [11, 12])  # (50, 60, 10), (60, 10) are new; (10,) is not


def test_anchored_chains_hang_below_drafted_nodes_and_learn_only_when_reached():
    look = PromptLookup(max_len=4, max_n=3, anchors=2)
    look.start([7, 1, 2, 3, 4, 9])
    assert look.propose_root(1.0) == []  # 9 never occurred before
    pool = CandidatePool()
    pool.add([-1, -1], [1, 5], [math.log(0.6), math.log(0.3)])  # the head drafts 1 (and 5)
    look.merge(pool, 1.0)
    (chain,) = [c for c in look.chains if c.anchor == 0]  # 9, 1 -> nothing; (1,) was followed by 2, 3, 4, 9
    assert chain.tokens == [2, 3, 4, 9] and [pool.parents.tolist()[i] for i in chain.ids] == [0] + chain.ids[:-1]
    assert all(pool.sources()[i] == "lookup" for i in chain.ids)
    look.mark_kept([0, chain.ids[0], chain.ids[1]])
    look.learn([5])  # the target took 5, not 1: the anchor was not reached, nothing is learnt
    assert sum(map(sum, look.rates.tested)) == 0
    look.merge(pool, 1.0)
    look.mark_kept([0, chain.ids[0], chain.ids[1]])
    look.learn([1, 2, 8])  # anchor 1 accepted, copied 2 accepted, copied 3 rejected
    n = chain.n
    assert look.rates.tested[n][:3] == [1, 1, 0] and look.rates.acc[n][:3] == [1, 0, 0]


def test_merge_shares_nodes_and_lifts_their_subtrees():
    pool = CandidatePool()
    pool.add([-1, -1], [4, 8], [math.log(0.5), math.log(0.3)])
    pool.add([0], [5], [math.log(0.2)])  # 4 -> 5, a child the head proposed too
    pool.add([2], [6], [math.log(0.9)])  # 4 -> 5 -> 6, only the head
    ids = merge_chain(pool, [4, 5, 9], [math.log(0.8), math.log(0.1), math.log(0.7)])
    assert ids == [0, 2, 4]  # 4 and 5 shared, 9 new under 5
    assert pool.tokens.tolist() == [4, 8, 5, 6, 9] and pool.parents.tolist() == [-1, -1, 0, 2, 2]
    v = [math.exp(x) for x in pool.log_value.tolist()]
    assert v[0] == pytest.approx(0.8)  # max(0.5, 0.8)
    assert pool.sources() == ["both", "draft", "draft", "draft", "lookup"]  # 4 raised, 5 kept the head's confidence
    assert v[2] == pytest.approx(0.8 * 0.2)  # max(0.2, 0.1) under the lifted parent
    assert v[3] == pytest.approx(0.8 * 0.2 * 0.9)  # the head's grandchild is lifted too
    assert v[4] == pytest.approx(0.8 * 0.2 * 0.7)
    assert v[1] == pytest.approx(0.3)
    lv = pool.log_value.tolist()
    for i, p in enumerate(pool.parents.tolist()):  # still a tree whose values never grow along a path
        assert p < i and (p < 0 or lv[i] <= lv[p] + 1e-6)
    tree = pool.rerank(0, 3)
    assert tree.candidate_ids[1:] == [0, 1, 2] and tree.tokens.tolist() == [0, 4, 8, 5]


def test_rates_count_only_tested_tokens():
    r = LookupRates(max_n=2, max_len=4, initial=0.5, strength=4.0)
    assert r.rate(1, 0) == pytest.approx(0.5)
    r.record(1, [7, 8, 9], kept=[True, True, True], accepted=[7, 3])  # 7 accepted, 8 rejected, 9 untested
    assert (r.tested[1][:3], r.acc[1][:3]) == ([1, 1, 0], [1, 0, 0])
    r.record(1, [7, 8], kept=[True, False], accepted=[7, 8])  # 8 not in the tree: not tested
    assert (r.tested[1][:2], r.acc[1][:2]) == ([2, 1], [2, 0])
    assert r.rate(1, 0) == pytest.approx((2 + 4 * 0.5) / (2 + 4))
    r.new_generation()  # this generation's counts become the prior
    assert r.tested[1][0] == 0 and r.rate(1, 0) == pytest.approx((2 + 0.5) / (2 + 1))
    confs = chain_log_confs(r, 1, 3, scale=0.5)
    assert all(c <= 0 for c in confs) and confs[0] == 0.0  # rate / scale > 1 is capped at certainty


def flat():
    return LatencyModel([1, 64], [0.01, 0.01])


@pytest.fixture(scope="module")
def drafter(tiny_target):
    from eagle2.draft import EagleDrafter
    from eagle2.head import EagleHead

    torch.manual_seed(3)
    return EagleDrafter(EagleHead.for_target(tiny_target.model.config), tiny_target.model)


def test_lookup_is_lossless_and_copies_repeats(tiny_target, drafter):
    """A random tiny model loops, so copies get accepted; the output is vanilla's, token for token."""
    ids = tiny_target.tokenizer("the cat and the dog and the cat and the dog")["input_ids"]
    ref = eagle2.generate(tiny_target.model, ids, eagle2.Vanilla(), None, max_new_tokens=60)
    plain = AutoEagle2(flat(), top_k=2, depth=3)
    without = eagle2.generate(tiny_target.model, ids, plain, drafter, max_new_tokens=60)
    p = AutoEagle2(flat(), top_k=2, depth=3, lookup=8)
    rec = eagle2.TraceRecorder()
    out = eagle2.generate(tiny_target.model, ids, p, drafter, max_new_tokens=60, observers=[rec])
    assert out.tokens == ref.tokens == without.tokens
    assert p.describe()["lookup"] == 8
    assert sum(sum(row) for row in p.copier.rates.acc) > 0  # copied tokens were accepted
    assert out.tau > without.tau
    assert 0.05 < p.value_scale <= 2.0 and len(p.accept) == len(out.cycles)
    depths = [n.depth for c in rec.trace.cycles for n in c.verification.nodes]
    assert max(depths) > 3  # deeper than the head drafts: a copied chain


def test_lookup_sampling_runs_and_bad_values_are_refused(tiny_target, drafter):
    ids = tiny_target.tokenizer("the cat and the dog")["input_ids"]
    p = AutoEagle2(flat(), top_k=2, depth=3, lookup=6)
    out = eagle2.generate(tiny_target.model, ids, p, drafter, max_new_tokens=30, temperature=1.0, seed=1)
    assert len(out.tokens) == 30
    assert out.policy["drafts"] == "sampled"  # copies join drawn drafts (exactness: tests/test_verify.py)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="lookup"):
            AutoEagle2(flat(), lookup=bad)


def test_sampled_drafts_with_lookup_keep_the_drawn_choice_and_add_copies(tiny_target, drafter):
    """At T > 0 the drawn nodes are kept by their own values (the same ones as without lookup),
    the copies hang below them or the root as fixed candidates, tried after the drawn children,
    and the trace marks them."""
    ids = tiny_target.tokenizer("the cat and the dog and the cat and the dog")["input_ids"]
    # a CPU-like verify cost (a jump from one token to two), so that some drawn nodes are dropped
    p = AutoEagle2(LatencyModel([1, 2, 4, 64], [0.010, 0.013, 0.0135, 0.05]), top_k=2, depth=4, lookup=8,
                   dynamic_depth=False)
    rec = eagle2.TraceRecorder()
    eagle2.generate(tiny_target.model, ids, p, drafter, max_new_tokens=40, temperature=1.0, seed=3, observers=[rec])
    cycles = rec.trace.cycles
    with_copies = [c for c in cycles if any(e.candidates and e.candidates[0].source == "lookup" for e in c.expansions)]
    assert with_copies, "no cycle copied from the context"
    checked = []
    for c in with_copies:
        drawn = [x for e in c.expansions for x in e.candidates if x.source == "draft"]
        assert all(x.source in ("draft", "lookup") for e in c.expansions for x in e.candidates)  # nothing raised
        kept = set(c.rerank.kept)
        kept_drawn = [x for x in drawn if x.id in kept]
        dropped_drawn = [x for x in drawn if x.id not in kept]
        checked.append((kept_drawn, dropped_drawn))
        if kept_drawn and dropped_drawn:  # the drawn choice is by value alone
            assert min(x.value for x in kept_drawn) >= max(x.value for x in dropped_drawn) - 1e-6
            assert c.rerank.cutoff_value == pytest.approx(min(x.value for x in kept_drawn), rel=1e-5)
    copied_ids = {(c.index, x.id) for c in cycles for e in c.expansions for x in e.candidates if x.source == "lookup"}
    assert any((c.index, n.candidate) in copied_ids for c in cycles for n in c.verification.nodes)
    assert sum(bool(kept_drawn and dropped_drawn) for kept_drawn, dropped_drawn in checked) > 0
    from viz.data import cycle_view
    from viz.tree_figure import stage_caption, stage_names

    view = cycle_view(rec.trace, with_copies[0].index)
    names = stage_names(view)
    assert "drawn nodes were chosen first" in stage_caption(view, names.index("Copy"))
    assert "copied ones ↪ join them" in stage_caption(view, names.index("Rerank"))


def test_copied_nodes_are_marked_in_the_trace_and_the_figure(tiny_target, drafter):
    from viz.data import cycle_view
    from viz.tree_figure import stage_caption, stage_names, tree_figure

    ids = tiny_target.tokenizer("the cat and the dog and the cat and the dog")["input_ids"]
    p = AutoEagle2(flat(), top_k=2, depth=3, lookup=8)
    rec = eagle2.TraceRecorder()
    eagle2.generate(tiny_target.model, ids, p, drafter, max_new_tokens=40, observers=[rec])
    trace = eagle2.Trace.from_json(rec.trace.to_json())  # what the app loads
    copies = [c for c in trace.cycles if any(e.candidates and e.candidates[0].source == "lookup" for e in c.expansions)]
    assert copies, "no cycle copied from the context"
    cyc = copies[0]
    step = next(e for e in cyc.expansions if e.candidates[0].source == "lookup")
    assert all(c.source == "lookup" for c in step.candidates) and step.chosen == []
    assert all(c.source == "draft" for e in cyc.expansions if e is not step for c in e.candidates)
    view = cycle_view(trace, cyc.index)
    names = stage_names(view)
    assert "Copy" in names and names[-2:] == ["Rerank", "Verify"]
    assert "prompt lookup" in stage_caption(view, names.index("Copy"))
    fig = tree_figure(trace, cyc.index)
    copied = [a for a in fig.layout.annotations if a.name and a.name.startswith("node:") and "↪" in a.text]
    kept_copies = [n for n in view.nodes.values() if n.source == "lookup" and n.kept]
    assert len(copied) >= len(kept_copies) > 0
    assert all("copied from the context" in a.hovertext for a in copied)
    from viz.data import policy_label

    assert trace.meta.get("lookup") == 8 and "lookup=8" in policy_label(trace.meta)


def test_lookup_needs_the_auto_tree(tiny_target):
    from eagle2.registry import make_policy

    with pytest.raises(ValueError, match="needs the eagle2 policy with total=auto"):
        make_policy("eagle2", total_tokens=12, lookup=10)
    with pytest.raises(ValueError, match="lookup must be"):
        make_policy("eagle2", total_tokens="auto", target=tiny_target, lookup=-2)


def test_cli_and_bench_reject_lookup_without_auto(capsys):
    from eagle2.bench import BenchError, parse_methods
    from eagle2.cli import main

    assert main(["generate", "--prompt", "hi", "--policy", "chain", "--lookup", "5"]) == 2
    assert "--lookup needs" in capsys.readouterr().err
    assert main(["generate", "--prompt", "hi", "--lookup", "-1"]) == 2
    spec = parse_methods("eagle2@lookup=10")[0]
    assert spec.options == {"lookup": 10}
    with pytest.raises(BenchError):
        parse_methods("eagle2@lookup=x")


def test_value_scale_is_learnt_on_drafted_nodes_only():
    """Copied confidences are divided by the value scale a; were they counted when learning a,
    a would feed on itself (it fell to 0.34 before this rule). Only drafted-only paths count."""
    p = AutoEagle2(flat())
    pool = CandidatePool()
    pool.add([-1, -1], [4, 8], [math.log(0.5), math.log(0.2)])  # drafted
    merge_chain(pool, [4, 5], [math.log(0.9), math.log(0.8)])  # 4 becomes shared ("both"), 5 is copied
    tree = pool.rerank(1, 3)  # nodes 4, 8, 5 (the copy's 5 under 4)
    assert tree.tokens.tolist() == [1, 4, 8, 5]
    # only node 8 counts: node 4 and its child carry the copy's values
    assert drafted_outcome(tree, pool, [0, 1, 3]) == (0, pytest.approx(0.2))
    assert drafted_outcome(tree, pool, [0, 2]) == (1, pytest.approx(0.2))
    assert drafted_outcome(tree, pool, [0]) == (0, pytest.approx(0.2))
    drafted_only = CandidatePool()  # without prompt lookup every node was drafted: every value counts
    drafted_only.add([-1, -1], [4, 8], [math.log(0.5), math.log(0.2)])
    plain = drafted_only.rerank(1, 2)
    every_value = plain.log_values[1:].exp().sum().item()
    assert drafted_outcome(plain, drafted_only, [0, 2]) == (1, pytest.approx(every_value))
