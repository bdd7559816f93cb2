"""Instrumentation: observers that watch a decode, and the Trace records they build.

Observers never steer: the decoder hands them finished facts (copies as plain Python values)
and ignores what they return. When no observer asks for records, the decoder builds none, so
an un-observed decode pays nothing for this module.

A Trace serialises to JSON (`schema` = TRACE_SCHEMA) and loads back, so the app can show a
run without a model.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

TRACE_SCHEMA = "eagle2-trace/1"
MAX_TRACE_BYTES = 50 * 1024 * 1024  # larger files are refused before they are read or parsed


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
        """Parse a trace; a ValueError names the first thing wrong in one line (too large, not
        JSON, not a trace, or which field of which cycle is missing or of the wrong type)."""
        size = len(text)  # bytes, or characters for a str (a file is checked by its size before it is read)
        if size > MAX_TRACE_BYTES:
            raise ValueError(f"trace is too large ({_size(size)}; at most {_size(MAX_TRACE_BYTES)})")
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError("trace is not UTF-8 text (is it a JSON file?)") from None
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"trace is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
        except RecursionError:
            raise ValueError("trace is not valid JSON for eagle2: nested too deeply") from None
        if not isinstance(raw, dict):
            raise ValueError(f"not an eagle2 trace: the file holds {_kind(raw)}, not an object")
        if "schema" not in raw:
            raise ValueError("not an eagle2 trace: top-level key 'schema' missing")
        if raw.get("schema") != TRACE_SCHEMA:
            raise ValueError(f"not an eagle2 trace (schema {raw.get('schema')!r}, expected {TRACE_SCHEMA!r})")
        if "cycles" not in raw:
            raise ValueError("not an eagle2 trace: top-level key 'cycles' missing")
        try:
            return _check_links(_build(cls, raw, ""))
        except TraceFormatError as e:
            raise ValueError(f"trace is malformed: {e}") from None
        except RecursionError:
            raise ValueError("trace is malformed: nested too deeply") from None

    @classmethod
    def load(cls, path: str | Path) -> "Trace":
        """Read a trace file; one too large is refused before it is read."""
        p = Path(path)
        size = p.stat().st_size
        if size > MAX_TRACE_BYTES:
            raise ValueError(f"trace {p.name} is too large ({_size(size)}; at most {_size(MAX_TRACE_BYTES)})")
        return cls.from_json(p.read_bytes())

    def text_of(self, token: int) -> str:
        return self.token_text.get(str(token), f"<{token}>")


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB" if n >= 1024 else f"{n} bytes"


class TraceFormatError(ValueError):
    """A field of a trace that is missing or of the wrong type (where: "cycle 3: field 'x' ...")."""


# nested records: field name -> (class, how one item is named in messages)
_NESTED = {
    "cycles": (CycleRecord, "cycle"), "expansions": (ExpansionStep, "expansion"),
    "candidates": (Candidate, "candidate"), "rerank": (RerankStep, "rerank"),
    "verification": (Verification, "verification"), "nodes": (VerifiedNode, "node"), "timings": (Timings, "timings"),
}
# keys a written trace always has although the record has a default (a cycle without its
# verification is a damaged file, not an old one)
_REQUIRED_KEYS = {CycleRecord: ("verification",)}
_HINTS: dict[type, dict] = {}


def _kind(v) -> str:
    if v is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(v), type(v).__name__)


def _at(where: str, what: str) -> str:
    return f"{where}: {what}" if where else what


def _check(hint, value, where: str, label: str):
    """A plain JSON value checked against a field's type hint (int, float, str, list[...],
    dict[...], X | None, Any); returns it, or raises TraceFormatError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check(inner[0], value, where, label) if len(inner) == 1 else value
    if origin is list:
        if not isinstance(value, list):
            raise TraceFormatError(_at(where, f"{label} must be a list, got {_kind(value)}"))
        (item,) = args or (Any,)
        return [_check(item, v, where, f"{label}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise TraceFormatError(_at(where, f"{label} must be an object, got {_kind(value)}"))
        if args and args[1] is str:
            for k, v in value.items():
                if not isinstance(v, str):
                    raise TraceFormatError(_at(where, f"{label}[{k!r}] must be a string, got {_kind(v)}"))
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TraceFormatError(_at(where, f"{label} must be an integer, got {_kind(value)}"))
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TraceFormatError(_at(where, f"{label} must be a number, got {_kind(value)}"))
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TraceFormatError(_at(where, f"{label} must be a string, got {_kind(value)}"))
        return value
    return value


def _check_links(trace: "Trace") -> "Trace":
    """References inside a cycle that every reader follows: the verified tree has its root, and
    the accepted path and the parents name nodes of that tree."""
    for i, rec in enumerate(trace.cycles):
        ver = rec.verification
        if ver is None:
            continue
        n = len(ver.nodes)
        if n == 0:
            raise TraceFormatError(f"cycle {i}: verification: field 'nodes' is empty (the root node is missing)")
        bad = [k for k in ver.accepted_path if not 0 <= k < n]
        if bad:
            raise TraceFormatError(f"cycle {i}: verification: accepted_path names node {bad[0]}, the tree has {n}")
        for j, node in enumerate(ver.nodes):
            if not -1 <= node.parent < n:
                raise TraceFormatError(f"cycle {i}: verification: node {j}: parent {node.parent} is not a node "
                                       f"(the tree has {n})")
    return trace


def _build(cls, raw, where: str):
    """Rebuild nested dataclasses from plain dicts (field names say which class), checking that
    every required field is there and every value has its type; `where` locates the record."""
    if not isinstance(raw, dict):
        raise TraceFormatError(f"{where or 'the trace'} must be an object, got {_kind(raw)}")
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        if f.name not in raw:
            if (f.default is MISSING and f.default_factory is MISSING) or f.name in _REQUIRED_KEYS.get(cls, ()):
                raise TraceFormatError(_at(where, f"field {f.name!r} missing"))
            continue
        value, nested = raw[f.name], _NESTED.get(f.name)
        if nested is None:
            kwargs[f.name] = _check(hints[f.name], value, where, f"field {f.name!r}")
            continue
        sub, noun = nested
        if typing.get_origin(hints[f.name]) is list:
            if not isinstance(value, list):
                raise TraceFormatError(_at(where, f"field {f.name!r} must be a list, got {_kind(value)}"))
            kwargs[f.name] = [_build(sub, v, _at(where, f"{noun} {i}")) for i, v in enumerate(value)]
        elif value is None:
            if f.default is not None:
                raise TraceFormatError(_at(where, f"field {f.name!r} must be an object, got null"))
            kwargs[f.name] = None
        else:
            kwargs[f.name] = _build(sub, value, _at(where, noun))
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
