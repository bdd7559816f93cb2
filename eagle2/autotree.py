"""Hardware-aware tree size: keep the draft tree that maximises expected tokens per second.

EAGLE-2 keeps a fixed number of reranked nodes (`total_tokens`). The best number depends on
the machine: on a GPU a 60-token verify costs about what a 1-token one does, on a CPU it can
cost several times more. `AutoEagle2` measures this instead of guessing.

Calibration (once per machine + model + dtype, cached as JSON under `cache_dir()/latency/`):
a few timed target forwards of n = 1, 2, 4, ..., 64 tree tokens after a realistic prefix,
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

Draft probabilities are over-confident as acceptance estimates (for the shipped SmolLM2 head,
on prompts of our own, kept nodes promised 1.45 accepted drafts for every one the target
took), so `a` = accepted drafts / sum of the kept values over the recent cycles (learnt
online when the policy also observes the decode; 1 until 8 cycles are seen).

Prompt lookup (lookup=N, eagle2/lookup.py): chains of up to N tokens copied from the context
join the candidates before the choice, with their measured acceptance rates as confidences, so
the same rule decides how many copied and drafted tokens are worth verifying.

Dynamic depth. Before each drafter step (cost c, learnt online) the frontier F holds the
top_k nodes of the deepest level. The step creates their children, whose values sum to at
most V_F = sum of v_f over F (a child's value is its parent's times a probability, and each
parent's children's probabilities sum to at most 1). Every later step adds at most as much
again (its parents are some of these children). Ignoring the extra verify time those nodes
would cost (which only flatters the step), any number j of further steps gives a rate of at
most

    max_m (E(m) + j G) / (C(m) + j c)  <=  max(R*, G / c),     R* = max_m E(m) / C(m),

because a mediant never exceeds the larger of its two ratios. So no run of further steps can
beat what we already have when G / c <= R*, and we stop. We use G = a q V_F, where q is the
share of its frontier's value that one step's children actually carry (learnt online): an
expectation rather than the bound, which a = q = 1 gives back (it never stops a step that
could pay, by the draft's own estimates).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import torch

from .policies import CandidatePool, Eagle2, check_lookup
from .trace import ExpansionStep, Observer
from .tree import max_candidates

CALIBRATION_SIZES = (1, 2, 4, 8, 16, 32, 48, 64)
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
        return float(self.curve(torch.tensor([float(tokens)]))[0])

    def curve(self, tokens: torch.Tensor) -> torch.Tensor:
        """T at each of `tokens` (float tensor): linear between knots, the end slopes beyond."""
        xs = torch.tensor(self.sizes, dtype=torch.float64)
        ys = torch.tensor(self.seconds, dtype=torch.float64)
        t = tokens.to(torch.float64)
        if len(xs) == 1:
            return ys.expand_as(t).clone()
        i = torch.searchsorted(xs, t).clamp(1, len(xs) - 1)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return (y0 + (t - x0) * (y1 - y0) / (x1 - x0)).clamp_min(float(ys[0]) * 0.5)

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
def machine_info() -> dict:
    """What decides a forward's speed: processor, threads, accelerator, library versions."""
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    return info


def calibration_key(model, device: torch.device, dtype: torch.dtype, prefix_len: int, sizes) -> str:
    m = machine_info()
    cfg = model.config
    ident = {
        "cpu": m["cpu"], "cpu_count": m["cpu_count"], "threads": m["torch_threads"], "torch": m["torch"],
        "transformers": m["transformers"], "device": str(device.type),
        "gpu": m["gpu"] if device.type == "cuda" else None,
        "model": getattr(cfg, "_name_or_path", "") or "", "model_type": getattr(cfg, "model_type", ""),
        "hidden": getattr(cfg, "hidden_size", 0), "layers": getattr(cfg, "num_hidden_layers", 0),
        "vocab": getattr(cfg, "vocab_size", 0), "dtype": str(dtype), "prefix": prefix_len, "sizes": list(sizes),
    }
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
    from transformers import DynamicCache

    from . import cache as kv
    from .decode import target_forward

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
    cache = DynamicCache()
    target_forward(model, prefix, cache)
    trees = {n: _calibration_tree(n) for n in sizes}
    tokens = {n: torch.randint(0, vocab, (n,), generator=gen).to(device) for n in sizes}

    def one(n: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        tree = trees[n]
        mask = tree.attention_mask(prefix_len, dtype, device) if n > 1 else None
        target_forward(model, tokens[n], cache, tree.position_ids(prefix_len, device), mask)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
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
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}-{threading.get_ident()}")
        tmp.write_text(lat.to_json())
        os.replace(tmp, path)
    lat.meta["cache_file"], lat.meta["cached"] = str(path), False
    return lat


