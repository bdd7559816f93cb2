"""Hardware-aware tree size: the latency curve, the size choice, dynamic depth, exactness."""

from __future__ import annotations

import math

import pytest
import torch

import eagle2
from eagle2.autotree import AutoEagle2, LatencyModel, RatioOfSums, Rolling, calibrate, load_or_calibrate
from eagle2.trace import Timings
from eagle2.tree import CandidatePool, DraftTree
from eagle2.verify import SampledDrafts, Verdict


def flat(ms=10.0):
    """GPU-like: verifying 64 tokens costs what verifying one does."""
    return LatencyModel([1, 64], [ms / 1e3, ms / 1e3])


def steep(ms=10.0, per_token_ms=2.0):
    """CPU-like: every extra tree token costs more."""
    return LatencyModel([1, 64], [ms / 1e3, (ms + 63 * per_token_ms) / 1e3])


VALUES = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.08, 0.05, 0.03, 0.02, 0.01] * 2


def log_values(values=VALUES):
    return [math.log(v) for v in values]


# ---- latency model ---------------------------------------------------------------------------
def test_fit_takes_fastest_and_is_monotone():
    lat = LatencyModel.fit({1: [0.02, 0.01, 0.5], 4: [0.009, 0.3], 16: [0.02, 0.021], 64: [0.05, 0.04]})
    assert lat.sizes == [1, 4, 16, 64]
    assert lat.seconds[2:] == pytest.approx([0.02, 0.04])
    assert lat.seconds[0] == lat.seconds[1] == pytest.approx(0.0095)  # the dip 0.01 -> 0.009 is pooled
    assert all(a <= b for a, b in zip(lat.seconds, lat.seconds[1:]))


def test_curve_interpolates_and_extrapolates():
    lat = LatencyModel([1, 3, 5], [1.0, 2.0, 6.0])
    assert lat(2) == pytest.approx(1.5) and lat(4) == pytest.approx(4.0) and lat(3) == pytest.approx(2.0)
    assert lat(7) == pytest.approx(10.0)  # last slope carries on
    assert lat(0.5) > 0
    again = LatencyModel.from_json(lat.to_json())
    assert again.sizes == lat.sizes and again.seconds == lat.seconds
    with pytest.raises(ValueError):
        LatencyModel([1, 1], [1.0, 2.0])
    with pytest.raises(ValueError):
        LatencyModel.from_json('{"schema": "other"}')


def test_calibrate_and_cache(tiny_target, tmp_path, monkeypatch):
    monkeypatch.setenv("EAGLE2_CACHE", str(tmp_path))
    lat = calibrate(tiny_target.model, sizes=(1, 4), prefix_len=32, repeats=2)
    assert lat.sizes == [1, 4] and all(s > 0 for s in lat.seconds)
    assert lat.meta["prefix_len"] == 32 and len(lat.samples["4"]) == 2
    first = load_or_calibrate(tiny_target.model, sizes=(1, 8), prefix_len=16, repeats=1)
    assert first.meta["cached"] is False
    files = list((tmp_path / "latency").glob("*.json"))
    assert len(files) == 1
    second = load_or_calibrate(tiny_target.model, sizes=(1, 8), prefix_len=16, repeats=1)
    assert second.meta["cached"] is True and second.seconds == first.seconds
    assert load_or_calibrate(tiny_target.model, sizes=(1, 8), prefix_len=16, repeats=1, refresh=True).meta["cached"] is False


# ---- choosing the size -------------------------------------------------------------------------
def brute_force(policy, values, draft_s):
    best, best_n = -1.0, -1
    ordered = sorted(values, reverse=True)[: policy.max_nodes]
    for n in range(len(ordered) + 1):
        rate = (1 + sum(ordered[:n])) / (draft_s + policy.overhead_s + policy.latency(n + 1))
        if rate > best + 1e-12:
            best, best_n = rate, n
    return best_n


@pytest.mark.parametrize("lat", [flat(), steep(), steep(per_token_ms=0.2), LatencyModel([1, 8, 64], [0.01, 0.011, 0.2])])
def test_choice_maximises_expected_tokens_per_second(lat):
    p = AutoEagle2(lat)
    for draft_s in (0.0, 0.005, 0.05):
        assert p.choose_nodes(log_values(), draft_s) == brute_force(p, VALUES, draft_s)


