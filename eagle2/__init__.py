"""EAGLE-2 Tree Lab: exact speculative decoding with dynamic draft trees, instrumented.

    import eagle2
    target = eagle2.load_target("default")              # SmolLM2-135M-Instruct, embedded
    drafter = eagle2.load_drafter(target, head="default")
    out = eagle2.generate_text(target, "Why is the sky blue?", drafter=drafter,
                               policy=eagle2.make_policy("eagle2"), max_new_tokens=64)
    print(out.text, out.tau, out.tokens_per_s)
"""

from __future__ import annotations

from .decode import GenerationResult, generate, hf_generate
from .draft import Drafter, EagleDrafter, ModelDrafter, load_drafter, load_head
from .head import Eagle3Head, EagleHead
from .models import Target, load_target
from .policies import Chain, Eagle1, Eagle2, Policy, Vanilla
from .registry import make_policy
from .trace import Observer, Trace, TraceRecorder
from .tree import DraftTree, Node

__all__ = [
    "load_target", "load_drafter", "load_head", "generate", "generate_text", "hf_generate", "encode_prompt",
    "Target", "Drafter", "EagleDrafter", "ModelDrafter", "EagleHead", "Eagle3Head", "Policy", "Eagle2", "Eagle1", "Chain",
    "Vanilla", "make_policy", "Observer", "Trace", "TraceRecorder", "DraftTree", "Node", "GenerationResult",
]
__version__ = "0.1.0"


def encode_prompt(tokenizer, prompt: str, chat: bool = True, system: str | None = None) -> list[int]:
    """Token ids for a prompt: the chat template (with a generation prompt) unless chat=False."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("prompt is empty")
    if chat and getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt)["input_ids"]


def generate_text(target: Target, prompt: str, drafter: Drafter | None = None, policy: Policy | None = None,
                  chat: bool = True, observers=(), **kwargs) -> GenerationResult:
    """Generate from a text prompt with a loaded target; fills `result.text`."""
    policy = policy or (make_policy("eagle2") if drafter is not None else Vanilla())
    ids = encode_prompt(target.tokenizer, prompt, chat=chat)
    meta = {"model": target.name, "drafter": getattr(drafter, "name", None),
            "head_kind": getattr(drafter, "kind", None) if drafter is not None else None, "prompt": prompt, "chat": chat,
            **{k: v for k, v in kwargs.items() if k in ("max_new_tokens", "temperature", "top_p", "seed")}}
    for o in observers:
        if isinstance(o, TraceRecorder) and o.tokenizer is None:
            o.tokenizer = target.tokenizer
    result = generate(target.model, ids, policy, drafter, eos_token_ids=target.eos_token_ids,
                      observers=observers, meta=meta, **kwargs)
    result.text = target.tokenizer.decode(result.tokens, skip_special_tokens=True)
    return result