# ---- the policy --------------------------------------------------------------------------
class Rolling:
    """Median of the last `window` samples: robust to the odd slow call on a shared machine."""

    def __init__(self, window: int = 64, initial: float | None = None, skip: int = 0):
        self.samples: deque[float] = deque(maxlen=window)
        self.initial = initial
        self.skip = skip  # the first calls of a shape allocate and compile: not typical

    def add(self, x: float) -> None:
        if self.skip > 0:
            self.skip -= 1
            return
        self.samples.append(float(x))

    @property
    def value(self) -> float | None:
        return statistics.median(self.samples) if self.samples else self.initial

    def __len__(self) -> int:
        return len(self.samples)


class RatioOfSums:
    """sum(a) / sum(b) over the last `window` pairs, clipped; `initial` until `min_samples`."""

    def __init__(self, window: int = 64, initial: float = 1.0, min_samples: int = 8, lo: float = 0.05,
                 hi: float = 2.0):
        self.pairs: deque[tuple[float, float]] = deque(maxlen=window)
        self.initial, self.min_samples, self.lo, self.hi = initial, min_samples, lo, hi

    def add(self, a: float, b: float) -> None:
        self.pairs.append((float(a), float(b)))

    @property
    def value(self) -> float:
        den = sum(b for _, b in self.pairs)
        if len(self.pairs) < self.min_samples or den <= 0:
            return self.initial
        return min(self.hi, max(self.lo, sum(a for a, _ in self.pairs) / den))

    def __len__(self) -> int:
        return len(self.pairs)


class _StopExpansion(Exception):
    """Raised by the timing drafter proxy to end Eagle2.expand early (dynamic depth)."""


class _TimedDrafter:
    """Wraps the drafter during one expansion: times each step and, before a step, decides
    whether it can still pay for itself (if not, raises _StopExpansion; nothing is fed then,
    so the pool and the drafter stay consistent)."""

    def __init__(self, drafter, policy: "AutoEagle2", pool: CandidatePool, t0: float):
        self._drafter, self._policy, self._pool, self._t0 = drafter, policy, pool, t0
        self._last_start: float | None = None

    def __getattr__(self, name):
        return getattr(self._drafter, name)

    def step(self, tokens, parents):
        now = time.perf_counter()
        pol = self._policy
        if self._last_start is not None:  # one whole expansion step: drafter + top-k + bookkeeping
            pol.step.add(now - self._last_start)
        if (pol.dynamic_depth and pol.step_s is not None and pol.cycles_since_step < pol.explore_every
                and pol.should_stop(self._pool, now - self._t0)):
            raise _StopExpansion
        self._last_start = now
        out = self._drafter.step(tokens, parents)
        pol.cycles_since_step = 0
        return out


