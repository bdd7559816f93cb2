"""Instrumentation: observers that watch a decode, and the Trace records they build.

Observers never steer: the decoder hands them finished facts (copies as plain Python values)
and ignores what they return. When no observer asks for records, the decoder builds none, so
an un-observed decode pays nothing for this module.

A Trace serialises to JSON (`schema` = TRACE_SCHEMA) and loads back, so the app can show a
run without a model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

TRACE_SCHEMA = "eagle2-trace/1"
MAX_TRACE_BYTES = 50 * 1024 * 1024


@dataclass
class Candidate:
    """A token proposed during expansion. `parent` is a candidate id, -1 for the root."""

    id: int
    token: int
    parent: int
    depth: int
    confidence: float  # draft probability of this token given its parent
    value: float  # product of confidences along the path
    source: str = "draft"  # "draft" (the drafter proposed it) or "lookup" (copied from the context)
    # ("both": proposed by the drafter and copied too; it is recorded with the drafter's step)


@dataclass
class ExpansionStep:
    step: int  # 1..depth: the depth of the candidates this step created
    frontier: list[int]  # candidate ids whose children were proposed (-1 = root)
    candidates: list[Candidate]  # the new candidates of this step
    chosen: list[int]  # candidate ids selected (top_k by value) to expand next


@dataclass
class RerankStep:
    kept: list[int]  # candidate ids that form the draft tree, parents first
    cutoff_value: float  # smallest kept value
    total_candidates: int


@dataclass
class VerifiedNode:
    """What the target thought of one tree node (node 0 is the root)."""

    node: int
    candidate: int  # candidate id (-1 for the root)
    token: int
    parent: int  # node index, -1 for the root
    depth: int
    draft_value: float
    target_prob: float  # target's probability of this token after its parent's context
    target_top_token: int  # what the target itself prefers after the parent
    target_top_prob: float
    status: str  # "root", "accepted", "rejected" (its parent was accepted) or "unreached"


@dataclass
class Verification:
    nodes: list[VerifiedNode]
    accepted_path: list[int]  # node indices, root first
    bonus_token: int  # the target's own token after the accepted path


@dataclass
class Timings:
    draft_s: float = 0.0
    verify_s: float = 0.0
    update_s: float = 0.0


@dataclass
class CycleRecord:
    index: int
    root_token: int
    expansions: list[ExpansionStep] = field(default_factory=list)
    rerank: RerankStep | None = None
    verification: Verification | None = None
    new_tokens: list[int] = field(default_factory=list)  # tokens this cycle emitted
    timings: Timings = field(default_factory=Timings)


@dataclass
class Trace:
    """Everything one generation did, cycle by cycle."""

    schema: str = TRACE_SCHEMA
    meta: dict[str, Any] = field(default_factory=dict)  # model, head, policy, parameters, prompt
    prompt_tokens: list[int] = field(default_factory=list)
    first_token: int | None = None  # the target's token from the prefill
    cycles: list[CycleRecord] = field(default_factory=list)
    output_tokens: list[int] = field(default_factory=list)
    token_text: dict[str, str] = field(default_factory=dict)  # id -> text, for model-free viewing
    summary: dict[str, Any] = field(default_factory=dict)  # tau, tokens/s, seconds, ...

    # ---- serialisation ------------------------------------------------------------------
    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(asdict(self), indent=indent, ensure_ascii=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def from_json(cls, text: str | bytes) -> "Trace":
        if isinstance(text, bytes):
            if len(text) > MAX_TRACE_BYTES:
                raise ValueError(f"trace is too large ({len(text) // 2**20} MiB > {MAX_TRACE_BYTES // 2**20} MiB)")
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError("trace is not UTF-8 text (is it a JSON file?)") from None
        if len(text) > MAX_TRACE_BYTES:
            raise ValueError(f"trace is too large (> {MAX_TRACE_BYTES // 2**20} MiB)")
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"trace is not valid JSON: {e.msg} at line {e.lineno}") from None
        if not isinstance(raw, dict) or raw.get("schema") != TRACE_SCHEMA:
            got = raw.get("schema") if isinstance(raw, dict) else type(raw).__name__
            raise ValueError(f"not an eagle2 trace (schema {got!r}, expected {TRACE_SCHEMA!r})")
        try:
            return _build(cls, raw)
        except (TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"trace is malformed: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> "Trace":
        p = Path(path)
        if p.stat().st_size > MAX_TRACE_BYTES:
            raise ValueError(f"trace {p} is too large")
        return cls.from_json(p.read_bytes())

    def text_of(self, token: int) -> str:
        return self.token_text.get(str(token), f"<{token}>")


_NESTED = {
    "cycles": CycleRecord, "expansions": ExpansionStep, "candidates": Candidate, "rerank": RerankStep,
    "verification": Verification, "nodes": VerifiedNode, "timings": Timings,
}


def _build(cls, raw: dict):
    """Rebuild nested dataclasses from plain dicts (field names say which class)."""
    if not isinstance(raw, dict):
        raise TypeError(f"{cls.__name__} must be an object, got {type(raw).__name__}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in raw:
            continue
        value, sub = raw[f.name], _NESTED.get(f.name)
        if sub is not None and isinstance(value, list):
            value = [_build(sub, v) for v in value]
        elif sub is not None and value is not None:
            value = _build(sub, value)
        kwargs[f.name] = value
    return cls(**kwargs)


class Observer:
    """Watches a decode. Override what you need; every hook gets finished, copied facts.

    Set `wants_records = False` for a cheap observer (e.g. streaming) that only needs
    `on_tokens`: then the decoder skips building expansion/verification records for it.
    """

    wants_records: bool = True

    def on_start(self, meta: dict, prompt_tokens: list[int], first_token: int) -> None: ...
    def on_expand(self, cycle: int, step: ExpansionStep) -> None: ...
    def on_rerank(self, cycle: int, rerank: RerankStep) -> None: ...
    def on_verify(self, cycle: int, verification: Verification) -> None: ...
    def on_tokens(self, cycle: int, tokens: list[int], origins: list[str]) -> None: ...
    def on_cycle_end(self, cycle: int, root_token: int, timings: Timings) -> None: ...
    def on_finish(self, summary: dict) -> None: ...


class TraceRecorder(Observer):
    """The observer that builds a Trace."""

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer
        self.trace = Trace()
        self._cycle: CycleRecord | None = None

    def _current(self, cycle: int) -> CycleRecord:
        if self._cycle is None or self._cycle.index != cycle:
            self._cycle = CycleRecord(index=cycle, root_token=-1)
        return self._cycle

    def on_start(self, meta, prompt_tokens, first_token):
        self.trace.meta = dict(meta)
        self.trace.prompt_tokens = list(prompt_tokens)
        self.trace.first_token = first_token
        self.trace.output_tokens = [first_token]

    def on_expand(self, cycle, step):
        self._current(cycle).expansions.append(step)

    def on_rerank(self, cycle, rerank):
        self._current(cycle).rerank = rerank

    def on_verify(self, cycle, verification):
        self._current(cycle).verification = verification

    def on_tokens(self, cycle, tokens, origins):
        if cycle >= 0:
            self._current(cycle).new_tokens = list(tokens)
            self.trace.output_tokens.extend(tokens)

    def on_cycle_end(self, cycle, root_token, timings):
        rec = self._current(cycle)
        rec.root_token = root_token
        rec.timings = timings
        self.trace.cycles.append(rec)
        self._cycle = None

    def on_finish(self, summary):
        self.trace.summary = dict(summary)
        if self.tokenizer is not None:
            self.trace.token_text = token_texts(self.tokenizer, _all_tokens(self.trace))


def _all_tokens(trace: Trace) -> set[int]:
    ids = set(trace.prompt_tokens) | set(trace.output_tokens)
    for c in trace.cycles:
        ids.add(c.root_token)
        for e in c.expansions:
            ids.update(x.token for x in e.candidates)
        if c.verification:
            ids.update(n.target_top_token for n in c.verification.nodes)
            ids.add(c.verification.bonus_token)
    ids.discard(-1)
    return ids


def token_texts(tokenizer, ids) -> dict[str, str]:
    """Readable text of single tokens (spaces and newlines kept) for labels."""
    ids = sorted(int(i) for i in ids)
    texts = tokenizer.convert_ids_to_tokens(ids)
    out = {}
    for i, piece in zip(ids, texts):
        text = tokenizer.decode([i], skip_special_tokens=False) if piece is not None else f"<{i}>"
        out[str(i)] = text if text != "" else (piece or f"<{i}>")
    return out


def as_dict(obj) -> dict:
    return asdict(obj)
