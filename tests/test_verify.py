"""Acceptance rules: greedy picks the longest argmax path; sampling keeps the target distribution."""

import itertools
import math

import pytest
import torch

import eagle2.decode
from eagle2.decode import generate
from eagle2.draft import ModelDrafter
from eagle2.policies import Eagle2
from eagle2.tree import DraftTree
from eagle2.verify import Verdict, greedy_accept, sample_accept, target_probs

from conftest import make_tiny_llama


def _onehot_logits(rows, vocab=10):
    logits = torch.zeros(len(rows), vocab)
    for i, t in enumerate(rows):
        logits[i, t] = 5.0
    return logits


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


def wrong_sample_accept(tree, probs, generator=None):
    """A classic mistake: after rejecting drafts, sample from the full p instead of the residual."""
    tokens, kids = tree.tokens.tolist(), tree.children()
    path, node = [0], 0
    while True:
        p = probs[node]
        nxt = None
        for c in kids[node]:
            if float(torch.rand((), generator=generator)) < float(p[tokens[c]]):
                nxt = c
                break
        if nxt is None:
            return Verdict(path, int(torch.multinomial(p, 1, generator=generator)), [], [tokens[i] for i in path[1:]])
        path.append(nxt)
        node = nxt


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


@pytest.mark.parametrize("rule, should_pass", [(sample_accept, True), (wrong_sample_accept, False)])
def test_eagle2_sampling_matches_target_distribution(rule, should_pass, monkeypatch):
    """Empirical first-3-token distribution of eagle2 sampling vs the exact target distribution."""
    vocab, k, temperature, top_p = 5, 3, 1.0, 0.95
    # small init keeps both distributions fairly flat, so every token has real mass
    target = make_tiny_llama(vocab, seed=3, hidden=32, eos=None, init=0.1)
    draft = make_tiny_llama(vocab, seed=4, hidden=32, eos=None, init=0.1)  # a different model: real rejections
    prompt = torch.tensor([1, 2, 0, 4])
    exact = _exact_first_tokens(target, prompt, k, temperature, top_p)
    monkeypatch.setattr(eagle2.decode, "sample_accept", rule)
    policy = Eagle2(top_k=2, depth=2, total_tokens=4)
    drafter = ModelDrafter(draft)
    n = 2500
    counts, accepted = {}, 0
    for i in range(n):
        r = generate(target, prompt, policy, drafter, max_new_tokens=k, temperature=temperature,
                     top_p=top_p, seed=i)
        key = tuple(r.tokens)
        counts[key] = counts.get(key, 0) + 1
        accepted += r.origins.count("draft")
    assert accepted > n * 0.3  # the drafts were really tested, not all rejected
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
