"""One run's parameters, checked on the server (widgets can be bypassed through the API)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from eagle2 import registry
from eagle2.policies import Policy

from . import guard
from .config import LIMITS, MAX_PROMPT_CHARS, policy_choices

MAX_SPEC_CHARS = 300  # a hub id is at most 96 characters; a path rarely longer


@dataclass
class RunParams:
    """What `validate` accepted: the request and its checked policy."""

    prompt: str
    target: str
    head: str
    policy: str
    top_k: int
    depth: int
    total_tokens: int
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    choice: registry.PolicyChoice
    # built at once when it needs no target; auto-sized ones are built per target (run.Models.policy)
    policy_obj: Policy | None = None

    def describe(self) -> dict:
        """The policy's describe(), before it is built when it needs the target."""
        return self.policy_obj.describe() if self.policy_obj is not None else self.choice.describe()


def as_int(v, label: str) -> int:
    if isinstance(v, bool) or v is None:
        raise ValueError(f"{label} must be a whole number, got {v!r}")
    if isinstance(v, float):
        if not math.isfinite(v) or v != int(v):
            raise ValueError(f"{label} must be a whole number, got {v!r}")
        v = int(v)
    if not isinstance(v, int):
        try:
            v = int(str(v).strip())
        except ValueError:
            raise ValueError(f"{label} must be a whole number, got {v!r}") from None
    lo, hi = LIMITS[label]
    if not lo <= v <= hi:
        raise ValueError(f"{label} must be between {lo} and {hi}, got {v}")
    return v


def as_float(v, label: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{label} must be a number, got {v!r}") from None
    lo, hi = LIMITS[label]
    if not (math.isfinite(f) and lo <= f <= hi):
        raise ValueError(f"{label} must be between {lo} and {hi}, got {v!r}")
    return f


def validate(prompt, target, head, policy, top_k, depth, total_tokens, temperature, top_p, max_new_tokens,
             seed) -> RunParams:
    """Check every run parameter; a ValueError says what is wrong, in one sentence."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("Please type a prompt first (or pick an example below it).")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"The prompt is too long ({len(prompt)} characters; at most {MAX_PROMPT_CHARS}).")
    if policy not in policy_choices():
        raise ValueError(f"Unknown policy {policy!r}: choose from {', '.join(policy_choices())}.")
    sizes = {"top_k": as_int(top_k, "top_k"), "depth": as_int(depth, "depth"),
             "total_tokens": as_int(total_tokens, "total_tokens")}
    rest = {"temperature": as_float(temperature, "temperature"), "top_p": as_float(top_p, "top_p"),
            "max_new_tokens": as_int(max_new_tokens, "max_new_tokens"), "seed": as_int(seed, "seed")}
    try:  # the sliders fill the sizes the policy takes (eagle2.registry)
        choice = registry.resolve_policy(policy, defaults=sizes)
    except (ValueError, TypeError) as e:
        raise ValueError(f"Bad tree size: {e}") from None
    target = _spec(target, "model")
    head = _spec(head, "head")
    guard.check_specs(target, head)  # a public Space loads no local paths
    return RunParams(prompt=prompt, target=target, head=head, policy=policy, **sizes, **rest,
                     choice=choice, policy_obj=None if choice.needs_target else choice.build())


def _spec(value, label: str) -> str:
    """A model / head box's text: blank = "default"; one line of at most MAX_SPEC_CHARS."""
    if value is not None and not isinstance(value, str):
        raise ValueError(f"The {label} must be text, got {type(value).__name__}.")
    text = (value or "").strip() or "default"
    if len(text) > MAX_SPEC_CHARS or any(c in text for c in "\n\r\t\0"):
        raise ValueError(f"The {label} must be one short line: a hub id, a shipped name or a folder.")
    return text