def test_smaller_tree_when_verify_time_grows_faster():
    sizes = [AutoEagle2(lat).choose_nodes(log_values(), 0.005)
             for lat in (flat(), steep(per_token_ms=0.05), steep(per_token_ms=0.5), steep(per_token_ms=5.0))]
    assert sizes[0] == len(VALUES)  # free verification: keep every candidate with any value
    assert sizes[0] > sizes[1] > sizes[2] > sizes[3] >= 1  # e.g. 32, 26, 16, 6


def test_a_busy_machine_shrinks_the_tree():
    """Verifies 3x slower than calibrated while drafting costs the same: a smaller share of the
    cycle is fixed cost, so extra nodes pay less."""
    p = AutoEagle2(steep(per_token_ms=0.3))
    calm = p.choose_nodes(log_values(), 0.05)
    for _ in range(8):  # verifies run 3x slower than calibrated: the load factor follows
        p._nodes = 10
        p.learn(0, DraftTree([1], [-1]), Verdict([0], 2, [], []), [2],
                Timings(draft_s=0.005, verify_s=3 * p.latency(11), update_s=0.0))
    assert p.verify_scale == pytest.approx(3.0)
    assert p.choose_nodes(log_values(), 0.05) < calm


def test_overconfident_drafts_shrink_the_tree():
    """Once the target accepts a fifth of what the values promise, extra nodes are worth a fifth."""
    p = AutoEagle2(steep(per_token_ms=0.3))
    trusting = p.choose_nodes(log_values(), 0.005)
    pool = CandidatePool()
    pool.add([-1] * 5, [5, 6, 7, 8, 9], [0.0] * 5)  # five drafted children of the root, each promising 1.0
    tree = pool.rerank(1, 5)
    for c in range(10):
        p._pool, p._nodes, p._kept_mass = pool, 5, 5.0  # what tree_size records: 5 kept, their values summed
        p.learn(c, tree, Verdict([0, 1], 6, [2, 3, 4, 5], [5]), [5, 6],
                Timings(0.0, p.latency(6), 0.0))  # one accepted draft per 5.0 promised; timings as calibrated
    assert p.value_scale == pytest.approx(0.2)
    assert p.choose_nodes(log_values(), 0.005) < trusting
    assert AutoEagle2(steep(per_token_ms=0.3), calibrate_values=False).value_scale == 1.0


def test_ratio_of_sums():
    r = RatioOfSums(window=4, initial=1.0, min_samples=2, lo=0.1, hi=2.0)
    r.add(1, 4)
    assert r.value == 1.0  # too few samples
    r.add(1, 0)
    assert r.value == pytest.approx(0.5)
    for _ in range(4):
        r.add(0, 1)
    assert r.value == pytest.approx(0.1)  # clipped


def jump():
    """A CPU's verify cost: a jump from one token to two, nearly flat to four, steep after."""
    return LatencyModel([1, 2, 4, 8, 64], [0.030, 0.035, 0.036, 0.045, 0.2])


def sampling(policy: AutoEagle2) -> AutoEagle2:
    policy.use_sampled_drafts(SampledDrafts(1.0))
    return policy


def test_sampled_drafts_look_past_a_first_node_that_does_not_pay():
    """The rate falls at the first node (the jump) and rises past where it started by the
    third: the node-by-node rule for sampled drafts keeps going, as the best size does."""
    p = sampling(AutoEagle2(jump()))
    values = [0.1, 0.1, 0.1, 0.02, 0.01]
    rates = p.rates(log_values(values), 0.004)
    assert rates[1] < rates[0] < rates[3]
    assert p.choose_nodes(log_values(values), 0.004) == 3 == brute_force(p, values, 0.004)
    assert p.choose_nodes(log_values([0.01] * 6), 0.004) == 0  # worthless drafts still give no tree


def test_sampled_drafts_keep_a_node_by_the_better_values_only():
    """Exactness (verify.SampledDrafts): whether the n-th best node is kept may depend on the
    n best values only, never on the values below it (its own draws decide those)."""
    gen = torch.Generator().manual_seed(0)
    p = sampling(AutoEagle2(jump()))
    for _ in range(300):
        scale = float(torch.rand((), generator=gen)) * 0.5  # often too little for the first node alone
        values = sorted((torch.rand(12, generator=gen).pow(2) * scale).tolist(), reverse=True)
        n = p.choose_nodes(log_values(values), 0.004)
        for j in range(1, min(n + 2, len(values) + 1)):  # the kept ones, and the first one dropped
            for tail in ([1e-9] * (12 - j), [values[j - 1]] * (12 - j),  # any values below the j-th
                         (torch.rand(12 - j, generator=gen) * values[j - 1]).tolist()):
                other = p.choose_nodes(log_values(values[:j] + tail), 0.004)
                assert (other >= j) == (n >= j), (values, j, n, other)


