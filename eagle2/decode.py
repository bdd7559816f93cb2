"""The decode loop: prefill → draft a tree → verify it in one target forward → accept → compact.

    seq ── policy.draft ──> DraftTree ── target(tree mask) ──> logits ── accept ──> path + bonus
     ^                                                                                 │
     └──────────── keep only the accepted path in the target's and drafter's caches ◄──┘

The policy is told each cycle's outcome (`Policy.learn`: the tree, the accepted path, the
timings) and may adapt; observers are told what happened and never change a token. Without a
recording observer a greedy cycle brings one small tensor back to the host (the accepted path,
the rejected children, the tree's tokens and the bonus token, greedy_accept); a sampled cycle
walks the tree on the host. Timings synchronise the device first (models.clock).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from . import cache as kv
from .attention import use_tree_attention
from .models import clock, output_device, target_forward
from .policies import Policy, Vanilla
from .trace import Observer, Timings, Verification, VerifiedNode
from .tree import DraftTree
from .verify import (RowProbs, SampledDrafts, Verdict, argmax, check_sampling, greedy_accept, sample_accept,
                     sample_index, target_probs)


@dataclass
class CycleStats:
    tree_size: int  # drafted nodes verified
    accepted: int  # drafted tokens accepted
    new_tokens: int  # tokens emitted (accepted + bonus, cut at EOS / the budget)
    draft_s: float
    verify_s: float
    update_s: float


@dataclass
class GenerationResult:
    prompt_tokens: list[int]
    tokens: list[int]  # new tokens, the first one from the prefill
    origins: list[str]  # per token: "target" (prefill or bonus) or "draft" (accepted draft)
    token_cycles: list[int]  # per token: the cycle that emitted it (-1 = prefill)
    cycles: list[CycleStats] = field(default_factory=list)
    prefill_s: float = 0.0
    seconds: float = 0.0
    stop_reason: str = "length"
    policy: dict = field(default_factory=dict)
    text: str = ""

    @property
    def target_forwards(self) -> int:
        return 1 + len(self.cycles)

    @property
    def tau(self) -> float:
        """New tokens per target forward (1.0 for vanilla decoding)."""
        return len(self.tokens) / self.target_forwards

    @property
    def mean_accepted(self) -> float:
        """Mean tokens per drafting cycle, EAGLE's τ (accepted drafts + the bonus token)."""
        return sum(c.new_tokens for c in self.cycles) / max(1, len(self.cycles))

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict:
        draft = sum(c.draft_s for c in self.cycles)
        verify = sum(c.verify_s for c in self.cycles)
        update = sum(c.update_s for c in self.cycles)
        return {
            "new_tokens": len(self.tokens), "cycles": len(self.cycles), "tau": round(self.tau, 4),
            "mean_accepted": round(self.mean_accepted, 4), "seconds": round(self.seconds, 4),
            "tokens_per_s": round(self.tokens_per_s, 3), "prefill_s": round(self.prefill_s, 4),
            "draft_s": round(draft, 4), "verify_s": round(verify, 4), "update_s": round(update, 4),
            "stop_reason": self.stop_reason, **self.policy,
        }


class Observers(Observer):
    """Fan-out to several observers; falsy when nobody wants records (so none are built)."""

    def __init__(self, observers):
        self.all = [o for o in observers if o is not None]
        self.recording = [o for o in self.all if o.wants_records]

    def __bool__(self) -> bool:
        return bool(self.recording)

    def on_start(self, *a):
        for o in self.all:
            o.on_start(*a)

    def on_expand(self, *a):
        for o in self.recording:
            o.on_expand(*a)

    def on_rerank(self, *a):
        for o in self.recording:
            o.on_rerank(*a)

    def on_verify(self, *a):
        for o in self.recording:
            o.on_verify(*a)

    def on_tokens(self, *a):
        for o in self.all:
            o.on_tokens(*a)

    def on_cycle_end(self, *a):
        for o in self.all:
            o.on_cycle_end(*a)

    def on_finish(self, *a):
        for o in self.all:
            o.on_finish(*a)


def context_limit(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)


def check_request(model, prompt_len: int, max_new_tokens: int) -> None:
    if prompt_len < 1:
        raise ValueError("prompt is empty")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    limit = context_limit(model)
    if prompt_len + max_new_tokens > limit:
        raise ValueError(f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                         f"model's context of {limit} tokens")


