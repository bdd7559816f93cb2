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

import functools
import os
from pathlib import Path

import torch
from torch import nn

from . import cache as kv
from .attention import use_tree_attention
from . import hub
from .head import Eagle3Head, EagleHead, load_head_folder
from .models import module_device, output_device
from .norms import fuse_rms_norms, has_one_call_norms
from .packed import has_packed_weights, pack_weights, packed_format
from . import vocab as vocab_lib
from .vocab import ReducedLMHead

HEADS_DIR = Path(__file__).parent / "heads"
# heads shipped with the package, by target and name ("default"; others can sit beside it for comparison)
SHIPPED_HEADS = {"SmolLM2-135M-Instruct": {"default": HEADS_DIR / "smollm2-135m-instruct"}}
DEFAULT_HEADS = {name: heads["default"] for name, heads in SHIPPED_HEADS.items()}


def shipped_heads(target_name: str) -> dict[str, Path]:
    """The shipped heads for a target that are present on disk, by name."""
    return {n: f for n, f in SHIPPED_HEADS.get(target_name, {}).items() if (f / "config.json").exists()}


def _inference(fn):
    """torch.inference_mode() around a drafter call, entered only when it is not on already (as
    inside generate): entering it is not free, and a cycle makes several drafter calls."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        if torch.is_inference_mode_enabled():
            return fn(*args, **kwargs)
        with torch.inference_mode():
            return fn(*args, **kwargs)

    return run


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    """log_softmax in fp32 (`.float()` of an fp32 tensor is not free at these sizes)."""
    return torch.log_softmax(logits if logits.dtype == torch.float32 else logits.float(), dim=-1)


class Drafter:
    """Shared tree bookkeeping: draft slots after the committed prefix, their depths/ancestry."""

    needs_features = False
    feature_layers: tuple[int, ...] | None = None  # target hidden_states to fuse; None = the last one
    kind = "model"
    # commit/step return log-probs over the drafter's vocabulary; with a draft vocabulary (EAGLE-3
    # heads, a reduced one) entry i is target token token_ids[i] (policies.draft_topk maps them)
    token_ids: torch.Tensor | None = None

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self.cache = kv.new_cache()
        self.committed = 0  # cache positions that belong to the accepted prefix
        self._slots = 0  # draft nodes fed this cycle
        # Row i + 1 is slot i; row 0 stands for the root (no ancestors among the slots, depth 0),
        # so a parent p (-1 = the root) is looked up at p + 1 without a special case. A row is the
        # slot's additive attention mask over the cache (the prefix, then the slots: 0 where it
        # sees, finfo.min elsewhere), so a new slot's row is its parent's plus itself; and its
        # position id (prefix + depth - 1).
        self._mask = torch.empty(0, 0, dtype=dtype, device=device)
        self._pos = torch.empty(0, dtype=torch.long, device=device)
        self._clear_slots()

    def reset(self) -> None:
        self.cache = kv.new_cache()
        self.committed = 0
        self._clear_slots()

    @property
    def num_slots(self) -> int:
        """Draft nodes fed so far this cycle (they sit after the committed prefix)."""
        return self._slots

    def _clear_slots(self) -> None:
        kv.truncate(self.cache, self.committed)
        self._slots = 0

    def _reserve_slots(self, n: int) -> None:
        """Room for n slots after the committed prefix (rows keep what the first s hold)."""
        c, s = self.committed, self._slots
        rows, width = self._mask.shape
        if n + 1 <= rows and c + n <= width:
            return
        new_rows = max(n + 1, 2 * rows, 64) if n + 1 > rows else rows
        new_width = max(c + new_rows - 1, 2 * width)
        mask = torch.full((new_rows, new_width), torch.finfo(self.dtype).min, dtype=self.dtype, device=self.device)
        pos = torch.zeros(new_rows, dtype=torch.long, device=self.device)
        if s:  # growing mid-cycle (at the cycle's first step the root's row is set afresh)
            mask[:s + 1, :c + s] = self._mask[:s + 1, :c + s]
            pos[:s + 1] = self._pos[:s + 1]
        self._mask, self._pos = mask, pos

    def _parent_rows(self, parents) -> torch.Tensor:
        """Buffer rows of the parent slots (-1, the root, is row 0)."""
        if not (isinstance(parents, torch.Tensor) and parents.dtype == torch.long and parents.device == self.device):
            parents = torch.as_tensor(parents, dtype=torch.long, device=self.device)
        return (parents if parents.dim() == 1 else parents.reshape(-1)) + 1

    def _add_slots(self, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Register new slots, a batch at a time (up: the buffer rows of their parents, slot + 1,
        0 = the root); returns their position ids (1, m) and additive mask (1, 1, m, kv), a view
        of the rows."""
        s, m, c = self._slots, up.shape[0], self.committed
        self._reserve_slots(s + m)
        if not s:  # the root's row this cycle: it sees the prefix; a depth-d node sits at c + d - 1
            self._mask[0, :c] = 0
            self._mask[0, c:] = torch.finfo(self.dtype).min
            self._pos[:1] = c - 1
        rows = self._mask[s + 1:s + m + 1]
        rows.copy_(self._mask.index_select(0, up))
        rows.diagonal(c + s).fill_(0)  # each sees itself
        pos = self._pos[s + 1:s + m + 1]
        pos.copy_(self._pos.index_select(0, up)).add_(1)
        self._slots = s + m
        return pos.view(1, m), rows.as_strided((1, 1, m, c + s + m), (0, 0, rows.stride(0), 1))

    def commit(self, seq: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def step(self, tokens: torch.Tensor, parents) -> torch.Tensor:
        """parents: a (m,) long tensor (or list) of earlier slots, -1 = the root."""
        raise NotImplementedError


class EagleDrafter(Drafter):
    """An EAGLE head (EAGLE-1/2 or EAGLE-3) + the target's embedding; drafts at the feature level.
    EAGLE-1/2 heads score with the target's lm_head, EAGLE-3 heads with their own."""

    needs_features = True

    def __init__(self, head: EagleHead | Eagle3Head, target_model, name: str = "eagle-head"):
        # beside the target's last layers (its lm_head), where its features come out
        super().__init__(output_device(target_model), next(target_model.parameters()).dtype)
        check_head_fits(head, target_model, name=name)
        self.head = head.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        if has_packed_weights(target_model) and not has_packed_weights(self.head):
            pack_weights(self.head, packed_format(target_model))  # its few-row products gain as the target's do
        if has_one_call_norms(target_model):
            fuse_rms_norms(self.head)
        use_tree_attention(self.head)
        self.kind = head.kind
        self.feature_layers = head.feature_layers(target_model.config.num_hidden_layers)
        self.embed = head.embed_tokens if head.embed_tokens is not None else target_model.get_input_embeddings()
        embed_device = module_device(self.embed)  # the target's first device when it is spread over several
        self._embed_device = embed_device if embed_device != self.device else None
        if head.kind == "eagle3":  # its own lm_head over its draft vocabulary
            self.lm_head, self.token_ids = self.head.draft_logits, self.head.draft_ids.to(self.device)
        else:
            self.lm_head = target_model.lm_head
        self.name = name
        self._root_feature: torch.Tensor | None = None

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(1, n, hidden) embeddings on the head's device (the embedding may sit on another)."""
        if self._embed_device is None:
            return self.embed(tokens[None])
        return self.embed(tokens[None].to(self._embed_device)).to(self.device)

    @property
    def draft_vocab(self) -> int | None:
        """How many tokens it can propose (None: the whole vocabulary)."""
        return self.head.draft_vocab_size if self.kind == "eagle3" else None

    def reset(self) -> None:
        super().reset()
        self._root_feature = None
        self._features = None

    def _clear_slots(self) -> None:
        super()._clear_slots()
        if not hasattr(self, "_features"):
            self._features = None  # row 0: the root's feature, then one row per slot (kept, grown)

    @_inference
    def commit(self, seq: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        """Pair feature_i with token_{i+1} for every newly verified position."""
        self._clear_slots()
        start = self.committed
        tokens = seq[start + 1:]
        if features is None or features.shape[0] != tokens.shape[0]:
            raise ValueError(f"EAGLE commit needs {tokens.shape[0]} features, got "
                             f"{None if features is None else features.shape[0]}")
        pos = torch.arange(start, start + tokens.shape[0], device=self.device)[None]
        hidden = self.head(self._embed(tokens), features[None], pos, cache=self.cache)
        self.committed += tokens.shape[0]
        self._root_feature = hidden[0, -1]
        if self._features is not None:
            self._features[0] = self._root_feature
        return _log_probs(self.lm_head(hidden[0, -1]))

    @_inference
    def step(self, tokens: torch.Tensor, parents) -> torch.Tensor:
        up = self._parent_rows(parents)  # row 0: the root
        s, m = self._slots, up.shape[0]
        if self._features is None or self._features.shape[0] < s + m + 1:  # grow the feature rows
            grown = self._root_feature.new_empty(max(2 * (s + m + 1), 64), self._root_feature.shape[-1])
            grown[0] = self._root_feature
            if self._features is not None:
                grown[1:s + 1] = self._features[1:s + 1]
            self._features = grown
        feats = self._features.index_select(0, up)
        pos, mask = self._add_slots(up)
        hidden = self.head(self._embed(tokens), feats[None], pos, attention_mask=mask, cache=self.cache)[0]
        self._features[s + 1:s + m + 1] = hidden
        return _log_probs(self.lm_head(hidden))


class ModelDrafter(Drafter):
    """A small causal LM with the target's tokenizer, drafting a tree with a tree mask."""

    def __init__(self, model, name: str = "draft-model"):
        p = next(model.parameters())
        super().__init__(p.device, p.dtype)
        self.model = model.eval().requires_grad_(False)
        use_tree_attention(self.model)
        self.name = name

    def _forward(self, tokens, pos, mask):
        out = self.model.model(input_ids=tokens[None], position_ids=pos, attention_mask=mask,
                               cache=self.cache, use_cache=True)
        return _log_probs(self.model.lm_head(out.last_hidden_state[0]))

    @_inference
    def commit(self, seq: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        self._clear_slots()
        tokens = seq[self.committed:]
        pos = torch.arange(self.committed, seq.shape[0], device=self.device)[None]
        from .head import causal_mask

        logp = self._forward(tokens, pos, causal_mask(tokens.shape[0], self.committed, self.dtype, self.device))
        self.committed = seq.shape[0]
        return logp[-1]

    @_inference
    def step(self, tokens: torch.Tensor, parents) -> torch.Tensor:
        pos, mask = self._add_slots(self._parent_rows(parents))
        return self._forward(tokens, pos, mask)


class ReducedVocabDrafter(EagleDrafter):
    """EagleDrafter whose output layer covers only `token_ids` (ids stay full-vocabulary ids)."""

    def __init__(self, head, target_model, token_ids, name: str = "eagle-head"):
        if head.kind == "eagle3":
            raise ValueError("an EAGLE-3 head has its own draft vocabulary: a reduced vocabulary does not apply")
        super().__init__(head, target_model, name=f"{name}+vocab{len(set(token_ids))}")
        self.reduced = ReducedLMHead(target_model.lm_head, token_ids)
        self.lm_head, self.token_ids = self.reduced.rows, self.reduced.token_ids

    @property
    def draft_vocab(self) -> int:
        return int(self.token_ids.numel())


def reduce_drafter(drafter: EagleDrafter, target, folder, draft_vocab: int | str, counts=None) -> EagleDrafter:
    """The drafter with a reduced draft vocabulary of `draft_vocab` tokens (from `counts`, the
    counts beside the head, or the target's own answers), or with "auto" the one that pays here."""
    auto = draft_vocab == "auto"
    if drafter.kind == "eagle3":
        if auto:
            return drafter  # its own draft vocabulary is built in
        raise ValueError("an EAGLE-3 head has its own draft vocabulary: a reduced vocabulary does not apply")
    if auto and not (Path(folder) / vocab_lib.COUNTS_FILE).exists():
        return drafter
    size = vocab_lib.AUTO_VOCAB_SIZE if auto else int(draft_vocab)
    vocab = int(target.model.lm_head.weight.shape[0])
    if size >= vocab:
        return drafter
    if counts is None:
        counts, _ = vocab_lib.counts_for(target, folder)
    ids = vocab_lib.top_tokens(counts, size, always=target.eos_token_ids, vocab_size=vocab)
    reduced = ReducedVocabDrafter(drafter.head, target.model, ids, name=drafter.name)
    if auto and not vocab_lib.reduced_vocab_pays(drafter, reduced, target, folder)["pays"]:
        return drafter
    return reduced


def check_head_fits(head: EagleHead | Eagle3Head, target_model, name: str | None = None) -> None:
    """A one-line ValueError when a head was made for another model (hidden size, vocabulary,
    layers); `name` (the head's spec) is said in the message."""
    tcfg = target_model.config
    vocab = target_model.lm_head.weight.shape[0]
    what = f"draft head {name}" if name else "draft head"
    other = f"{what} was made for another model"
    if head.kind == "eagle3":
        if head.target_hidden_size != tcfg.hidden_size:
            raise ValueError(f"{other}: the EAGLE-3 head reads target hidden size {head.target_hidden_size}; the "
                             f"target's is {tcfg.hidden_size}")
        if head.config.vocab_size != vocab:
            raise ValueError(f"{other}: EAGLE-3 head vocab {head.config.vocab_size} does not fit the target's {vocab}")
        if tcfg.num_hidden_layers < 4:
            raise ValueError(f"EAGLE-3 heads fuse layers 2, n/2 and n-3; the target has only {tcfg.num_hidden_layers}")
        if int(head.draft_ids.min()) < 0 or int(head.draft_ids.max()) >= vocab:
            raise ValueError(f"{other}: the EAGLE-3 head's d2t maps draft tokens outside the target's vocabulary")
        return
    if head.config.hidden_size != tcfg.hidden_size:
        raise ValueError(f"{other}: head hidden size {head.config.hidden_size} does not fit the target's "
                         f"{tcfg.hidden_size}")
    if head.config.vocab_size != vocab and head.embed_tokens is None:
        raise ValueError(f"{other}: head vocab {head.config.vocab_size} does not fit the target's {vocab}")
    if head.embed_tokens is not None and head.embed_tokens.weight.shape[0] != vocab:
        raise ValueError(f"{other}: head vocab {head.embed_tokens.weight.shape[0]} does not fit the target's {vocab}")


def resolve_head(spec: str | os.PathLike, target) -> Path:
    """The folder of a head: `default` (the head shipped for the target) or another shipped
    name (SHIPPED_HEADS), a folder, or a hub id (downloaded into the hub cache; eagle2.hub
    checks it first, so a missing folder, an unknown id or an unreachable Hub is one line, fast)."""
    spec = str(spec).strip()
    if not spec:
        raise ValueError("draft head name is empty")
    shipped = SHIPPED_HEADS.get(getattr(target, "name", None), {})
    if spec == "default" or spec in shipped:
        folder = shipped.get(spec)
        if folder is None:
            raise ValueError(f"no draft head is shipped for {getattr(target, 'name', None)!r}: pass --head PATH or a hub id")
        if not (folder / "config.json").exists():
            raise ValueError(f"the {spec} head for {target.name} is not shipped ({folder} is missing)")
        return folder
    local = Path(spec).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ValueError(f"draft head {spec} is a file, not a folder: give the folder that holds config.json "
                             "and the weights")
        return local  # read_head_config / _load_state say what is missing in it
    src = hub.locate(spec, "draft head")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(src.repo_id, allow_patterns=["config.json", "*.safetensors", "pytorch_model.bin",
                                                                   "token_counts.json"],
                                      cache_dir=hub.cache_dir(), local_files_only=src.local_only))
    except Exception as e:  # a download cut short
        raise ValueError(f"cannot fetch draft head {spec!r}: {hub.one_line(e)}") from None


def load_head(spec: str | os.PathLike, target) -> EagleHead | Eagle3Head:
    """A head by name, folder or hub id (see resolve_head); the format (EAGLE-1/2 or EAGLE-3)
    is read from config.json. With a target (anything with `.model`), a head made for another
    model (hidden size, vocabulary) is a one-line ValueError here, before any drafting."""
    head = load_head_folder(resolve_head(spec, target))
    model = getattr(target, "model", None)
    if model is not None and hasattr(model, "config") and hasattr(model, "lm_head"):
        check_head_fits(head, model, name=str(spec))
    return head


def load_drafter(target, head: str | None = "default", draft_model: str | None = None,
                 draft_vocab: int | str = "auto") -> Drafter:
    """An EAGLE head drafter (default) or, with draft_model, a small LM drafter.

    draft_vocab: 0 = score the whole vocabulary; N = only the N most frequent tokens
    (eagle2.vocab; EAGLE-1/2 heads); "auto" = the reduced vocabulary when the head ships
    token counts and it makes a draft step cheaper on this machine (measured once, cached).
    """
    if draft_model:
        from .models import load_target

        small = load_target(draft_model, dtype=target.precision, device=target.device)
        if small.model.lm_head.weight.shape[0] != target.model.lm_head.weight.shape[0]:
            raise ValueError("draft model vocab does not match the target's")
        return ModelDrafter(small.model, name=small.name)
    folder = resolve_head(head or "default", target)
    drafter = EagleDrafter(load_head_folder(folder), target.model, name=str(head))  # checks that the head fits
    if draft_vocab == "auto" or (draft_vocab and draft_vocab != "0"):
        return reduce_drafter(drafter, target, folder, draft_vocab)
    return drafter
