"""Running the decoder for the app: models loaded once and shared read-only, one generation at a
time, its tokens streamed to the page as they are accepted.

Every run gets its own drafter (drafters hold a KV cache); GEN_LOCK runs generations one after
another (two CPU cores gain nothing from running two at once).
"""

from __future__ import annotations

import collections
import os
import queue
import sys
import threading
import time
from pathlib import Path

import eagle2
from eagle2 import registry
from eagle2.head import HEAD_KIND_LABELS
from eagle2.policies import Policy
from eagle2.trace import Observer, TraceRecorder, token_texts
from viz.data import TokenSpan

from . import guard
from .config import ROOT, default_choice, default_head
from .state import RunParams


# ---- models: loaded once, shared read-only ----------------------------------------------------------
class Models:
    """Targets (at most two kept) and draft heads, loaded once; a fresh drafter per run."""

    MAX_TARGETS = 2

    def __init__(self):
        self._lock = threading.Lock()
        self._targets: collections.OrderedDict[str, eagle2.Target] = collections.OrderedDict()
        self._heads: dict[tuple[str, str], eagle2.EagleHead] = {}
        self._vocab: dict[tuple[str, str], list[int] | None] = {}  # reduced draft vocabulary, where it pays
        self._policies: dict[tuple, Policy] = {}

    def target(self, name: str = "default") -> eagle2.Target:
        with self._lock:
            if name in self._targets:
                self._targets.move_to_end(name)
                return self._targets[name]
            t = eagle2.load_target(name)
            self._targets[name] = t
            while len(self._targets) > self.MAX_TARGETS:
                old, _ = self._targets.popitem(last=False)
                self._heads = {k: v for k, v in self._heads.items() if k[0] != old}
                self._vocab = {k: v for k, v in self._vocab.items() if k[0] != old}
                self._policies = {k: v for k, v in self._policies.items() if k[0] != old}
            return t

    def _head(self, target: eagle2.Target, spec: str) -> eagle2.EagleHead:
        key = (target.name, spec)
        with self._lock:
            if key not in self._heads:
                if spec == "random":
                    import torch

                    with torch.random.fork_rng():
                        torch.manual_seed(0)
                        self._heads[key] = eagle2.EagleHead.for_target(target.model.config)
                else:
                    self._heads[key] = eagle2.load_head(spec, target)
            return self._heads[key]

    def policy(self, target: eagle2.Target, p: RunParams) -> Policy:
        """The run's policy; auto-sized ones are kept per target and spec (they learn online).
        Called under GEN_LOCK, so a kept policy is never used by two runs at once."""
        return p.policy_obj if p.policy_obj is not None else self.sized_policy(target, p.choice)

    def sized_policy(self, target: eagle2.Target, choice: registry.PolicyChoice) -> Policy:
        """The kept policy for this target and choice, built (an auto size: calibrated) on first use."""
        key = self._policy_key(target, choice)
        with self._lock:
            if key not in self._policies:
                self._policies[key] = choice.build(target=target)
            return self._policies[key]

    def has_policy(self, target: eagle2.Target, p: RunParams) -> bool:
        return p.policy_obj is not None or self._policy_key(target, p.choice) in self._policies

    @staticmethod
    def _policy_key(target: eagle2.Target, choice: registry.PolicyChoice) -> tuple[str, str]:
        return target.name, choice.spec()

    def drafter(self, target: eagle2.Target, spec: str):
        if spec == "self":
            return eagle2.ModelDrafter(target.model, name="self (the target drafts)")
        head = self._head(target, spec)
        kind = HEAD_KIND_LABELS[head.kind]
        label = {"default": f"{kind} (default)", "random": f"random {kind} (untrained)"}.get(spec, f"{kind} {spec}")
        ids = self._draft_vocab(target, spec, head)
        if ids is not None:
            from eagle2.draft import ReducedVocabDrafter

            return ReducedVocabDrafter(head, target.model, ids, name=label)
        return eagle2.EagleDrafter(head, target.model, name=label)

    def _draft_vocab(self, target: eagle2.Target, spec: str, head) -> list[int] | None:
        """The reduced draft vocabulary's tokens when it pays here (eagle2.vocab, decided once)."""
        key = (target.name, spec)
        if key not in self._vocab:
            from eagle2.draft import ReducedVocabDrafter, reduce_drafter, resolve_head

            ids = None
            if spec != "random" and head.kind != "eagle3":
                try:
                    d = reduce_drafter(eagle2.EagleDrafter(head, target.model), target, resolve_head(spec, target), "auto")
                    ids = d.token_ids.tolist() if isinstance(d, ReducedVocabDrafter) else None
                except ValueError:  # e.g. a hub head that cannot be resolved again offline
                    ids = None
            self._vocab[key] = ids
        return self._vocab[key]

    def loaded(self) -> list[str]:
        return list(self._targets)


