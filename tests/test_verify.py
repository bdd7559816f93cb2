"""Acceptance rules: greedy picks the longest argmax path; sampling keeps the target distribution."""

import itertools
import math

import pytest
import torch

import eagle2.decode
from eagle2.decode import generate
from eagle2.draft import ModelDrafter
from eagle2.autotree import AutoEagle2, LatencyModel
from eagle2.policies import Chain, Eagle1, Eagle2
from eagle2.tree import SOURCES, DraftTree
from eagle2.registry import build_policy
from eagle2.verify import DRAFT_TEMPERATURE, SampledDrafts, Verdict, greedy_accept, sample_accept, target_probs

from conftest import make_tiny_llama


def _onehot_logits(rows, vocab=10):
    logits = torch.zeros(len(rows), vocab)
    for i, t in enumerate(rows):
        logits[i, t] = 5.0
    return logits


def test_the_greedy_argmax_is_torchs_first_maximum_at_ties():
    from eagle2.verify import argmax

    g = torch.Generator().manual_seed(0)
    for vocab in (7, 1024, 49152):
        x = torch.randint(-2, 2, (13, vocab), generator=g).float()  # every row full of ties
        for logits in (x, x.bfloat16(), x[None], x[0]):
            assert torch.equal(argmax(logits), logits.float().argmax(dim=-1))
    assert int(argmax(torch.tensor([1.0, 3.0, 3.0, 0.0]))) == 1  # the first of the tied maxima


def test_greedy_follows_argmax_and_takes_bonus():
    #        0(root)
    #      /    \
    #     1:a    2:b
    #     |       |
    #     3:c     4:d
    tree = DraftTree([9, 1, 2, 3, 4], [-1, 0, 0, 1, 2])
    v = greedy_accept(tree, _onehot_logits([2, 0, 4, 0, 7]))  # target wants b after root, then d, then 7
    assert v.path == [0, 2, 4] and v.bonus == 7
    assert v.rejected == [1]
    v = greedy_accept(tree, _onehot_logits([5, 0, 0, 0, 0]))  # nothing matches
    assert v.path == [0] and v.bonus == 5


def g_stat(counts: dict, probs: dict, n: int) -> tuple[float, int]:
    """G-test statistic and degrees of freedom, pooling cells with expected count < 5."""
    pooled_obs = pooled_exp = 0.0
    g, cells = 0.0, 0
    for key, p in probs.items():
        e, o = p * n, counts.get(key, 0)
        if e < 5:
            pooled_obs, pooled_exp = pooled_obs + o, pooled_exp + e
            continue
        cells += 1
        if o:
            g += 2 * o * math.log(o / e)
    if pooled_exp > 0:
        cells += 1
        if pooled_obs:
            g += 2 * pooled_obs * math.log(pooled_obs / pooled_exp)
    return g, cells - 1