def test_worthless_drafts_give_an_empty_tree():
    p = AutoEagle2(steep())
    assert p.choose_nodes(log_values([1e-6] * 20), 0.0) == 0


def test_max_nodes_caps_the_tree():
    p = AutoEagle2(flat(), max_nodes=5)
    assert p.choose_nodes(log_values(), 0.0) == 5


# ---- dynamic depth -----------------------------------------------------------------------------
def pool_with_levels(frontier_value: float) -> CandidatePool:
    pool = CandidatePool()
    pool.add([-1] * 4, [10, 11, 12, 13], [math.log(0.9), math.log(0.05), math.log(0.03), math.log(0.02)])
    pool.add([0, 0, 0, 0], [20, 21, 22, 23], [math.log(frontier_value / 0.9)] + [math.log(1e-3)] * 3)
    return pool


LEVEL2 = torch.arange(4, 8)  # the pool ids of the depth-2 level: the frontier of the next step


def test_stop_when_the_next_level_cannot_pay():
    p = AutoEagle2(steep(per_token_ms=0.3))
    for _ in range(5):
        p.step.add(0.002)
    # rich frontier, cheap step: continue; poor frontier: stop
    assert not p.should_stop(pool_with_levels(0.8), LEVEL2, elapsed=0.004)
    assert p.should_stop(pool_with_levels(0.001), LEVEL2, elapsed=0.004)
    # same frontier, but a step as slow as many verifies: stop
    slow = AutoEagle2(steep(per_token_ms=0.3))
    for _ in range(5):
        slow.step.add(1.0)
    assert slow.should_stop(pool_with_levels(0.8), LEVEL2, elapsed=0.004)


def test_stop_rule_prices_the_next_level_with_its_verify_time():
    """Top-k drafts: stop exactly when the candidates plus one child per frontier node worth q
    times its parent, with one more step of drafting, give no better rate than the pool now."""
    p = AutoEagle2(steep(per_token_ms=0.3))
    for _ in range(5):
        p.step.add(0.003)
    p.mass.add(0.5)  # q
    for fv in (0.01, 0.05, 0.1, 0.3, 0.6, 0.85):
        pool = pool_with_levels(fv)
        values = pool.log_value.tolist()
        children = [v + math.log(0.5) for v in values[4:]]  # the frontier: the depth-2 level
        after = max(p.rates(values + children, 0.004 + 0.003))
        assert p.should_stop(pool, LEVEL2, 0.004) == (after <= max(p.rates(values, 0.004)))


def test_a_level_that_cannot_pay_its_verify_time_is_not_drafted():
    """A frontier worth drafting by value per second of drafting alone, whose children would
    cost a verify time no value of theirs repays: the bound (verify time left out) goes on,
    the rule stops."""
    p = AutoEagle2(steep(per_token_ms=20.0))  # every verified token: 20 ms; a step: 1 ms
    for _ in range(5):
        p.step.add(0.001)
    pool = pool_with_levels(0.3)
    values = pool.log_value.tolist()
    bound_gain = p.value_scale * p.step_mass * sum(math.exp(v) for v in values[4:])
    assert bound_gain / p.step_s > max(p.rates(values, 0.004))  # the bound would take the step
    assert p.should_stop(pool, LEVEL2, 0.004)
    cheap = AutoEagle2(steep(per_token_ms=0.1))  # the same level on a nearly flat curve pays
    for _ in range(5):
        cheap.step.add(0.001)
    assert not cheap.should_stop(pool, LEVEL2, 0.004)