MODELS = Models()
GEN_LOCK = threading.Lock()  # one generation at a time; also guards target eviction


def default_head_missing() -> str | None:
    """Why the default head can't be used yet (None when it is shipped)."""
    from eagle2.draft import DEFAULT_HEADS

    folder = DEFAULT_HEADS.get(eagle2.models.DEFAULT_NAME)
    if folder is not None and (folder / "config.json").exists():
        return None
    return (f"The trained EAGLE head for {eagle2.models.DEFAULT_NAME} is not shipped yet "
            f"(`{Path(folder).relative_to(ROOT) if folder else 'eagle2/heads'}` is missing). Pick head **self** "
            "(the target drafts for itself) or **random** (an untrained head), or open an example trace.")


WARMUP = {"v": None}  # what the start-up preload is doing now: "load", "calibrate" or None


def preload(serving: threading.Event | None = None) -> None:
    """Get the page's first run ready, in a background thread at start-up: load the default target,
    then size the default policy's tree and decide the default head's draft vocabulary for this
    machine (both timed once, then cached). A visitor's first run then starts generating at once.
    The timing waits for `serving` (set once the page is up: building it would slow the timed
    forwards) and holds GEN_LOCK, so no run disturbs it; a run that comes meanwhile waits, and its
    status says why."""
    t0 = time.perf_counter()
    try:
        WARMUP["v"] = "load"
        target = MODELS.target("default")
        if serving is not None:
            serving.wait(timeout=300)
        with GEN_LOCK:  # (a run that came while the model loaded goes first)
            WARMUP["v"] = "calibrate"
            choice = default_choice()
            MODELS.sized_policy(target, choice)
            head = default_head()
            if choice.needs_drafter and (head != "default" or default_head_missing() is None):
                MODELS.drafter(target, head)  # loads the head, decides its draft vocabulary
        print(f"[tree-lab] ready in {time.perf_counter() - t0:.0f} s: {target.name} loaded, "
              f"{choice.spec()} {'sized for this machine' if choice.auto else 'built'}", flush=True)
    except Exception as e:
        print(f"[tree-lab] the default model could not be preloaded: {e}")
    finally:
        WARMUP["v"] = None


def limit_malloc_arenas(n: int = 2) -> None:
    """Cap glibc's malloc arenas: each Gradio worker thread otherwise keeps its own freed memory,
    and the RSS climbs with every concurrent user (no leak, but it looks like one)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, n)  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc
        pass


# ---- generation with streaming ------------------------------------------------------------------------
class Cancelled(Exception):
    pass


class Streamer(Observer):
    """Forwards each cycle's new tokens to a queue (cheap: asks for no records)."""

    wants_records = False

    def __init__(self, q: queue.Queue, cancel: threading.Event):
        self.q, self.cancel = q, cancel

    def on_tokens(self, cycle, tokens, origins):
        if self.cancel.is_set():
            raise Cancelled()
        self.q.put((cycle, list(tokens), list(origins)))


MAX_ERROR_CHARS = 400


def _friendly(e: BaseException) -> str:
    """The one line the page shows for a failed run: the cause, never a traceback. Library errors
    (ValueError: bad model/head/prompt) are already one line; anything else gets its type named
    and its traceback goes to the server log."""
    text = str(e).strip()
    if isinstance(e, ValueError) and "not shipped yet" in text:
        return default_head_missing() or text
    first = (text.splitlines() or [""])[0].strip()
    if not isinstance(e, ValueError):
        import traceback

        print(f"[tree-lab] run failed: {type(e).__name__}", file=sys.stderr)
        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
        if isinstance(e, MemoryError):
            first = "out of memory (the model or the request is too large for this machine)"
        first = f"{type(e).__name__}: {first}" if first else type(e).__name__
    if len(first) > MAX_ERROR_CHARS:
        first = first[:MAX_ERROR_CHARS - 1] + "…"
    return first or type(e).__name__


