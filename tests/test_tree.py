"""DraftTree and EAGLE-2 expansion/rerank properties, with a fake drafter (no model)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eagle2.policies import Chain, Eagle1, Eagle2
from eagle2.registry import make_policy
from eagle2.trace import TraceRecorder
from eagle2.tree import CandidatePool, DraftTree, max_candidates, rerank


class FakeDrafter:
    """Random but reproducible log-probs; records the parents it was fed, like a real drafter."""

    device = torch.device("cpu")

    def __init__(self, vocab: int, seed: int, peaked: float = 3.0):
        self.vocab, self.gen = vocab, torch.Generator().manual_seed(seed)
        self.peaked = peaked
        self.slot_depth: list[int] = []
        self.fed: list[tuple[list[int], list[int]]] = []  # (tokens, parent slots) of each step

    @property
    def num_slots(self) -> int:
        return len(self.slot_depth)

    def root(self) -> torch.Tensor:
        return self._logp(1)[0]

    def _logp(self, m: int) -> torch.Tensor:
        return torch.log_softmax(self.peaked * torch.randn(m, self.vocab, generator=self.gen), dim=-1)

    def step(self, tokens, parents):
        assert all(p < self.num_slots for p in parents), "a parent must be fed before its children"
        self.fed.append((list(map(int, tokens)), list(map(int, parents))))
        for p in parents:
            self.slot_depth.append((self.slot_depth[p] if p >= 0 else 0) + 1)
        return self._logp(len(parents))


def _check_tree(tree: DraftTree):
    par = tree.parents.tolist()
    assert par[0] == -1
    assert all(0 <= p < i for i, p in enumerate(par) if i)  # parents precede children
    anc = tree.ancestor_matrix()
    for i in range(len(tree)):  # mask = ancestor-or-self relation
        expected = set(tree.path_to(i))
        assert {j for j in range(len(tree)) if anc[i, j]} == expected
    mask = tree.attention_mask(prefix_len=3)
    assert mask.shape == (1, 1, len(tree), 3 + len(tree))
    assert bool((mask[0, 0, :, :3] == 0).all())
    assert torch.equal(mask[0, 0, :, 3:] == 0, anc)
    assert torch.equal(tree.position_ids(7)[0], tree.depths + 7)  # positions = prefix + depth
    for i, d in enumerate(tree.depths.tolist()):
        assert d == len(tree.path_to(i)) - 1
    leaves = tree.paths()
    covered = set()
    for path in leaves:  # every retrieve path is a real root-to-leaf chain
        assert path[0] == 0
        assert all(par[b] == a for a, b in zip(path, path[1:]))
        covered |= set(path)
    assert covered == set(range(len(tree)))
    vals = tree.log_values.tolist()
    assert all(vals[i] <= vals[p] + 1e-6 for i, p in enumerate(par) if i)  # values never increase


@settings(max_examples=60, deadline=None)
@given(top_k=st.integers(1, 6), depth=st.integers(1, 6), total=st.integers(1, 80), seed=st.integers(0, 10_000),
       vocab=st.integers(6, 40), peaked=st.sampled_from([0.0, 1.0, 5.0]))
def test_eagle2_tree_properties(top_k, depth, total, seed, vocab, peaked):
    top_k = min(top_k, vocab)
    total = min(total, max_candidates(top_k, depth))
    drafter = FakeDrafter(vocab, seed, peaked)
    policy = Eagle2(top_k=top_k, depth=depth, total_tokens=total)
    rec = TraceRecorder()
    tree = policy.draft(5, drafter.root(), drafter, rec, cycle=0)
    _check_tree(tree)
    assert tree.size == min(total, max_candidates(top_k, depth))
    assert tree.max_depth <= depth
    # the rerank kept exactly the most valuable candidates
    cands = [c for e in rec._cycle.expansions for c in e.candidates]
    assert len(cands) == max_candidates(top_k, depth)
    kept_values = sorted(math.log(c.value) for c in cands if c.id in set(rec._cycle.rerank.kept))
    dropped = [math.log(c.value) for c in cands if c.id not in set(rec._cycle.rerank.kept)]
    if dropped:
        assert max(dropped) <= min(kept_values) + 1e-6
    # each expansion step chose the top_k of its own candidates by value
    for e in rec._cycle.expansions[1:]:
        chosen = [c.value for c in e.candidates if c.id in e.chosen]
        others = [c.value for c in e.candidates if c.id not in e.chosen]
        assert len(chosen) == min(top_k, len(e.candidates))
        if others:
            assert min(chosen) >= max(others) - 1e-9


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), total=st.integers(1, 70), seed=st.integers(0, 10_000), ties=st.booleans())
def test_rerank_keeps_a_tree(n, total, seed, ties):
    g = torch.Generator().manual_seed(seed)
    parents = torch.tensor([int(torch.randint(-1, i, (1,), generator=g)) if i else -1 for i in range(n)])
    logc = -torch.rand(n, generator=g) * 3
    if ties:  # probability-1 children tie with their parents: a child must still never outrank its parent
        logc[torch.rand(n, generator=g) < 0.5] = 0.0
    logv = torch.zeros(n)
    for i in range(n):
        logv[i] = (logv[parents[i]] if parents[i] >= 0 else 0) + logc[i]
    tree, kept = rerank(0, torch.arange(n) + 10, parents, logc, logv, total)
    _check_tree(tree)
    assert tree.size == min(total, n)
    assert kept == sorted(kept)
    assert torch.allclose(tree.log_values[1:], logv[kept])


def test_eagle1_static_tree_shape():
    drafter = FakeDrafter(50, 0)
    tree = Eagle1().draft(1, drafter.root(), drafter)
    _check_tree(tree)
    assert tree.size == 25 and tree.max_depth == 5
    with pytest.raises(ValueError, match="no parent"):
        Eagle1([(0,), (1, 0)])


def test_chain_is_a_path_of_top1():
    drafter = FakeDrafter(50, 1)
    root = drafter.root()
    tree = Chain(depth=4).draft(1, root, drafter)
    assert tree.parents.tolist() == [-1, 0, 1, 2, 3]
    assert int(tree.tokens[1]) == int(root.argmax())


@pytest.mark.parametrize("kwargs, msg", [
    ({"top_k": 0}, "top_k must be >= 1"), ({"depth": 0}, "depth must be >= 1"),
    ({"total_tokens": 0}, "total_tokens must be >= 1"),
    ({"top_k": 2, "depth": 2, "total_tokens": 7}, "more than"),
])
def test_bad_tree_sizes(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        make_policy("eagle2", **kwargs)


def test_bad_tree_inputs():
    with pytest.raises(ValueError):
        DraftTree([1, 2], [-1, 1])  # a node cannot be its own parent
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("beam")
    with pytest.raises(TypeError):
        Eagle2(top_k=2.5)


def _plain_eagle2(top_k: int, depth: int, total: int, drafter: FakeDrafter) -> tuple[CandidatePool, DraftTree]:
    """EAGLE-2 written plainly on the pool's batch API (add, feed): what Eagle2.expand's level
    queue must equal."""
    pool = CandidatePool()
    lp, tok = torch.topk(drafter.root(), top_k)
    frontier = pool.add(torch.full((top_k,), -1), tok, lp, depth=1)
    for step in range(2, depth + 1):
        child_lp, child_tok = torch.topk(pool.feed(drafter, frontier), top_k, dim=-1)
        start = len(pool)
        new = pool.add(frontier.repeat_interleave(top_k), child_tok.flatten(), child_lp.flatten(), depth=step)
        frontier = new if len(new) <= top_k else torch.topk(pool.log_value[start:], top_k).indices.sort().values + start
    return pool, pool.rerank(5, total)


def _same_pool(a: CandidatePool, b: CandidatePool) -> None:
    assert len(a) == len(b) and a.max_depth == b.max_depth
    for name in CandidatePool._INT_ROWS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for name in CandidatePool._FLOAT_ROWS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def _same_tree(a: DraftTree, b: DraftTree) -> None:
    for name in ("tokens", "parents", "depths", "candidates", "log_confidences", "log_values"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@settings(max_examples=40, deadline=None)
@given(top_k=st.integers(1, 6), depth=st.integers(1, 6), total=st.integers(1, 80), seed=st.integers(0, 10_000),
       vocab=st.integers(6, 40), peaked=st.sampled_from([0.0, 1.0, 5.0]))
def test_eagle2_queued_levels_equal_plain_expansion(top_k, depth, total, seed, vocab, peaked):
    """The expansion's queued levels (written at the rerank), written step by step (a recorder
    reads the pool after each step) and a reused pool all give the plain expansion's pool,
    tree and drafter calls."""
    top_k = min(top_k, vocab)
    total = min(total, max_candidates(top_k, depth))
    plain_drafter = FakeDrafter(vocab, seed, peaked)
    plain_pool, plain_tree = _plain_eagle2(top_k, depth, total, plain_drafter)
    policy = Eagle2(top_k=top_k, depth=depth, total_tokens=total)
    for observer in (None, TraceRecorder(), None):  # the third reuses the pool the first two left
        drafter = FakeDrafter(vocab, seed, peaked)
        tree = policy.draft(5, drafter.root(), drafter, observer, cycle=0)
        _same_tree(tree, plain_tree)
        _same_pool(policy._last_pool, plain_pool)
        assert drafter.fed == plain_drafter.fed


def test_rerank_refuses_an_orphan():
    """Values that rise along a path would cut a node from its parent: refused, not a broken tree."""
    logc = torch.tensor([-2.0, -0.1, -0.1])
    with pytest.raises(ValueError, match="orphan"):
        rerank(5, torch.tensor([1, 2, 3]), torch.tensor([-1, 0, 1]), logc, torch.tensor([-2.0, -0.1, -0.05]), 2)


def _plain_eagle1(choices, drafter: FakeDrafter) -> DraftTree:
    """EAGLE-1's static tree written plainly with host lists (what Eagle1's index plan must equal)."""
    pool, id_of, logp_of = CandidatePool(), {(): -1}, {}
    lp, tok = torch.topk(drafter.root(), max(c[-1] for c in choices) + 1)
    logp_of[()] = (lp.tolist(), tok.tolist())
    for depth in range(1, max(len(c) for c in choices) + 1):
        level = [c for c in choices if len(c) == depth]
        parents = sorted({c[:-1] for c in level})
        if depth > 1:
            ids = [id_of[p] for p in parents]
            lps, toks = torch.topk(pool.feed(drafter, ids), max(c[-1] for c in level) + 1, dim=-1)
            for p, lv, t in zip(parents, lps.tolist(), toks.tolist()):
                logp_of[p] = (lv, t)
        picks = [(logp_of[c[:-1]][0][c[-1]], logp_of[c[:-1]][1][c[-1]]) for c in level]
        new = pool.add([id_of[c[:-1]] for c in level], [t for _, t in picks], [lv for lv, _ in picks], depth=depth)
        id_of.update(zip(level, new.tolist()))
    return pool.rerank(5, len(pool))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 30), default=st.booleans())
def test_eagle1_index_plan_equals_the_plain_static_tree(seed, n, default):
    """Eagle1 drafts from index tensors made once: the same tree, drafter calls and trace as
    the same static tree built from host lists, for the default tree and random valid ones."""
    from eagle2.policies import DEFAULT_STATIC_TREE

    g = torch.Generator().manual_seed(seed)
    choices = list(DEFAULT_STATIC_TREE)
    if not default:  # a random valid tree: each new path extends an existing one (or the root) by a rank
        choices = [(0,)]
        while len(choices) < n:
            r = int(torch.randint(len(choices) + 1, (1,), generator=g))  # len(choices): the root
            base = choices[r] if r < len(choices) and len(choices[r]) < 5 else ()
            c = base + (int(torch.randint(4, (1,), generator=g)),)
            if c not in choices:
                choices.append(c)
    policy = Eagle1(choices)
    plain_drafter = FakeDrafter(40, seed)
    plain = _plain_eagle1(policy.choices, plain_drafter)
    for observer in (None, TraceRecorder()):
        drafter = FakeDrafter(40, seed)
        tree = policy.draft(5, drafter.root(), drafter, observer, cycle=0)
        _same_tree(tree, plain)
        assert drafter.fed == plain_drafter.fed