def test_stop_rule_with_sampled_drafts_matches_its_bound():
    """Sampled drafts: the frontier's best node only (exactness); stop when its value per second
    of drafting is no better than the best rate over the values at least as high."""
    p = AutoEagle2(steep(per_token_ms=0.3))
    p.use_sampled_drafts(SampledDrafts(1.0))
    for _ in range(5):
        p.step.add(0.003)
    for fv in (0.01, 0.05, 0.1, 0.3, 0.6, 0.85):
        pool = pool_with_levels(fv)
        values = [v for v in pool.log_value.tolist() if v >= math.log(fv) - 1e-5]
        best = max(p.rates(values, 0.004))
        assert p.should_stop(pool, LEVEL2, 0.004) == (fv / 0.003 <= best)  # q = 1: nothing learnt


def test_rolling_median_skips_warmup():
    r = Rolling(window=3, initial=1.0, skip=1)
    assert r.value == 1.0
    r.add(100.0)  # skipped
    assert r.value == 1.0 and len(r) == 0
    for x in (1.0, 2.0, 50.0, 3.0):
        r.add(x)
    assert r.value == 3.0  # median of the last three


# ---- exact decoding ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def drafter(tiny_target):
    from eagle2.draft import EagleDrafter
    from eagle2.head import EagleHead

    torch.manual_seed(3)
    return EagleDrafter(EagleHead.for_target(tiny_target.model.config), tiny_target.model)


@pytest.mark.parametrize("lat", [flat(0.01), steep(), steep(per_token_ms=1e3)])
def test_auto_policy_is_lossless(tiny_target, drafter, lat):
    ids = tiny_target.tokenizer("hello world the cat is")["input_ids"]
    ref = eagle2.generate(tiny_target.model, ids, eagle2.Vanilla(), None, max_new_tokens=40)
    p = AutoEagle2(lat, top_k=3, depth=4)
    out = eagle2.generate(tiny_target.model, ids, p, drafter, max_new_tokens=40)
    assert out.tokens == ref.tokens
    assert p.cycles == len(out.cycles) and all(c.tree_size <= p.max_nodes for c in out.cycles)
    assert out.summary()["total_tokens"] == "auto"
    # the decode loop tells the policy every cycle's outcome and timings
    assert len(p.load) == len(p.accept) == len(p.overhead) == len(out.cycles)


def test_learns_the_kept_values_it_summed_on_the_host(tiny_target, drafter):
    """Without prompt lookup every kept node was drafted, and the values it weighs the accepted
    drafts against are the n largest it summed when it chose n (no second device read): the
    same as the verified tree's values, cycle by cycle."""
    ids = tiny_target.tokenizer("hello world the cat is")["input_ids"]
    p = AutoEagle2(flat(0.01), top_k=3, depth=4)  # verify costs nothing: it keeps nodes
    seen = []
    learn = p.learn

    def check(cycle, tree, verdict, tokens, timings):
        seen.append((p._kept_mass if tree.size else 0.0, float(tree.log_values[1:].double().exp().sum())))
        learn(cycle, tree, verdict, tokens, timings)

    p.learn = check
    eagle2.generate(tiny_target.model, ids, p, drafter, max_new_tokens=30)
    assert len(seen) > 3 and any(tree_sum > 0 for _, tree_sum in seen)
    for kept, tree_sum in seen:
        assert kept == pytest.approx(tree_sum, rel=1e-9, abs=1e-12)


def test_huge_step_cost_keeps_the_tree_shallow(tiny_target, drafter):
    ids = tiny_target.tokenizer("the dog and the cat")["input_ids"]
    p = AutoEagle2(flat(), top_k=2, depth=6, explore_every=10**9)
    for _ in range(10):
        p.step.add(100.0)
    p.step.skip = 0
    out = eagle2.generate(tiny_target.model, ids, p, drafter, max_new_tokens=20)
    assert p.stats()["mean_depth"] == 1.0 and len(out.tokens) == 20
    free = AutoEagle2(flat(), top_k=2, depth=6, dynamic_depth=False)
    eagle2.generate(tiny_target.model, ids, free, drafter, max_new_tokens=20)
    assert free.stats()["mean_depth"] == 6.0


def test_auto_policy_helper(tiny_target, tmp_path, monkeypatch):
    from eagle2.autotree import auto_policy

    monkeypatch.setenv("EAGLE2_CACHE", str(tmp_path))
    p = auto_policy(tiny_target, top_k=3, depth=4)
    assert (p.top_k, p.depth, p.max_nodes) == (3, 4, 3 + 3 * 9)
    assert p.describe()["total_tokens"] == "auto" and p.latency.sizes[-1] == 64
    assert len(list((tmp_path / "latency").glob("*.json"))) == 1