def chi2_critical(df: int, z: float = 3.719) -> float:
    """Wilson–Hilferty upper quantile of chi-square (z=3.719 ↔ p=1e-4)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _walk(tree, probs, generator, try_children):
    """Shared walk of the wrong rules below: `try_children(p, q, children, tokens)` returns the
    accepted child or None and the distribution the bonus is drawn from."""
    tokens, kids = tree.tokens.tolist(), tree.children()
    path, node = [0], 0
    while True:
        nxt, p = try_children(probs[node].clone(), node, kids[node], tokens)
        if nxt is None:
            return Verdict(path, int(torch.multinomial(p, 1, generator=generator)), [], [tokens[i] for i in path[1:]])
        path.append(nxt)
        node = nxt


def wrong_sample_accept(tree, probs, generator=None, drafts=None):
    """A classic mistake: after rejecting drafts, sample from the full p instead of the residual."""
    def try_children(p, node, children, tokens):
        for c in children:
            if float(torch.rand((), generator=generator)) < float(p[tokens[c]]):
                return c, p
        return None, p

    return _walk(tree, probs, generator, try_children)


@pytest.mark.parametrize("rule, should_pass", [(sample_accept, True), (wrong_sample_accept, False)])
def test_one_node_sampling_is_exact(rule, should_pass):
    """Root with 3 deterministic drafts: the first emitted token must follow p exactly."""
    vocab = 6
    p = torch.tensor([0.30, 0.25, 0.20, 0.12, 0.08, 0.05])
    tree = DraftTree([0, 1, 3, 2], [-1, 0, 0, 0])
    probs = p.expand(4, vocab).clone()
    gen = torch.Generator().manual_seed(0)
    n = 20_000
    counts = {}
    for _ in range(n):
        v = rule(tree, probs, gen)
        first = int(tree.tokens[v.path[1]]) if len(v.path) > 1 else v.bonus
        counts[first] = counts.get(first, 0) + 1
    g, df = g_stat(counts, {i: float(p[i]) for i in range(vocab)}, n)
    assert (g < chi2_critical(df)) == should_pass, (g, chi2_critical(df), counts)


def _exact_first_tokens(model, prompt, k, temperature, top_p):
    """P(t1..tk | prompt) for every sequence, by enumeration."""
    vocab = model.config.vocab_size
    seqs = torch.tensor(list(itertools.product(range(vocab), repeat=k)))
    inp = torch.cat([prompt.expand(seqs.shape[0], -1), seqs], dim=1)
    with torch.no_grad():
        logits = model(inp).logits[:, prompt.numel() - 1: -1]  # predictions for t1..tk
    probs = target_probs(logits, temperature, top_p)
    joint = probs.gather(-1, seqs[..., None])[..., 0].prod(-1)
    return {tuple(s): float(p) for s, p in zip(seqs.tolist(), joint)}


def wrong_drawn_accept(tree, probs, generator=None, drafts=None):
    """Sampled drafts accepted by min(1, p/q) but with the top-k rule's residual (p without the
    rejected token) instead of norm(max(p - q, 0)): biased towards tokens q under-rates."""
    def try_children(p, node, children, tokens):
        q = drafts.q(tree.candidate_ids[node], p.shape[-1]) if children else None
        for c in children:
            x = tokens[c]
            if float(torch.rand((), generator=generator)) * float(q[x]) < float(p[x]):
                return c, p
            p[x] = 0.0
            p /= p.sum()
            q[x] = 0.0
            q /= q.sum()
        return None, p

    return _walk(tree, probs, generator, try_children)


@pytest.mark.parametrize("rule, should_pass", [(sample_accept, True), (wrong_drawn_accept, False)])
def test_one_node_sampled_drafts_are_exact(rule, should_pass):
    """Root with 3 children drawn without replacement from a q unlike p: the first emitted token
    must follow p exactly (recursive rejection sampling), and the children really vary."""
    vocab = 6
    p = torch.tensor([0.30, 0.25, 0.20, 0.12, 0.08, 0.05])
    draft_logp = torch.tensor([0.05, 0.10, 0.40, 0.05, 0.30, 0.10]).log()
    probs = p.expand(4, vocab).clone()
    gen = torch.Generator().manual_seed(0)
    n = 4_000  # the wrong rule scores G ≈ 600 against a critical 26 here
    counts, first_child = {}, set()
    for _ in range(n):
        drafts = SampledDrafts(1.0, generator=gen)
        log_rank, tok = drafts.draw(draft_logp, 3, -1)
        tree = DraftTree([0] + tok.tolist(), [-1, 0, 0, 0], [0.0] + log_rank.tolist())
        first_child.add(int(tok[0]))
        v = rule(tree, probs, gen, drafts)
        first = int(tree.tokens[v.path[1]]) if len(v.path) > 1 else v.bonus
        counts[first] = counts.get(first, 0) + 1
    assert len(first_child) == vocab  # drawn, not the top-k
    g, df = g_stat(counts, {i: float(p[i]) for i in range(vocab)}, n)
    assert (g < chi2_critical(df)) == should_pass, (g, chi2_critical(df), counts)


def wrong_copy_accept(tree, probs, generator=None, drafts=None):
    """Prompt lookup's copied children tried against p as it was before the drawn children
    failed, instead of against the residual: biased towards the copied tokens."""
    from eagle2.verify import _accept_drawn

    copied = tree.copied()

    def try_children(p, node, children, tokens):
        q = drafts.q(tree.candidate_ids[node], p.shape[-1]) if children else None
        before = p.clone()
        if q is not None:
            out = _accept_drawn(p, q, [c for c in children if not copied[c]], tokens, generator)
            if isinstance(out, int):
                return out, p
            p = out
        for c in (children if q is None else [c for c in children if copied[c]]):
            if float(torch.rand((), generator=generator)) < float(before[tokens[c]]):
                return c, p
        return None, p

    return _walk(tree, probs, generator, try_children)


@pytest.mark.parametrize("rule, should_pass", [(sample_accept, True), (wrong_copy_accept, False)])
def test_drawn_and_copied_children_together_are_exact(rule, should_pass):
    """Root with 2 children drawn from q and a copied one (prompt lookup, a fixed token tried
    after them against the residual; shared when it was drawn, as merge_chain does): the first
    emitted token must follow p exactly."""
    vocab, copy = 6, 3
    p = torch.tensor([0.30, 0.25, 0.20, 0.12, 0.08, 0.05])
    draft_logp = torch.tensor([0.05, 0.10, 0.40, 0.05, 0.30, 0.10]).log()
    probs = p.expand(4, vocab).clone()
    gen = torch.Generator().manual_seed(0)
    n = 6_000
    counts, copied_first = {}, 0
    for _ in range(n):
        drafts = SampledDrafts(1.0, generator=gen)
        log_rank, tok = drafts.draw(draft_logp, 2, -1)
        tokens, sources = [0] + tok.tolist(), [0, 0, 0]
        if copy not in tokens[1:]:
            tokens, sources = tokens + [copy], sources + [SOURCES.index("lookup")]
        m = len(tokens)
        tree = DraftTree(tokens, [-1] + [0] * (m - 1), [0.0] + log_rank.tolist() + [-1.0] * (m - 3),
                         candidate_ids=list(range(-1, m - 1)), sources=sources)
        v = rule(tree, probs, gen, drafts)
        first = int(tree.tokens[v.path[1]]) if len(v.path) > 1 else v.bonus
        copied_first += len(v.path) > 1 and tree.copied()[v.path[1]]
        counts[first] = counts.get(first, 0) + 1
    assert copied_first > n * 0.03  # the copy was really accepted at times
    g, df = g_stat(counts, {i: float(p[i]) for i in range(vocab)}, n)
    assert (g < chi2_critical(df)) == should_pass, (g, chi2_critical(df), counts)


def test_sampled_draft_values_are_ranks_not_tokens():
    """A child's value is its rank's share of q, whichever token was drawn: what keeps the
    choice of children independent of the draws."""
    logp = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]).log()
    drafts = SampledDrafts(1.0, generator=torch.Generator().manual_seed(1), draft_temperature=1.0)
    for _ in range(20):
        log_rank, tok = drafts.draw(logp, 2, torch.tensor([4, 7]))
        assert torch.allclose(log_rank.exp(), torch.tensor([[0.5, 0.3], [0.8, 0.1]]))
        assert (tok[:, 0] != tok[:, 1]).all()  # without replacement
    assert torch.allclose(drafts.q(7, 3), torch.tensor([0.1, 0.1, 0.8]))
    ids = torch.tensor([10, 20, 30])  # a draft vocabulary: q is scattered to the target's ids
    drafts.draw(logp[0], 2, -1, ids)
    assert torch.allclose(drafts.q(-1, 32)[[10, 20, 30]], torch.tensor([0.5, 0.3, 0.2]))
    assert drafts.q(-1, 32).sum() == pytest.approx(1.0) and drafts.q(3, 32) is None


def test_sampled_drafts_come_from_the_drafter_at_the_draft_temperature():
    """q is the drafter's distribution at T × draft_temperature (sharper below 1): what is drawn
    from, what the values rank and what acceptance divides by are that one q."""
    logp = torch.tensor([0.5, 0.3, 0.2]).log()
    sharp = torch.softmax(logp / (0.8 * 0.5), -1)
    drafts = SampledDrafts(0.8, generator=torch.Generator().manual_seed(2), draft_temperature=0.5)
    log_rank, _ = drafts.draw(logp, 2, -1)
    assert torch.allclose(log_rank.exp(), sharp.topk(2).values) and torch.allclose(drafts.q(-1, 3), sharp)
    assert SampledDrafts(1.0).draft_temperature == DRAFT_TEMPERATURE < 1
    with pytest.raises(ValueError, match="draft_temperature"):
        SampledDrafts(1.0, draft_temperature=0.0)
    policy = build_policy("eagle2@dtemp=120@total=4")  # the registry option, in percent
    policy.use_sampled_drafts(drafts)
    assert policy.draft_temperature == 1.2 and drafts.draft_temperature == 1.2
    policy.draft_temperature = -1
    with pytest.raises(ValueError, match="draft_temperature must be > 0"):
        policy.use_sampled_drafts(SampledDrafts(1.0))
    with pytest.raises(ValueError, match="dtemp must be in 1..1000"):
        build_policy("eagle2@dtemp=0")


def _flat_latency():
    return LatencyModel([1, 64], [0.01, 0.012])


def _policies():
    top_k = Eagle2(top_k=2, depth=2, total_tokens=4)
    top_k.sampled_drafts = False
    # a CPU-like verify cost (a jump from one token to two, then flatter), so that the auto size
    # both keeps and drops sampled drafts node by node
    auto = AutoEagle2(LatencyModel([1, 2, 4, 64], [0.010, 0.013, 0.0135, 0.05]), top_k=2, depth=3,
                      calibrate_values=False)
    auto.step.add(0.001)  # a step estimate, so the stop rule is live from the first cycle
    # prompt lookup beside sampled drafts (the prompt repeats tokens, so chains are found)
    lookup = AutoEagle2(LatencyModel([1, 2, 4, 64], [0.010, 0.013, 0.0135, 0.05]), top_k=2, depth=3,
                        calibrate_values=False, lookup=3)
    lookup.step.add(0.001)
    return {"eagle2": Eagle2(top_k=2, depth=2, total_tokens=4), "eagle2-topk": top_k, "auto": auto,
            "auto+lookup": lookup, "chain": Chain(depth=2), "eagle1": Eagle1([(0,), (1,), (0, 0), (0, 1), (1, 0)])}


@pytest.mark.parametrize("name, rule, should_pass", [
    ("eagle2", sample_accept, True), ("eagle2-topk", sample_accept, True), ("auto", sample_accept, True),
    ("chain", sample_accept, True), ("eagle1", sample_accept, True), ("auto+lookup", sample_accept, True),
    ("eagle2-topk", wrong_sample_accept, False), ("eagle2", wrong_drawn_accept, False)])
def test_sampling_matches_target_distribution(name, rule, should_pass, monkeypatch):
    """Empirical first-3-token distribution of each policy's sampling (sampled drafts unless
    told top-k; with prompt lookup, drawn and copied children side by side) against the exact
    target distribution."""
    vocab, k, temperature, top_p = 5, 3, 1.0, 0.95
    # small init keeps both distributions fairly flat, so every token has real mass
    target = make_tiny_llama(vocab, seed=3, hidden=32, eos=None, init=0.1)
    draft = make_tiny_llama(vocab, seed=4, hidden=32, eos=None, init=0.1)  # a different model: real rejections
    prompt = torch.tensor([1, 2, 0, 4])
    exact = _exact_first_tokens(target, prompt, k, temperature, top_p)
    trees_with_copies = []

    def counting(tree, probs, generator=None, drafts=None):
        trees_with_copies.append(any(tree.copied()))
        return rule(tree, probs, generator, drafts)

    monkeypatch.setattr(eagle2.decode, "sample_accept", counting)
    policy = _policies()[name]
    drafter = ModelDrafter(draft)
    n = 1200  # the wrong rules get the same n, so the power they show is the power used (G 391 and 257 against 133)
    counts, accepted = {}, 0
    for i in range(n):
        r = generate(target, prompt, policy, drafter, max_new_tokens=k, temperature=temperature,
                     top_p=top_p, seed=i)
        key = tuple(r.tokens)
        counts[key] = counts.get(key, 0) + 1
        accepted += r.origins.count("draft")
        assert (r.policy.get("drafts") == "sampled") == (name != "eagle2-topk")
    assert accepted > n * 0.3  # the drafts were really tested, not all rejected
    if name == "auto+lookup":  # copies were really verified beside the drawn children
        assert sum(trees_with_copies) > 0.2 * len(trees_with_copies)
    g, df = g_stat(counts, exact, n)
    assert (g < chi2_critical(df)) == should_pass, (g, chi2_critical(df), df)


def test_target_probs_filters():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    p = target_probs(logits, 1.0, top_p=0.7)
    assert p[0, 3] == 0 and abs(float(p.sum()) - 1) < 1e-6
    p = target_probs(logits, 1.0, top_k=2)
    assert (p[0, 2:] == 0).all() and (p[0, :2] > 0).all()
    p = target_probs(logits, 1.0, top_p=1e-6)
    assert float(p[0, 0]) == 1.0  # the top token always survives


@pytest.mark.parametrize("top_p, top_k", [(1.0, 0), (0.9, 0), (0.95, 7)])
def test_row_probs_are_the_rows_of_target_probs(top_p, top_k):
    """Sampling computes only the rows it visits; each must be exactly the whole-tree row."""
    from eagle2.verify import RowProbs

    logits = torch.randn(9, 300, generator=torch.Generator().manual_seed(5)).mul(3).to(torch.bfloat16)
    full, rows = target_probs(logits, 0.8, top_p, top_k), RowProbs(logits, 0.8, top_p, top_k)
    assert len(rows) == 9 and torch.equal(rows.full(), full)
    for i in (4, 0, 8, 4):
        assert torch.equal(rows[i], full[i])


def test_who_takes_sampled_drafts():
    """Sampled drafts are taken only where they stay exact and the user did not opt out."""
    offer = SampledDrafts(1.0)
    auto = AutoEagle2(_flat_latency())
    auto.use_sampled_drafts(offer)
    assert auto.drafts is offer
    auto.use_sampled_drafts(None)  # greedy
    assert auto.drafts is None
    lookup = AutoEagle2(_flat_latency(), lookup=5)  # copies are fixed candidates after the drawn ones
    lookup.use_sampled_drafts(offer)
    assert lookup.drafts is offer
    off = Eagle2()
    off.sampled_drafts = False
    off.use_sampled_drafts(offer)
    assert off.drafts is None
    assert Eagle1().can_sample_drafts  # the default static tree keeps each node's first ranks
    gap = Eagle1([(0,), (2,)])  # rank 1 missing: its children would not be the first draws
    gap.use_sampled_drafts(offer)
    assert not gap.can_sample_drafts and gap.drafts is None