@dataclass
class Sampler:
    """Greedy (temperature 0) or sampling from the processed target distribution."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    generator: torch.Generator | None = None

    @classmethod
    def make(cls, temperature: float, top_p: float, top_k: int, seed: int | None, device) -> "Sampler":
        check_sampling(temperature, top_p, top_k)
        gen = None
        if temperature > 0:
            gen = torch.Generator(device=device)
            gen.manual_seed(seed if seed is not None else int(torch.seed() % 2**63))
        return cls(temperature, top_p, top_k, gen)

    def probs(self, logits: torch.Tensor) -> RowProbs | None:
        """The processed target distribution of each node, computed per row when asked for."""
        return RowProbs(logits, self.temperature, self.top_p, self.top_k) if self.temperature > 0 else None

    def choose(self, logits_row: torch.Tensor) -> int:
        if self.temperature <= 0:
            return int(argmax(logits_row))
        return sample_index(target_probs(logits_row, self.temperature, self.top_p, self.top_k), self.generator)

    def sampled_drafts(self) -> SampledDrafts | None:
        """What a policy may draw its drafts with (verify.SampledDrafts); None when greedy."""
        if self.temperature <= 0:
            return None
        return SampledDrafts(self.temperature, self.top_p, self.top_k, self.generator)

    def accept(self, tree: DraftTree, logits: torch.Tensor, probs, drafts: SampledDrafts | None = None) -> Verdict:
        if probs is None:
            return greedy_accept(tree, logits)
        return sample_accept(tree, probs, self.generator, drafts)


@dataclass
class Decoding:
    """One generation in progress: the caches, the accepted sequence and what was emitted."""

    model: object
    policy: Policy
    drafter: object
    sampler: Sampler
    observers: Observers
    eos: set[int]
    max_new_tokens: int
    result: GenerationResult
    cache: object  # eagle2.cache.new_cache(): a DynamicCache
    seq: torch.Tensor  # prompt + accepted tokens, on the model's device
    layers: tuple[int, ...] | None  # target layers the drafter reads (None: the last hidden state)
    root_logprobs: torch.Tensor | None = None
    commit_s: float = 0.0

    @property
    def device(self) -> torch.device:
        return self.seq.device

    def commit(self, features: torch.Tensor | None) -> None:
        """Feed the newly accepted tokens (and the target's features there) to the drafter."""
        t = clock(self.device)
        self.root_logprobs = self.drafter.commit(self.seq, features if self.drafter.needs_features else None)
        self.commit_s = clock(self.device) - t

    def cycle(self, cycle: int, root: int) -> tuple[list[int], bool]:
        """Draft a tree, verify it in one target forward, accept, compact the cache."""
        model, obs, dev = self.model, self.observers, self.device
        prefix = self.seq.numel() - 1  # the root (newest token) is not in the target's cache yet
        t0 = clock(dev)
        if self.policy.drafts is not None:
            self.policy.drafts.begin()
        tree = self.policy.draft(root, self.root_logprobs, self.drafter, obs or None, cycle)
        t1 = clock(dev)
        mask = tree.attention_mask(prefix, model.dtype, dev) if len(tree) > 1 else None
        hidden, logits = target_forward(model, tree.tokens.to(dev), self.cache, tree.position_ids(prefix, dev),
                                        mask, self.layers)
        t2 = clock(dev)
        probs = self.sampler.probs(logits)
        verdict = self.sampler.accept(tree, logits, probs, self.policy.drafts)
        if obs:
            obs.on_verify(cycle, _verification_record(tree, logits, probs, verdict))
        tokens, done = _emitted(verdict, self.eos, self.max_new_tokens - len(self.result.tokens))
        self.emit(cycle, tokens, min(len(tokens), len(verdict.accepted)), done)
        if not done:
            kv.keep_prefix_and(self.cache, prefix, verdict.path)
        t3 = clock(dev)
        stats = CycleStats(tree.size, len(verdict.path) - 1, len(tokens), self.commit_s + (t1 - t0), t2 - t1, t3 - t2)
        self.result.cycles.append(stats)
        timings = Timings(stats.draft_s, stats.verify_s, stats.update_s)
        self.policy.learn(cycle, tree, verdict, tokens, timings)
        obs.on_cycle_end(cycle, root, timings)
        if not done and self.policy.needs_drafter:
            self.commit(hidden[verdict.path])
        return tokens, done

    def emit(self, cycle: int, tokens: list[int], drafted: int, done: bool) -> None:
        r = self.result
        origins = ["draft"] * drafted + ["target"] * (len(tokens) - drafted)
        r.tokens += tokens
        r.origins += origins
        r.token_cycles += [cycle] * len(tokens)
        if done:
            r.stop_reason = "eos" if tokens[-1] in self.eos else "length"
        self.observers.on_tokens(cycle, tokens, origins)
        self.seq = torch.cat([self.seq, torch.tensor(tokens, device=self.device)])


@torch.inference_mode()
def generate(
    model,
    input_ids,
    policy: Policy | None = None,
    drafter=None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    sample_top_k: int = 0,
    seed: int | None = None,
    eos_token_ids=(),
    observers=(),
    meta: dict | None = None,
) -> GenerationResult:
    """Speculative decoding with a draft tree. `policy=Vanilla()` gives plain decoding."""
    policy = policy or Vanilla()
    use_tree_attention(model)
    device = output_device(model)  # the lm_head's: logits, features, drafter (a device map spreads the rest)
    sampler = Sampler.make(temperature, top_p, sample_top_k, seed, device)
    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(-1).to(device)
    check_request(model, ids.numel(), max_new_tokens)
    if policy.needs_drafter and drafter is None:
        raise ValueError(f"policy {policy.name!r} needs a drafter (an EAGLE head or a draft model)")
    policy.use_sampled_drafts(sampler.sampled_drafts())  # taken only by policies that can keep it exact
    t_start = clock(device)
    cache = kv.new_cache()
    layers = drafter.feature_layers if drafter is not None and policy.needs_drafter else None
    hidden, logits = target_forward(model, ids, cache, feature_layers=layers, last_logits_only=True)
    first = sampler.choose(logits[-1])
    sampled = ({"drafts": "sampled", "draft_temperature": policy.drafts.draft_temperature}
               if policy.drafts is not None else {})
    described = dict(policy.describe(), **sampled)
    result = GenerationResult(ids.tolist(), [], [], [], prefill_s=clock(device) - t_start, policy=described)
    run = Decoding(model, policy, drafter, sampler, Observers(observers), set(int(e) for e in eos_token_ids),
                   max_new_tokens, result, cache, ids, layers)
    policy.start(result.prompt_tokens + [first])
    run.observers.on_start(dict(meta or {}, device=str(device), **described), result.prompt_tokens, first)
    done = first in run.eos or max_new_tokens == 1
    run.emit(-1, [first], 0, done)
    if not done and policy.needs_drafter:
        drafter.reset()
        run.commit(hidden)
    cycle, root = 0, first  # the root: the newest token, on the host
    while not done:
        tokens, done = run.cycle(cycle, root)
        cycle, root = cycle + 1, tokens[-1]
    result.seconds = clock(device) - t_start
    run.observers.on_finish(result.summary())
    return result


def _emitted(verdict: Verdict, eos: set[int], budget: int) -> tuple[list[int], bool]:
    """The accepted drafts + the bonus token, cut after the first EOS or at the budget."""
    tokens = verdict.accepted + [verdict.bonus]
    for i, tok in enumerate(tokens):
        if tok in eos or i + 1 >= budget:
            return tokens[: i + 1], True
    return tokens, False


def _verification_record(tree: DraftTree, logits: torch.Tensor, probs, verdict: Verdict) -> Verification:
    """What the target thought of every node (only built when someone records)."""
    p = probs.full() if probs is not None else torch.softmax(logits.float(), dim=-1)
    top_p, top_tok = p.max(dim=-1)
    tokens, parents = tree.tokens.tolist(), tree.parents.tolist()
    par_idx = tree.parents.clamp_min(0)
    tok_p = p[par_idx, tree.tokens].tolist()
    on_path, rejected = set(verdict.path), set(verdict.rejected)
    values = tree.log_values.exp().tolist()
    depths = tree.depths.tolist()
    top_p_l, top_tok_l = top_p.tolist(), top_tok.tolist()
    nodes = []
    for i in range(len(tree)):
        status = "root" if i == 0 else "accepted" if i in on_path else "rejected" if i in rejected else "unreached"
        par = parents[i]
        nodes.append(VerifiedNode(
            node=i, candidate=tree.candidate_ids[i], token=tokens[i], parent=par, depth=depths[i],
            draft_value=values[i], target_prob=tok_p[i] if i else 1.0,
            target_top_token=top_tok_l[par] if i else top_tok_l[0],
            target_top_prob=top_p_l[par] if i else top_p_l[0], status=status))
    return Verification(nodes, list(verdict.path), int(verdict.bonus))


@torch.inference_mode()
def hf_generate(model, input_ids, max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                sample_top_k: int = 0, seed: int | None = None, eos_token_ids=(),
                prompt_lookup: int | None = None) -> GenerationResult:
    """HF `generate()` as a baseline (prompt_lookup=N turns on prompt lookup decoding)."""
    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(1, -1).to(next(model.parameters()).device)
    check_request(model, ids.shape[1], max_new_tokens)
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=temperature > 0, eos_token_id=list(eos_token_ids) or None,
                  pad_token_id=(list(eos_token_ids) or [0])[0])
    if temperature > 0:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=sample_top_k)
        if seed is not None:
            torch.manual_seed(seed)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if prompt_lookup:
        kwargs["prompt_lookup_num_tokens"] = prompt_lookup
    t0 = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    seconds = time.perf_counter() - t0
    new = out[0, ids.shape[1]:].tolist()
    eos = set(eos_token_ids)
    stop = "eos" if new and new[-1] in eos else "length"
    return GenerationResult(ids[0].tolist(), new, ["target"] * len(new), [-1] * len(new), seconds=seconds,
                            stop_reason=stop, policy={"policy": "pld" if prompt_lookup else "hf"})