class AutoEagle2(Eagle2, Observer):
    """EAGLE-2 whose tree size (and depth) maximise expected tokens per second on this machine.

    Pass the policy also as an observer to `generate` (the bench does) so it learns the exact
    cycle timings; without that it estimates them from the gaps between its own calls.
    """

    name = "eagle2-auto"
    wants_records = False  # as an observer it only needs timings: the decoder builds no records

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
        # bookkeeping for the online estimates
        self._last_nodes = 0
        self._last_expand_s = 0.0
        self._last_expected = 0.0
        self._pool = CandidatePool()
        self._kept_children: dict[tuple[int, int], int] = {}
        self._kept_drafted: dict[int, bool] = {-1: True}
        self._last_end: float | None = None
        self._seen_cycle_end = -2
        self._cycle = -1
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

    def verify_time(self, nodes: torch.Tensor) -> torch.Tensor:
        """Predicted verify seconds for trees of `nodes` drafts (plus the root)."""
        return self.verify_scale * self.latency.curve(nodes.to(torch.float64) + 1)

    def rates(self, log_values, draft_s: float) -> torch.Tensor:
        """Expected tokens per second for keeping n = 0, 1, ..., max_nodes of the candidates."""
        lv = torch.as_tensor(log_values, dtype=torch.float64).reshape(-1)
        k = min(self.max_nodes, lv.numel())
        best = torch.topk(lv, k).values.exp() if k else lv[:0]
        expected = torch.cat([torch.ones(1, dtype=torch.float64), 1 + self.value_scale * best.cumsum(0)])
        n = torch.arange(k + 1, dtype=torch.float64)
        cost = draft_s + self.overhead_s + self.verify_time(n)
        return expected / cost

    def choose_nodes(self, log_values, draft_s: float) -> int:
        """n* = argmax_n (1 + a * sum of the n largest values) / (draft + overhead + verify(n))."""
        return int(torch.argmax(self.rates(log_values, draft_s)))  # first maximum: the smaller tree

    def should_stop(self, pool: CandidatePool, elapsed: float) -> bool:
        """Before a drafter step: can the next level still raise the best rate? (module doc)"""
        if not pool.depth:
            return False
        deepest = max(pool.depth)
        level = [v for v, d in zip(pool.log_value, pool.depth) if d == deepest]
        frontier = torch.topk(torch.tensor(level, dtype=torch.float64), min(self.top_k, len(level))).values
        gain = self.value_scale * self.step_mass * float(frontier.exp().sum())
        best_rate = float(self.rates(pool.log_value + self._copy_log_values, elapsed).max())
        return gain / self.step_s <= best_rate

    def _learn_step_mass(self, pool: CandidatePool) -> None:
        """q: per level, (value of the new children) / (value of the frontier that bore them)."""
        if not pool.depth:
            return
        by_depth: dict[int, list[float]] = {}
        for v, d in zip(pool.log_value, pool.depth):
            by_depth.setdefault(d, []).append(math.exp(v))
        for d in range(2, max(by_depth) + 1):
            parents = sorted(by_depth[d - 1], reverse=True)[: self.top_k]
            if sum(parents) > 0:
                self.mass.add(min(1.0, sum(by_depth[d]) / sum(parents)))

    # ---- Eagle2 hooks ----------------------------------------------------------------------
    def expand(self, root_logprobs, drafter, pool: CandidatePool, observer, cycle) -> None:
        """Eagle2.expand (unchanged, through a timing proxy that can end it early), then set
        total_tokens to this cycle's best size; Eagle2.draft reranks to it."""
        t0 = time.perf_counter()
        self._learn_from_gap(t0, cycle)
        self.cycles_since_step += 1
        self._copy_log_values = self.copier.propose_root(self.value_scale) if self.copier else []
        try:
            super().expand(root_logprobs, _TimedDrafter(drafter, self, pool, t0), pool, observer, cycle)
        except _StopExpansion:
            pass
        self._learn_step_mass(pool)
        if self.copier:
            before, steps = len(pool), max(pool.depth, default=0)
            self.copier.merge(pool, self.value_scale)
            if observer and len(pool) > before:  # the copied nodes, as one more step of the trace
                anchors = sorted({c.anchor for c in self.copier.chains})
                observer.on_expand(cycle, ExpansionStep(steps + 1, anchors, pool.records(range(before, len(pool))), []))
        elapsed = time.perf_counter() - t0
        n = self.choose_nodes(pool.log_value, elapsed)
        self.total_tokens = n
        self._pool = pool
        self._last_nodes, self._last_expand_s, self._cycle = n, elapsed, cycle
        self.cycles += 1
        self.nodes_total += n
        self.depth_total += max(pool.depth) if pool.depth else 0

    def draft(self, root_token, root_logprobs, drafter, observer=None, cycle=0):
        tree = super().draft(root_token, root_logprobs, drafter, observer, cycle)
        if self.copier:
            self.copier.mark_kept(tree.candidate_ids)
        self._remember_kept(tree.candidate_ids[1:])
        self._last_end = time.perf_counter()
        return tree

    # ---- learning the rest of a cycle ------------------------------------------------------
    def _learn_from_gap(self, now: float, cycle: int) -> None:
        """Without observer timings: the time since the last tree was handed over is the last
        verify + update + this commit; subtract the predicted verify to get the overhead."""
        if cycle == 0 or self._last_end is None or self._seen_cycle_end == cycle - 1 or self._cycle != cycle - 1:
            return
        gap = now - self._last_end
        predicted = float(self.verify_time(torch.tensor([float(self._last_nodes)]))[0])
        self.overhead.add(max(0.0, gap - predicted))

    def _remember_kept(self, kept: list[int]) -> None:
        """What the kept drafted nodes promise (their values' sum): `a` is learnt on nodes whose
        whole path the drafter proposed, so copied tokens (whose confidences are divided by `a`)
        cannot feed back into it."""
        pool = self._pool
        drafted: dict[int, bool] = {-1: True}
        for i in kept:  # parents first
            drafted[i] = pool.source[i] == "draft" and drafted[pool.parents[i]]
        self._kept_children = {(pool.parents[i], pool.tokens[i]): i for i in kept}
        self._kept_drafted = drafted
        self._last_expected = sum(math.exp(pool.log_value[i]) for i in kept if drafted[i])

    def _accepted_drafted(self, accepted: list[int]) -> int:
        """How many of the accepted tokens are nodes with a drafted-only path."""
        node, count = -1, 0
        for tok in accepted:
            node = self._kept_children.get((node, tok))
            if node is None:
                break
            count += self._kept_drafted[node]
        return count

    def on_start(self, meta, prompt_tokens, first_token) -> None:
        if self.copier:
            self.copier.start(prompt_tokens)

    def on_tokens(self, cycle, tokens, origins) -> None:
        """Accepted drafts against what the kept values promised: learns a (module doc); and
        the copied chains' acceptance by position (eagle2.lookup)."""
        if cycle == self._cycle and cycle >= 0:
            accepted = [t for t, o in zip(tokens, origins) if o == "draft"]
            self.accept.add(self._accepted_drafted(accepted), self._last_expected)
            if self.copier:
                self.copier.learn(accepted)
        if self.copier:
            self.copier.extend(tokens)

    def on_cycle_end(self, cycle, root_token, timings) -> None:
        """Exact timings from the decoder: learn the verify load factor and the overhead."""
        if cycle != self._cycle:
            return
        self._seen_cycle_end = cycle
        predicted = self.latency((self._last_nodes + 1))
        if predicted > 0:
            self.load.add(min(5.0, max(0.2, timings.verify_s / predicted)))
        self.overhead.add(max(0.0, timings.draft_s - self._last_expand_s) + timings.update_s)


def auto_policy(model, top_k: int | None = None, depth: int | None = None, refresh: bool = False,
                **kwargs) -> AutoEagle2:
    """An AutoEagle2 for a target model (or eagle2.Target), calibrating it on first use."""
    model = getattr(model, "model", model) if not isinstance(model, torch.nn.Module) else model
    latency = load_or_calibrate(model, refresh=refresh)
    sizes = {k: v for k, v in (("top_k", top_k), ("depth", depth or AUTO_DEFAULT_DEPTH)) if v is not None}
    return AutoEagle2(latency, **sizes, **kwargs)
