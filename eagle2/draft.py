"""Drafters: what proposes next-token distributions for tree nodes.

A drafter keeps its own KV cache of the accepted prefix. Per cycle:

  commit(seq, features)  feed what was accepted since last time; returns the log-probs of the
                         root's children (the root is seq[-1], the newest accepted token)
  step(tokens, parents)  draft new tree nodes whose parents are earlier draft slots (-1 = root);
                         returns their children's log-probs. Each node sees the prefix and its
                         own ancestors (a tree mask), at position prefix + depth.

Two drafters share this bookkeeping: the EAGLE head (feature-level, fed the target's hidden
states: its last one for EAGLE-1/2 heads, three fused layers for EAGLE-3 heads) and any small
causal LM with the target's tokenizer (classic speculative decoding).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from transformers import DynamicCache

from . import cache as kv
from .head import Eagle3Head, EagleHead, load_head_folder

HEADS_DIR = Path(__file__).parent / "heads"
# heads shipped with the package, by target and name ("default"; others can sit beside it for comparison)
SHIPPED_HEADS = {"SmolLM2-135M-Instruct": {"default": HEADS_DIR / "smollm2-135m-instruct"}}
DEFAULT_HEADS = {name: heads["default"] for name, heads in SHIPPED_HEADS.items()}


def shipped_heads(target_name: str) -> dict[str, Path]:
    """The shipped heads for a target that are present on disk, by name."""
    return {n: f for n, f in SHIPPED_HEADS.get(target_name, {}).items() if (f / "config.json").exists()}


class Drafter:
    """Shared tree bookkeeping: draft slots after the committed prefix, their depths/ancestry."""

    needs_features = False
    feature_layers: tuple[int, ...] | None = None  # target hidden_states to fuse; None = the last one
    kind = "model"

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self.cache = DynamicCache()
        self.committed = 0  # cache positions that belong to the accepted prefix
        self._depth: list[int] = []
        self._anc = torch.zeros(0, 0, dtype=torch.bool)

    def reset(self) -> None:
        self.cache = DynamicCache()
        self.committed = 0
        self._clear_slots()

    @property
    def num_slots(self) -> int:
        """Draft nodes fed so far this cycle (they sit after the committed prefix)."""
        return len(self._depth)

    def _clear_slots(self) -> None:
        kv.truncate(self.cache, self.committed)
        self._depth = []
        self._anc = torch.zeros(0, 0, dtype=torch.bool)

    def _add_slots(self, parents: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Register new slots; returns their position ids (1, m) and additive mask (1, 1, m, kv)."""
        s, m = len(self._depth), len(parents)
        anc = torch.zeros(s + m, s + m, dtype=torch.bool)
        anc[:s, :s] = self._anc
        for j, p in enumerate(parents):
            if p >= 0:
                anc[s + j, :s] = self._anc[p]
            anc[s + j, s + j] = True
            self._depth.append((self._depth[p] if p >= 0 else 0) + 1)
        self._anc = anc
        depths = torch.tensor(self._depth[s:], device=self.device)
        # A depth-d node sits d-1 places after the committed prefix (the root is its last entry).
        position_ids = (self.committed + depths - 1)[None]
        mask = torch.zeros(m, self.committed + s + m, dtype=self.dtype, device=self.device)
        mask[:, self.committed:].masked_fill_(~anc[s:].to(self.device), torch.finfo(self.dtype).min)
        return position_ids, mask[None, None]

    def commit(self, seq: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def step(self, tokens: torch.Tensor, parents: list[int]) -> torch.Tensor:
        raise NotImplementedError


class DraftVocabLogits(nn.Module):
    """An EAGLE-3 head's draft-vocabulary logits scattered into the target's vocabulary (tokens
    outside the draft vocabulary get the dtype's lowest value: probability 0), so draft token
    ids are ordinary ids and every policy works unchanged."""

    def __init__(self, head: Eagle3Head, vocab_size: int):
        super().__init__()
        self.head, self.vocab_size = head, vocab_size
        self.register_buffer("token_ids", head.draft_ids.clone(), persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        small = self.head.draft_logits(hidden)
        out = small.new_full((*small.shape[:-1], self.vocab_size), torch.finfo(small.dtype).min)
        return out.index_copy_(-1, self.token_ids, small)


class EagleDrafter(Drafter):
    """An EAGLE head (EAGLE-1/2 or EAGLE-3) + the target's embedding; drafts at the feature level.
    EAGLE-1/2 heads score with the target's lm_head, EAGLE-3 heads with their own."""

    needs_features = True

    def __init__(self, head: EagleHead | Eagle3Head, target_model, name: str = "eagle-head"):
        params = next(target_model.parameters())
        super().__init__(params.device, params.dtype)
        check_head_fits(head, target_model)
        self.head = head.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.kind = head.kind
        self.feature_layers = head.feature_layers(target_model.config.num_hidden_layers)
        self.embed = head.embed_tokens if head.embed_tokens is not None else target_model.get_input_embeddings()
        vocab = target_model.lm_head.weight.shape[0]
        self.lm_head = DraftVocabLogits(self.head, vocab) if head.kind == "eagle3" else target_model.lm_head
        self.name = name
        self._root_feature: torch.Tensor | None = None
        self._slot_features: list[torch.Tensor] = []

    @property
    def draft_vocab(self) -> int | None:
        """How many tokens it can propose (None: the whole vocabulary)."""
        return self.head.draft_vocab_size if self.kind == "eagle3" else None

    def reset(self) -> None:
        super().reset()
        self._root_feature, self._slot_features = None, []

    def _clear_slots(self) -> None:
        super()._clear_slots()
        self._slot_features = []

    @torch.inference_mode()
    def commit(self, seq: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        """Pair feature_i with token_{i+1} for every newly verified position."""
        self._clear_slots()
        start = self.committed
        tokens = seq[start + 1:]
        if features is None or features.shape[0] != tokens.shape[0]:
            raise ValueError(f"EAGLE commit needs {tokens.shape[0]} features, got "
                             f"{None if features is None else features.shape[0]}")
        pos = torch.arange(start, start + tokens.shape[0], device=self.device)[None]
        hidden = self.head(self.embed(tokens[None]), features[None], pos, cache=self.cache)
        self.committed += tokens.shape[0]
        self._root_feature = hidden[0, -1]
        return torch.log_softmax(self.lm_head(hidden[0, -1]).float(), dim=-1)

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, parents: list[int]) -> torch.Tensor:
        feats = torch.stack([self._slot_features[p] if p >= 0 else self._root_feature for p in parents])
        pos, mask = self._add_slots(parents)
        hidden = self.head(self.embed(tokens[None]), feats[None], pos, attention_mask=mask, cache=self.cache)[0]
        self._slot_features.extend(hidden.unbind(0))
        return torch.log_softmax(self.lm_head(hidden).float(), dim=-1)


class ModelDrafter(Drafter):
    """A small causal LM with the target's tokenizer, drafting a tree with a tree mask."""

    def __init__(self, model, name: str = "draft-model"):
        p = next(model.parameters())
        super().__init__(p.device, p.dtype)
        self.model = model.eval().requires_grad_(False)
        self.name = name

    def _forward(self, tokens, pos, mask):
        out = self.model.model(input_ids=tokens[None], position_ids=pos, attention_mask=mask,
                               cache=self.cache, use_cache=True)
        return torch.log_softmax(self.model.lm_head(out.last_hidden_state[0]).float(), dim=-1)

    @torch.inference_mode()
    def commit(self, seq: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        self._clear_slots()
        tokens = seq[self.committed:]
        pos = torch.arange(self.committed, seq.shape[0], device=self.device)[None]
        from .head import causal_mask

        logp = self._forward(tokens, pos, causal_mask(tokens.shape[0], self.committed, self.dtype, self.device))
        self.committed = seq.shape[0]
        return logp[-1]

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, parents: list[int]) -> torch.Tensor:
        pos, mask = self._add_slots(parents)
        return self._forward(tokens, pos, mask)


def check_head_fits(head: EagleHead | Eagle3Head, target_model) -> None:
    tcfg = target_model.config
    vocab = target_model.lm_head.weight.shape[0]
    if head.kind == "eagle3":
        if head.target_hidden_size != tcfg.hidden_size:
            raise ValueError(f"EAGLE-3 head reads target hidden size {head.target_hidden_size}; the target's is {tcfg.hidden_size}")
        if head.config.vocab_size != vocab:
            raise ValueError(f"EAGLE-3 head vocab {head.config.vocab_size} does not fit the target's {vocab}")
        if tcfg.num_hidden_layers < 4:
            raise ValueError(f"EAGLE-3 heads fuse layers 2, n/2 and n-3; the target has only {tcfg.num_hidden_layers}")
        if int(head.draft_ids.min()) < 0 or int(head.draft_ids.max()) >= vocab:
            raise ValueError("EAGLE-3 head's d2t maps draft tokens outside the target's vocabulary")
        return
    if head.config.hidden_size != tcfg.hidden_size:
        raise ValueError(f"draft head hidden size {head.config.hidden_size} does not fit the target's {tcfg.hidden_size}")
    if head.config.vocab_size != vocab and head.embed_tokens is None:
        raise ValueError(f"draft head vocab {head.config.vocab_size} does not fit the target's {vocab}")
    if head.embed_tokens is not None and head.embed_tokens.weight.shape[0] != vocab:
        raise ValueError(f"draft head vocab {head.embed_tokens.weight.shape[0]} does not fit the target's {vocab}")


def load_head(spec: str | os.PathLike, target) -> EagleHead | Eagle3Head:
    """`default` (the head shipped for the target) or another shipped name (SHIPPED_HEADS), a
    folder, or a hub id; the format (EAGLE-1/2 or EAGLE-3) is read from config.json."""
    spec = str(spec)
    shipped = SHIPPED_HEADS.get(getattr(target, "name", None), {})
    if spec == "default" or spec in shipped:
        folder = shipped.get(spec)
        if folder is None:
            raise ValueError(f"no draft head is shipped for {getattr(target, 'name', None)!r}: pass --head PATH or a hub id")
        if not (folder / "config.json").exists():
            raise ValueError(f"the {spec} head for {target.name} is not shipped ({folder} is missing)")
        return load_head_folder(folder)
    local = Path(spec).expanduser()
    if local.exists():
        return load_head_folder(local)
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(spec, allow_patterns=["config.json", "*.safetensors", "pytorch_model.bin"])
    except Exception as e:  # network / unknown repo
        raise ValueError(f"cannot fetch draft head {spec!r} (offline or unknown id?): {type(e).__name__}") from None
    return load_head_folder(folder)


def load_drafter(target, head: str | None = "default", draft_model: str | None = None) -> Drafter:
    """An EAGLE head drafter (default) or, with draft_model, a small LM drafter."""
    if draft_model:
        from .models import load_target

        small = load_target(draft_model, dtype=target.dtype, device=target.device)
        if small.model.lm_head.weight.shape[0] != target.model.lm_head.weight.shape[0]:
            raise ValueError("draft model vocab does not match the target's")
        return ModelDrafter(small.model, name=small.name)
    return EagleDrafter(load_head(head or "default", target), target.model, name=str(head))
