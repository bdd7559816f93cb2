"""Hardware-aware tree size: keep the draft tree that maximises expected tokens per second.

EAGLE-2 keeps a fixed number of reranked nodes (`total_tokens`). The best number depends on
the machine: on a GPU a 60-token verify costs about what a 1-token one does, on a CPU it can
cost several times more. `AutoEagle2` measures this instead of guessing.

Calibration (once per machine + model + dtype, cached as JSON under `cache_dir()/latency/`):
a few timed target forwards of n = 1, 2, 3, ..., 16, 20, ..., 64 tree tokens after a realistic prefix,
through the same code path as verification (`decode.target_forward` with a tree mask). The
fastest time per size, made non-decreasing, gives the knots of a piecewise-linear latency
curve T(n).

Per cycle, with the candidates' values v (products of draft probabilities = the draft's
estimate of each node's acceptance probability) sorted v_1 >= v_2 >= ...:

    expected tokens   E(n) = 1 + a (v_1 + ... + v_n)      (accepted drafts + the bonus token)
    cycle time        C(n) = D + O + s * T(n + 1)         (n drafts + the root are verified)
    keep              n*   = argmax_n E(n) / C(n)

D is the time this cycle has spent drafting so far, O the rest of a cycle (drafter commit,
acceptance, cache compaction), s a load factor (actual / calibrated verify time, so a busy
machine shifts the choice); O, s and c below are rolling medians learnt online. n = 0 (verify
the root alone) is allowed: when drafts are worthless, the cycle degenerates to plain decoding.

With sampled drafts (T > 0, verify.SampledDrafts) keeping the n-th best node may depend only on
v_1 ... v_n, never on the values below it (its own draw decides those), so n is chosen node by
node: the n-th is kept while nodes worth v_n (those after it are worth no more) could still
beat the best rate so far, max over m >= n of (E(n-1) + (m-n+1) a v_n) / C(m). Not "stop where
the rate first falls": on a CPU T jumps from one token to two and is nearly flat up to four, so
the rate can fall at the first node and rise past where it started by the third.

Draft probabilities are usually over-confident as acceptance estimates (the calibration plot of
the app shows by how much), so `a` = accepted drafts / sum of the kept values over the recent
cycles (learnt from what the decode loop tells the policy after each verification; 1 until 8
cycles are seen).

Prompt lookup (lookup=N, eagle2/lookup.py): chains of up to N tokens copied from the context
join the candidates before the choice, with their measured acceptance rates as confidences, so
the same rule decides how many copied and drafted tokens are worth verifying. With sampled
drafts the drawn nodes are chosen first, by their own values alone; the chains then hang below
the kept ones as fixed candidates (tried after the drawn children, verify.sample_accept), as
many copies as raise E(n) / C(n) further.

Dynamic depth. Before each drafter step (cost c, learnt online) the frontier F holds the
top_k nodes of the deepest level. The step creates their children, whose values sum to about
q v_f for each parent f, where q is the share of its frontier's value that one step's children
actually carry (learnt online). The step is judged at its most favourable: each parent's share
in a single child (the fewest new nodes to verify for that value). We stop when even then the
best rate over the candidates plus those children, with c more drafting, is no better than the
best rate now, R* = max_m E(m) / C(m). Each new node is charged its verify time: on a CPU, where
every verified token costs a millisecond or more, that is most of a node's price. One step ahead
only: a later step's children are worth at most q times their parents and cost as much again.

With sampled drafts the rule may look at the frontier's best node only (exactness, as for the
size), which would price a level at a fraction of its worth; there the bound stays that leaves
the verify time out: the children's values sum to at most V_F = sum of v_f over F, every later
step adds at most as much again, and any number j of steps gives a rate of at most

    max_m (E(m) + j G) / (C(m) + j c)  <=  max(R*, G / c)

(a mediant never exceeds the larger of its two ratios), so we stop when G / c <= R*, with
G = a q v_best (a = q = 1 and all of F would give back the bound itself).
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import json
import math
import os
import statistics
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import torch

from .files import write_text_atomic
from .models import clock, output_device
from .packed import FBGEMM_FP16, has_shared_products, packed_format
from .precision import machine_info
from .policies import Eagle2, check_lookup
from .trace import ExpansionStep, Timings
from .tree import SOURCES, CandidatePool, DraftTree, max_candidates
from .verify import Verdict

# Every size up to 16, then coarser: the matrix kernels work on blocks of rows, so the verify time
# steps where a block fills (FBGEMM's fp16 kernel on AVX2 takes 6 rows a pass: 7 tokens cost a
# second pass over every weight, ~1.2x the cost of 6), and a curve through 1, 2, 4, 8 would
# smooth the step over and misprice the small trees a CPU keeps.
CALIBRATION_SIZES = (*range(1, 17), 20, 24, 32, 48, 64)
CALIBRATION_SCHEMA = "eagle2-latency/1"
DEFAULT_PREFIX = 256  # ~ an MT-bench prompt with its template plus half an answer
AUTO_DEFAULT_DEPTH = 8  # a ceiling: dynamic depth usually stops earlier


# ---- the latency curve -------------------------------------------------------------------
@dataclass
class LatencyModel:
    """Piecewise-linear verify latency T(tokens) through measured knots (seconds)."""

    sizes: list[int]
    seconds: list[float]
    meta: dict = field(default_factory=dict)
    samples: dict = field(default_factory=dict)  # size -> raw timings, for reports

    def __post_init__(self):
        if len(self.sizes) < 1 or len(self.sizes) != len(self.seconds):
            raise ValueError("a latency model needs one time per size")
        order = sorted(range(len(self.sizes)), key=lambda i: self.sizes[i])
        self.sizes = [int(self.sizes[i]) for i in order]
        self.seconds = [float(self.seconds[i]) for i in order]
        if self.sizes[0] < 1 or len(set(self.sizes)) != len(self.sizes):
            raise ValueError(f"latency sizes must be distinct and >= 1, got {self.sizes}")
        if any(not (s > 0) or math.isinf(s) for s in self.seconds):
            raise ValueError(f"latency times must be positive, got {self.seconds}")

    @classmethod
    def fit(cls, samples: dict[int, list[float]], meta: dict | None = None) -> "LatencyModel":
        """The fastest time per size (timing noise only ever adds: another process taking the
        cores, a thread descheduled mid-forward), then the closest non-decreasing sequence
        (pool adjacent violators): a bigger tree never costs less, so a dip is noise. How much
        slower the machine runs right now is learnt online (AutoEagle2's load factor)."""
        sizes = sorted(int(s) for s in samples)
        best = [min(samples[s]) for s in sizes]
        blocks: list[list[float]] = []  # [sum, count]
        for m in best:
            blocks.append([m, 1])
            while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
                s, c = blocks.pop()
                blocks[-1][0] += s
                blocks[-1][1] += c
        fitted = [b[0] / b[1] for b in blocks for _ in range(int(b[1]))]
        return cls(sizes, fitted, dict(meta or {}), {str(s): list(map(float, samples[s])) for s in sizes})

    def __call__(self, tokens: int | float) -> float:
        """T at one size: linear between knots, the end slopes beyond."""
        xs, ys, t = self.sizes, self.seconds, float(tokens)
        if len(xs) == 1:
            return ys[0]
        i = min(max(bisect.bisect_left(xs, t), 1), len(xs) - 1)
        y = ys[i - 1] + (t - xs[i - 1]) * (ys[i] - ys[i - 1]) / (xs[i] - xs[i - 1])
        return max(y, ys[0] * 0.5)

    @property
    def max_tokens(self) -> int:
        return self.sizes[-1]

    def to_json(self) -> str:
        return json.dumps({"schema": CALIBRATION_SCHEMA, **asdict(self)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "LatencyModel":
        raw = json.loads(text)
        if raw.get("schema") != CALIBRATION_SCHEMA:
            raise ValueError(f"not a latency calibration (schema {raw.get('schema')!r})")
        return cls(raw["sizes"], raw["seconds"], raw.get("meta", {}), raw.get("samples", {}))


# ---- calibration -------------------------------------------------------------------------
def calibration_key(model, device: torch.device, dtype: torch.dtype, prefix_len: int, sizes) -> str:
    m = machine_info()
    cfg = model.config
    ident = {
        "host": m["host"], "cpu": m["cpu"], "cpu_capability": m["cpu_capability"], "cpu_count": m["cpu_count"],
        "threads": m["torch_threads"], "torch": m["torch"],
        "device_map": sorted(set(map(str, (getattr(model, "hf_device_map", None) or {}).values()))),
        "transformers": m["transformers"], "device": str(device.type),
        "gpu": m["gpu"] if device.type == "cuda" else None,
        "model": getattr(cfg, "_name_or_path", "") or "", "model_type": getattr(cfg, "model_type", ""),
        "hidden": getattr(cfg, "hidden_size", 0), "layers": getattr(cfg, "num_hidden_layers", 0),
        "vocab": getattr(cfg, "vocab_size", 0), "dtype": str(dtype), "prefix": prefix_len, "sizes": list(sizes),
        "fp16_weights": packed_format(model) is FBGEMM_FP16,
    }
    packed = packed_format(model)
    if packed is not None and packed is not FBGEMM_FP16:  # a curve timed on plain layers is not this one's
        ident["packed"] = packed.name
    if has_shared_products(model):  # keys of earlier curves stay valid for the layout they timed
        ident["fp16_shared_products"] = True
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _calibration_tree(n: int):
    """A bushy tree of n tokens (parent of i is (i-1)//2): realistic positions and mask."""
    from .tree import DraftTree

    return DraftTree(torch.zeros(n, dtype=torch.long), [-1] + [(i - 1) // 2 for i in range(1, n)])


@torch.inference_mode()
def calibrate(model, sizes=CALIBRATION_SIZES, prefix_len: int = DEFAULT_PREFIX, repeats: int = 7,
              seed: int = 0, progress=None) -> LatencyModel:
    """Time target forwards of each tree size after a prefix of `prefix_len` tokens.

    Sizes are visited round-robin (so a slow spell on a shared machine hits all of them), each
    after one untimed warm-up, and the cache is truncated back to the prefix after every forward.
    """
    from . import cache as kv
    from .models import target_forward

    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"calibration sizes must be >= 1, got {sizes}")
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    p = next(model.parameters())
    device, dtype = p.device, p.dtype
    vocab = int(model.config.vocab_size)
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
    prefix_len = max(1, min(prefix_len, limit - sizes[-1] - 1))
    gen = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, vocab, (prefix_len,), generator=gen).to(device)
    cache = kv.new_cache()  # the decoder's cache
    target_forward(model, prefix, cache, last_logits_only=True)
    trees = {n: _calibration_tree(n) for n in sizes}
    tokens = {n: torch.randint(0, vocab, (n,), generator=gen).to(device) for n in sizes}

    out_dev = output_device(model)  # the last stage: when it is done, every stage is

    def one(n: int) -> float:
        t0 = clock(out_dev)
        tree = trees[n]
        mask = tree.attention_mask(prefix_len, dtype, device) if n > 1 else None
        target_forward(model, tokens[n], cache, tree.position_ids(prefix_len, device), mask)
        dt = clock(out_dev) - t0
        kv.truncate(cache, prefix_len)
        return dt

    for n in sizes:
        one(n)  # warm-up: first calls of a shape allocate
    samples: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(repeats):
        for n in sizes:
            samples[n].append(one(n))
            if progress is not None:
                progress.update(1)
    meta = {"prefix_len": prefix_len, "repeats": repeats, "device": str(device), "dtype": str(dtype),
            "model": getattr(model.config, "_name_or_path", ""), "machine": machine_info(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    return LatencyModel.fit(samples, meta)


_CALIBRATION_LOCK = threading.Lock()  # one calibration at a time: concurrent ones would time each other


def load_or_calibrate(model, sizes=CALIBRATION_SIZES, prefix_len: int = DEFAULT_PREFIX, repeats: int = 7,
                      refresh: bool = False, use_cache: bool = True, progress=None) -> LatencyModel:
    """The cached calibration for this machine + model + dtype, measuring it if missing."""
    with _CALIBRATION_LOCK:
        return _load_or_calibrate(model, sizes, prefix_len, repeats, refresh, use_cache, progress)


def _load_or_calibrate(model, sizes, prefix_len, repeats, refresh, use_cache, progress) -> LatencyModel:
    from .models import cache_dir

    p = next(model.parameters())
    path = cache_dir() / "latency" / f"{calibration_key(model, p.device, p.dtype, prefix_len, sizes)}.json"
    if use_cache and not refresh and path.exists():
        try:
            lat = LatencyModel.from_json(path.read_text())
            lat.meta["cache_file"], lat.meta["cached"] = str(path), True
            return lat
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):
            pass  # a stale or broken file: measure again
    lat = calibrate(model, sizes, prefix_len, repeats, progress=progress)
    if use_cache:
        write_text_atomic(path, lat.to_json())
    lat.meta["cache_file"], lat.meta["cached"] = str(path), False
    return lat


# ---- the policy --------------------------------------------------------------------------
class Rolling:
    """Median of the last `window` samples: robust to the odd slow call on a shared machine."""

    def __init__(self, window: int = 64, initial: float | None = None, skip: int = 0):
        self.samples: deque[float] = deque(maxlen=window)
        self.initial = initial
        self.skip = skip  # the first calls of a shape allocate and compile: not typical
        self._median: float | None = None  # cached until the next sample

    def add(self, x: float) -> None:
        if self.skip > 0:
            self.skip -= 1
            return
        self.samples.append(float(x))
        self._median = None

    @property
    def value(self) -> float | None:
        if not self.samples:
            return self.initial
        if self._median is None:
            self._median = statistics.median(self.samples)
        return self._median

    def __len__(self) -> int:
        return len(self.samples)


class RatioOfSums:
    """sum(a) / sum(b) over the last `window` pairs, clipped; `initial` until `min_samples`."""

    def __init__(self, window: int = 64, initial: float = 1.0, min_samples: int = 8, lo: float = 0.05,
                 hi: float = 2.0):
        self.pairs: deque[tuple[float, float]] = deque(maxlen=window)
        self.initial, self.min_samples, self.lo, self.hi = initial, min_samples, lo, hi
        self.value = initial  # recomputed on each add: read several times a cycle

    def add(self, a: float, b: float) -> None:
        self.pairs.append((float(a), float(b)))
        den = sum(b for _, b in self.pairs)
        if len(self.pairs) < self.min_samples or den <= 0:
            self.value = self.initial
        else:
            self.value = min(self.hi, max(self.lo, sum(a for a, _ in self.pairs) / den))

    def __len__(self) -> int:
        return len(self.pairs)


class AutoEagle2(Eagle2):
    """EAGLE-2 whose tree size (and depth) maximise expected tokens per second on this machine.

    It steers through Eagle2's hooks (`keep_expanding` before each drafter step, `tree_size`
    before the rerank) and learns from what the decode loop tells every policy (`learn`:
    the verified tree, the accepted path, the cycle's timings).
    """

    name = "eagle2-auto"

    def __init__(self, latency: LatencyModel, top_k: int = 4, depth: int = AUTO_DEFAULT_DEPTH,
                 max_nodes: int | None = None, dynamic_depth: bool = True, window: int = 64,
                 explore_every: int = 32, calibrate_values: bool = True, lookup: int = 0, lookup_ngram: int = 3,
                 lookup_anchors: int = 0):
        cap = max_candidates(top_k, depth) if isinstance(top_k, int) and isinstance(depth, int) else 1
        ceiling = latency.max_tokens - 1 if max_nodes is None else max_nodes
        super().__init__(top_k=top_k, depth=depth, total_tokens=max(1, min(cap, ceiling)))
        if not isinstance(ceiling, int) or ceiling < 0:
            raise ValueError(f"max_nodes must be an int >= 0, got {max_nodes!r}")
        self.latency = latency
        self.max_nodes = min(cap, ceiling)
        self._verify_s = [latency(n + 1) for n in range(self.max_nodes + 1)]  # calibrated T(n + 1), n drafts
        self.dynamic_depth = dynamic_depth
        self.explore_every = explore_every  # take one step anyway after this many cycles without
        self.cycles_since_step = 0  # (keeps the step-time estimate fresh when it says "stop")
        # learnt online, as rolling medians
        self.step = Rolling(window, skip=2)  # one expansion step (seconds)
        self.overhead = Rolling(window, 0.0)  # commit + acceptance + cache update per cycle
        self.load = Rolling(window, 1.0)  # actual / calibrated verify time
        self.mass = Rolling(window, 1.0)  # share of the frontier's value its children carry (q)
        self.calibrate_values = calibrate_values
        self.accept = RatioOfSums(window)  # accepted drafts / sum of kept values (a), drafted nodes only
        # prompt lookup (eagle2.lookup): chains of up to `lookup` tokens copied from the context
        check_lookup(lookup)
        self.copier = None
        if lookup:
            from .lookup import PromptLookup

            self.copier = PromptLookup(lookup, lookup_ngram, lookup_anchors)
        self._copy_log_values: list[float] = []  # the root chain's values, for the stop rule
        # this cycle's expansion (set by expand, read by the hooks and by learn)
        self._pool = CandidatePool()
        self._t0 = 0.0
        self._step_start: float | None = None
        self._expand_s = 0.0
        self._nodes = 0
        self._kept_mass = 0.0  # the kept nodes' values summed (what learn weighs the accepted against)
        # what was chosen (for reports)
        self.cycles = 0
        self.nodes_total = 0
        self.depth_total = 0

    def describe(self) -> dict:
        return {"policy": self.name, "top_k": self.top_k, "depth": self.depth, "total_tokens": "auto",
                "max_nodes": self.max_nodes, "dynamic_depth": self.dynamic_depth,
                "calibrate_values": self.calibrate_values,
                **({"lookup": self.copier.max_len, "lookup_anchors": self.copier.anchors} if self.copier else {})}

    def stats(self) -> dict:
        """Running averages of the choices and of what was learnt."""
        c = max(1, self.cycles)
        return {"cycles": self.cycles, "mean_nodes": self.nodes_total / c, "mean_depth": self.depth_total / c,
                "step_ms": None if self.step_s is None else 1e3 * self.step_s,
                "overhead_ms": None if self.overhead_s is None else 1e3 * self.overhead_s,
                "verify_scale": self.verify_scale, "step_mass": self.step_mass, "value_scale": self.value_scale}

    # ---- the cost model ------------------------------------------------------------------
    @property
    def step_s(self) -> float | None:
        return self.step.value

    @property
    def overhead_s(self) -> float:
        return self.overhead.value

    @property
    def verify_scale(self) -> float:
        return self.load.value

    @property
    def step_mass(self) -> float:
        return self.mass.value

    @property
    def value_scale(self) -> float:
        return self.accept.value if self.calibrate_values else 1.0

    def _top_mass(self, log_values) -> list[float]:
        """The sums of the n largest values, n = 0, 1, ..., max_nodes (fewer if there are fewer
        candidates). Plain Python over a list: a few dozen values, asked once or twice per drafter
        step, where tensor ops on the host would cost more than the arithmetic."""
        values = log_values.tolist() if isinstance(log_values, torch.Tensor) else list(log_values)
        mass = [0.0]
        for v in heapq.nlargest(self.max_nodes, values):
            mass.append(mass[-1] + math.exp(v))
        return mass

    def _expected_and_cost(self, mass: list[float], draft_s: float) -> tuple[list[float], list[float]]:
        """Expected tokens 1 + a * mass[n] for keeping the n most valuable candidates, and the
        cycle's seconds, for n = 0, 1, ... (as far as `mass` goes)."""
        a, s, fixed = self.value_scale, self.verify_scale, draft_s + self.overhead_s
        expected = [1.0 + a * m for m in mass]
        cost = [fixed + s * t for t in self._verify_s]  # verify T(n + 1): n drafts and the root, n <= max_nodes
        return expected, cost

    def rates(self, log_values, draft_s: float) -> list[float]:
        """Expected tokens per second for keeping n = 0, 1, ..., max_nodes of the candidates."""
        expected, cost = self._expected_and_cost(self._top_mass(log_values), draft_s)
        return [e / c for e, c in zip(expected, cost)]

    def choose_nodes(self, log_values, draft_s: float) -> int:
        """n* = argmax_n (1 + a * sum of the n largest values) / (draft + overhead + verify(n)).

        With sampled drafts, keeping the n-th best node may depend only on the n best values
        (verify.SampledDrafts), so the size is chosen node by node: the n-th is kept while
        nodes worth as much as it (those after it are worth no more) could still beat the best
        rate so far. Not simply "while the rate rises": a CPU's verify cost jumps from one token
        to two and is nearly flat up to four, so the rate can fall at the first node and rise
        past where it started by the third."""
        return self._choose(self._top_mass(log_values), draft_s)

    def _choose(self, mass: list[float], draft_s: float) -> int:
        """choose_nodes on the sums of the largest values (tree_size keeps them for learn)."""
        expected, cost = self._expected_and_cost(mass, draft_s)
        rates = [e / c for e, c in zip(expected, cost)]
        if self.drafts is None:
            return max(range(len(rates)), key=rates.__getitem__)  # the first maximum: the smaller tree
        # look as far as max_nodes, not as far as the candidates there are (how many there are can
        # depend on draws); the cost is linear in n between the latency curve's knots
        top, best, keep = self.max_nodes, rates[0], 0
        knots = [size - 1 for size in self.latency.sizes]
        for n in range(1, len(rates)):
            worth = expected[n] - expected[n - 1]  # a * the n-th value
            # nodes n .. m, each worth `worth`: on each linear piece of the cost the rate (linear /
            # linear) is monotone in m, so its best is at m = n, m = max_nodes or a knot
            ends = {n, top, *(k for k in knots if n < k < top)}
            if max((expected[n - 1] + (m - n + 1) * worth) / cost[m] for m in ends) <= best:
                break
            keep, best = n, max(best, rates[n])
        return keep

    def should_stop(self, pool: CandidatePool, frontier: torch.Tensor, elapsed: float) -> bool:
        """Before a drafter step: would the next level, born of `frontier`, raise the best rate,
        its new nodes paying their verify time? With sampled drafts: could it, by the bound that
        leaves their verify time out? (module doc) One host copy brings the pool's values and
        the frontier's."""
        lv = pool.log_value
        host = torch.cat([lv, lv.index_select(0, frontier.to(lv.device))]).tolist()
        values, frontier_values = host[:len(pool)] + self._copy_log_values, host[len(pool):]
        if self.drafts is not None:  # sampled drafts: the bound, from the frontier's best and what is worth more
            best = max(frontier_values)
            now = max(self.rates([v for v in values if v >= best], elapsed))
            return self.value_scale * self.step_mass * math.exp(best) / self.step_s <= now
        now = max(self.rates(values, elapsed))
        log_q = math.log(max(self.step_mass, 1e-12))
        children = [v + log_q for v in frontier_values]  # each parent's share in one child
        return max(self.rates(values + children, elapsed + self.step_s)) <= now

    def _learn_step_mass(self, pool: CandidatePool) -> None:
        """q: per level, (value of the new children) / (value of the frontier that bore them)."""
        if pool.max_depth < 2:
            return
        n = len(pool)
        host = torch.cat([pool.log_value.double(), pool.depth.double()]).tolist()  # one host copy
        level: list[list[float]] = [[] for _ in range(pool.max_depth + 1)]
        for v, d in zip(host[:n], host[n:]):
            level[int(d)].append(math.exp(v))
        for d in range(1, pool.max_depth):
            parents, children = sum(heapq.nlargest(self.top_k, level[d])), sum(level[d + 1])
            if parents > 0:
                self.mass.add(min(1.0, children / parents))

    # ---- Eagle2 hooks ----------------------------------------------------------------------
    def expand(self, root_logprobs, drafter, pool: CandidatePool, observer, cycle) -> None:
        """Eagle2.expand (ended early by keep_expanding), then the copied chains of prompt lookup."""
        self._t0 = clock(root_logprobs.device)
        self._step_start = None
        self.cycles_since_step += 1
        self._copy_log_values = self.copier.propose_root(self.value_scale) if self.copier else []
        super().expand(root_logprobs, drafter, pool, observer, cycle)
        self._learn_step_mass(pool)
        if self.copier and self.drafts is None:  # sampled drafts: after the drawn nodes are chosen (select)
            self._merge_copies(pool, observer, cycle)

    def _merge_copies(self, pool: CandidatePool, observer, cycle: int, kept: set[int] | None = None) -> int:
        """Merge this cycle's copied chains into the pool; returns the pool size before them."""
        before, steps = len(pool), pool.max_depth
        self.copier.merge(pool, self.value_scale, kept)
        if observer and len(pool) > before:  # the copied nodes, as one more step of the trace
            anchors = sorted({c.anchor for c in self.copier.chains})
            observer.on_expand(cycle, ExpansionStep(steps + 1, anchors, pool.records(range(before, len(pool))), []))
        return before

    def keep_expanding(self, pool: CandidatePool, frontier: torch.Tensor, step: int) -> bool:
        """Times each expansion step and stops when the next one cannot pay for itself."""
        now = clock(pool.device)
        if self._step_start is not None:  # one whole expansion step: drafter + top-k + bookkeeping
            self.step.add(now - self._step_start)
        if (self.dynamic_depth and self.step_s is not None and self.cycles_since_step < self.explore_every
                and self.should_stop(pool, frontier, now - self._t0)):
            return False
        self._step_start = now
        self.cycles_since_step = 0
        return True

    def tree_size(self, pool: CandidatePool) -> int:
        self._expand_s = clock(pool.device) - self._t0
        mass = self._top_mass(pool.log_value)
        n = self._choose(mass, self._expand_s)
        self._pool, self._nodes, self._kept_mass = pool, n, mass[n]
        self.cycles += 1
        self.nodes_total += n
        self.depth_total += pool.max_depth
        return n

    def select(self, pool: CandidatePool, root_token: int, observer, cycle: int) -> DraftTree:
        """With sampled drafts and prompt lookup: first the drawn nodes, by their rank values
        alone (what keeps sampling exact: verify.SampledDrafts), then the copied chains below
        them (lookup.merge_chain with `kept`), as many copies as raise the expected rate; the
        copies are fixed candidates, tried after a node's drawn children."""
        if not (self.copier and self.drafts is not None):
            return super().select(pool, root_token, observer, cycle)
        n = self.tree_size(pool)
        keep = pool.top(n)
        before = self._merge_copies(pool, observer, cycle, set(keep.tolist()))
        copies = self._copies_worth_verifying(pool, keep, before)
        self._nodes += copies.shape[0]
        self.nodes_total += copies.shape[0]
        return pool.select(root_token, torch.cat([keep, copies]).sort().values)

    def _copies_worth_verifying(self, pool: CandidatePool, keep: torch.Tensor, first: int) -> torch.Tensor:
        """The copied candidates (pool ids `first`...) to verify beside the kept drawn ones: the
        most valuable L, for the L with the best expected tokens per second (values fall along
        a chain and ties keep creation order, so every copy's parent comes with it)."""
        copies = torch.arange(first, len(pool), device=pool.device)
        room = self.max_nodes - keep.shape[0]
        if not copies.shape[0] or room <= 0:
            return copies[:0]
        order = torch.sort(-pool.log_value[first:], stable=True).indices[:room]
        host = torch.cat([pool.log_value.index_select(0, keep), pool.log_value[first:].index_select(0, order)])
        values = host.double().exp().tolist()
        n = keep.shape[0]
        a, s, fixed = self.value_scale, self.verify_scale, self._expand_s + self.overhead_s
        expected = 1.0 + a * sum(values[:n])
        best, take = expected / (fixed + s * self._verify_s[n]), 0
        for L, v in enumerate(values[n:], start=1):
            expected += a * v
            rate = expected / (fixed + s * self._verify_s[n + L])
            if rate > best:
                best, take = rate, L
        return (order[:take] + first).sort().values

    def draft(self, root_token, root_logprobs, drafter, observer=None, cycle=0) -> DraftTree:
        tree = super().draft(root_token, root_logprobs, drafter, observer, cycle)
        if self.copier:
            self.copier.mark_kept(tree.candidate_ids)
        return tree

    # ---- learning from the decode loop -----------------------------------------------------
    def start(self, context: list[int]) -> None:
        if self.copier:
            self.copier.start(context)

    def learn(self, cycle: int, tree: DraftTree, verdict: Verdict, tokens: list[int], timings: Timings) -> None:
        """The value scale a (accepted drafts against the values the kept nodes promised, on
        drafted-only paths), the copied chains' acceptance, the verify load factor and the
        rest of the cycle's time."""
        if self.copier is None:  # every node drafted: the kept values' sum is on the host already
            self.accept.add(len(verdict.path) - 1, self._kept_mass if tree.size else 0.0)
        else:
            self.accept.add(*drafted_outcome(tree, self._pool, verdict.path))
        if self.copier:
            self.copier.learn(verdict.accepted)
            self.copier.extend(tokens)
        predicted = self.latency(self._nodes + 1)
        if predicted > 0:
            self.load.add(min(5.0, max(0.2, timings.verify_s / predicted)))
        self.overhead.add(max(0.0, timings.draft_s - self._expand_s) + timings.update_s)


def drafted_outcome(tree: DraftTree, pool: CandidatePool, path: list[int]) -> tuple[int, float]:
    """(accepted nodes, sum of kept values) over the nodes whose whole path the drafter
    proposed: copied tokens (whose confidences are divided by the value scale) must not feed
    back into it. Without prompt lookup every node was drafted: `learn` uses the sum the size
    choice already holds on the host instead."""
    if not tree.size:
        return 0, 0.0
    copied = pool.source[tree.candidates.clamp_min(0)] != SOURCES.index("draft")
    copied[0] = False
    drafted = ~(tree.ancestor_matrix() & copied[None, :]).any(dim=-1)  # no copied node on the path
    on_path = torch.zeros_like(drafted)
    on_path[path] = True
    both = torch.stack([(drafted & on_path)[1:].sum().double(), (tree.log_values.double().exp() * drafted)[1:].sum()])
    accepted, expected = both.tolist()
    return int(accepted), expected


def auto_policy(model, top_k: int | None = None, depth: int | None = None, refresh: bool = False,
                **kwargs) -> AutoEagle2:
    """An AutoEagle2 for a target model (or eagle2.Target), calibrating it on first use."""
    model = getattr(model, "model", model) if not isinstance(model, torch.nn.Module) else model
    latency = load_or_calibrate(model, refresh=refresh)
    sizes = {k: v for k, v in (("top_k", top_k), ("depth", depth or AUTO_DEFAULT_DEPTH)) if v is not None}
    return AutoEagle2(latency, **sizes, **kwargs)