def _work(p: RunParams, q: queue.Queue, cancel: threading.Event, box: dict, phase: dict) -> None:
    """The worker thread: load what the run needs, generate, leave the trace (or an error) in box."""
    try:
        with GEN_LOCK:
            if cancel.is_set():
                raise Cancelled()
            phase["v"] = "load"
            if p.target not in MODELS.loaded():
                guard.check_model_size(p.target)  # before any download: one line with its size
            target = MODELS.target(p.target)
            if not MODELS.has_policy(target, p):
                phase["v"] = "calibrate"
            policy = MODELS.policy(target, p)
            drafter = MODELS.drafter(target, p.head) if policy.needs_drafter else None
            box["tokenizer"] = target.tokenizer
            phase["v"] = "run"
            rec = TraceRecorder(target.tokenizer)
            observers = [Streamer(q, cancel), rec] + ([policy] if isinstance(policy, Observer) else [])
            eagle2.generate_text(target, p.prompt, drafter=drafter, policy=policy, observers=observers,
                                 max_new_tokens=p.max_new_tokens, temperature=p.temperature, top_p=p.top_p,
                                 seed=p.seed)
            rec.trace.meta.update(head=p.head if policy.needs_drafter else None, target_spec=p.target)
            box["trace"] = rec.trace
    except Cancelled:
        box["error"] = "cancelled"
    except BaseException as e:  # model/head load failures, bad sizes, context overflow, anything else
        box["error"] = _friendly(e)
    finally:
        q.put(None)


def _drain(q: queue.Queue) -> list:
    """Whatever else has arrived (the end marker stays in the queue)."""
    out = []
    while True:
        try:
            more = q.get_nowait()
        except queue.Empty:
            return out
        if more is None:
            q.put(None)
            return out
        out.append(more)


def _spans(tokenizer, texts: dict, cycle: int, tokens: list, origins: list) -> list[TokenSpan]:
    missing = [t for t in tokens if str(t) not in texts]
    if missing and tokenizer is not None:
        texts.update(token_texts(tokenizer, missing))
    return [TokenSpan(t, texts.get(str(t), f"<{t}>"), o, cycle) for t, o in zip(tokens, origins)]


def _relay(q: queue.Queue, box: dict, phase: dict):
    """Phase changes while nothing arrives; then the answer so far, each time tokens arrive."""
    spans: list[TokenSpan] = []
    texts: dict[str, str] = {}
    last_phase = None
    while True:
        try:
            item = q.get(timeout=0.25)
        except queue.Empty:
            if phase["v"] != last_phase:
                last_phase = phase["v"]
                yield (last_phase, None)
            continue
        if item is None:
            return
        for cycle, toks, origins in [item] + _drain(q):
            spans += _spans(box.get("tokenizer"), texts, cycle, toks, origins)
        yield ("tokens", list(spans))


def generate_stream(p: RunParams, cancel: threading.Event | None = None):
    """Run one generation in a worker thread; yields (kind, payload) with kind one of "wait",
    "load", "calibrate", "run" (phases, no payload), "tokens" (the TokenSpans so far), then
    "done" (the finished Trace) or "error" (a message)."""
    cancel = cancel or threading.Event()
    q: queue.Queue = queue.Queue()
    box: dict = {}
    phase = {"v": "wait"}
    worker = threading.Thread(target=_work, args=(p, q, cancel, box, phase), name="tree-lab-generate", daemon=True)
    worker.start()
    try:
        yield from _relay(q, box, phase)
        worker.join()
        if "trace" in box:
            yield ("done", box["trace"])
        else:
            yield ("error", box.get("error") or "the run stopped without an answer")
    finally:
        cancel.set()  # the client went away (or we finished): stop the worker at its next cycle
