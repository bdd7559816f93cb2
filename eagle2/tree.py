"""Draft trees as tensors: the candidates a policy proposes, and the tree it verifies.

CandidatePool  every token proposed in one cycle, in creation order (a parent before its
               children), as tensors on the drafter's device: tokens, parents, confidences,
               values (products of confidences along the path), depths, drafter slots.
DraftTree      the reranked tree rooted at the last accepted token: its attention mask (each
               node sees the prefix and its ancestors), position ids (prefix + depth) and
               root-to-leaf paths all follow from `parents`. Node 0 is the root, the newest
               token, chosen by the target but not yet fed to it.

Everything here is a whole level or a whole tree at a time; Python lists (for people, traces
and tests) are built only when asked for. No model is needed, so the tests run in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SOURCES = ("draft", "lookup", "both")  # where a candidate came from (eagle2.lookup adds the last two)
COPIED = SOURCES.index("lookup")


@dataclass(frozen=True)
class Node:
    """One tree node, for people and traces (the decoder itself works on the tensors)."""

    index: int
    token: int
    parent: int  # -1 for the root
    depth: int
    confidence: float  # draft probability of this token given its parent
    value: float  # product of confidences along the path from the root


def _long(x, device) -> torch.Tensor:
    if isinstance(x, torch.Tensor) and x.dtype == torch.long and (device is None or x.device == device):
        return x if x.dim() == 1 else x.reshape(-1)  # the hot path: already a long tensor where it belongs
    return torch.as_tensor(x, dtype=torch.long, device=device).reshape(-1)


def _float(x, device) -> torch.Tensor:
    if isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.dim() == 1 and x.device == device:
        return x
    return torch.as_tensor(x, dtype=torch.float32, device=device).reshape(-1)


class CandidatePool:
    """Every token proposed in one cycle; `add` appends a batch, `add_level` a whole expansion
    level, `feed` sends a batch to the drafter. The fields are views of two preallocated
    buffers on one device (rows: tokens, parents, depth, drafter slot, source; log confidence,
    log value), grown when full; `len` and `max_depth` are host ints known from the shapes, so
    growing never waits for the device. Column 0 of the buffers stands for the root (depth 0,
    value 1, drafter slot -1) and candidate i sits in column i + 1, so a parent id p (-1 = the
    root) is looked up at p + 1 with no case for the root.

    `add_level` and `note_fed` only queue their tensors: the queue is written to the buffers,
    a few ops for all its levels, when something reads the pool. An EAGLE-2 expansion that
    nobody watches therefore writes its levels once, at the rerank."""

    _INT_ROWS = ("tokens", "parents", "depth", "slot", "source")
    _FLOAT_ROWS = ("log_conf", "log_value")

    def __init__(self, device=None, capacity: int = 64):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.n = 0
        self.max_depth = 0
        self.has_copies = False  # any candidate not drafted (a host bool: no device read to know it)
        self._levels: list[tuple] = []  # queued add_level calls (start, parents, tokens, log_conf, log_value, depth)
        self._fed: list[tuple[torch.Tensor, int]] = []  # queued note_fed calls (ids, first slot)
        self._level_sizes: dict[tuple[int, ...], torch.Tensor] = {}
        self._ints = torch.empty(5, 1, dtype=torch.long, device=self.device)
        self._floats = torch.empty(2, 1, dtype=torch.float32, device=self.device)
        self._root = torch.full((1,), -1, dtype=torch.long, device=self.device)  # the root's id, as a parent
        self._reserve(max(1, capacity))

    def clear(self) -> None:
        """Empty it for the next cycle, keeping its buffers."""
        self._levels, self._fed = [], []
        if self.n:
            self._ints[3, 1:self.n + 1] = -1
            if self.has_copies:
                self._ints[4, 1:self.n + 1] = 0
        self.n, self.max_depth, self.has_copies = 0, 0, False

    def _reserve(self, n: int) -> None:
        cap = self._ints.shape[1] - 1
        if n <= cap:
            return
        new_cap = max(n, 2 * cap)
        ints = torch.zeros(5, new_cap + 1, dtype=torch.long, device=self.device)
        ints[3] = -1  # not fed to the drafter yet (and the root's slot)
        ints[1, 0] = -1
        floats = torch.zeros(2, new_cap + 1, dtype=torch.float32, device=self.device)
        written = self.n - sum(lv[2].numel() for lv in self._levels)  # queued levels are written later
        if written:
            ints[:, :written + 1], floats[:, :written + 1] = self._ints[:, :written + 1], self._floats[:, :written + 1]
        self._ints, self._floats = ints, floats
        self._ids = torch.arange(new_cap + 1, device=self.device)  # slices of it are id ranges (and depths)
        self._slot_col = ints[3]

    def _write_queued(self) -> None:
        """Write the queued levels and fed slots to the buffers (one cat per field for all levels)."""
        levels, self._levels = self._levels, []
        if levels:
            first, end = levels[0][0] + 1, self.n + 1
            ints, floats = self._ints[:, first:end], self._floats[:, first:end]
            torch.cat([t.reshape(-1) for _, _, t, _, _, _ in levels], out=ints[0])
            torch.cat([c.reshape(-1) for _, _, _, c, _, _ in levels], out=floats[0])
            torch.cat([v.reshape(-1) for _, _, _, _, v, _ in levels], out=floats[1])
            widths = {t.shape[-1] for _, _, t, _, _, _ in levels}
            depths = [d for *_, d in levels]
            if len(widths) == 1 and depths == list(range(depths[0], depths[0] + len(levels))):
                # an expansion: every parent has the same number of children, one level per depth
                ints[1].copy_(torch.cat([p for _, p, _, _, _, _ in levels]).repeat_interleave(widths.pop()))
                key = tuple(t.numel() for _, _, t, _, _, _ in levels)
                sizes = self._level_sizes.get(key)  # the same every cycle: sent to the device once
                if sizes is None:
                    sizes = self._level_sizes[key] = torch.tensor(key, device=self.device)
                level_depths = self._ids[depths[0]:depths[0] + len(levels)]
                ints[2].copy_(level_depths.repeat_interleave(sizes, output_size=end - first))
            else:
                torch.cat([p.unsqueeze(1).expand(t.shape).reshape(-1) for _, p, t, _, _, _ in levels], out=ints[1])
                torch.cat([self._ids[d:d + 1].expand(t.numel()) for _, _, t, _, _, d in levels], out=ints[2])
        fed, self._fed = self._fed, []
        if fed:
            ids = torch.cat([i for i, _ in fed]) if len(fed) > 1 else fed[0][0]
            slots = [self._ids[s:s + i.shape[0]] for i, s in fed]
            self._slot_col.index_copy_(0, ids + 1, torch.cat(slots) if len(slots) > 1 else slots[0])

    def __len__(self) -> int:
        return self.n

    def ids(self, start: int, n: int) -> torch.Tensor:
        """Pool ids start, ..., start + n - 1."""
        return self._ids[start:start + n]

    def add_level(self, parents: torch.Tensor | None, tokens: torch.Tensor, log_conf: torch.Tensor,
                  log_value: torch.Tensor, depth: int) -> int:
        """Queue a whole level: row i of tokens/log_conf/log_value (p, c) are the children of
        parents[i] (pool ids; None = the root), all at `depth`. Returns the first new id (they
        follow row by row). The tensors are kept as they are until written: not to be changed
        in place meanwhile."""
        if parents is None:
            parents = self._root
        if tokens.dim() != 2 or tokens.shape[0] != parents.shape[0]:
            raise ValueError(f"add_level takes (parents, children) rows: {parents.shape[0]} parents, "
                             f"tokens shaped {tuple(tokens.shape)}")
        start, m = self.n, tokens.numel()
        self._reserve(start + m)
        self._levels.append((start, parents, tokens, log_conf, log_value, depth))
        self.n = start + m
        self.max_depth = max(self.max_depth, depth)
        return start

    def note_fed(self, ids: torch.Tensor, first_slot: int) -> None:
        """Record that `ids` were fed to the drafter as slots first_slot, first_slot + 1, ... (queued)."""
        self._fed.append((ids, first_slot))

    def add(self, parents, tokens, log_conf, source: str = "draft", depth: int | None = None) -> torch.Tensor:
        """Append candidates (parents are pool ids, -1 = root); returns their ids. `depth`, when
        all of them sit at that depth, saves looking it up."""
        self._write_queued()
        parents, tokens = _long(parents, self.device), _long(tokens, self.device)
        log_conf = _float(log_conf, self.device)
        start, m = self.n, parents.shape[0]
        self._reserve(start + m)
        up = parents + 1  # their columns (0: the root)
        ints, floats = self._ints[:, start + 1:start + m + 1], self._floats[:, start + 1:start + m + 1]
        ints[:2] = torch.stack((tokens, parents))
        floats[:2] = torch.stack((log_conf, self._floats[1].index_select(0, up) + log_conf))
        if depth is not None:
            ints[2] = depth
        else:
            ints[2] = self._ints[2].index_select(0, up) + 1
        if source != "draft":
            ints[4] = SOURCES.index(source)
            self.has_copies = True
        self.n = start + m
        self.max_depth = max(self.max_depth, depth if depth is not None else int(ints[2].max()) if m else 0)
        return self._ids[start:start + m]

    def add_chain(self, anchor: int, tokens: list[int], log_conf: list[float], source: str = "lookup") -> torch.Tensor:
        """Append a chain hanging below `anchor` (a pool id; -1 = the root), each token the
        next one's parent; returns their ids."""
        self._write_queued()
        m, start = len(tokens), self.n
        if not m:
            return torch.zeros(0, dtype=torch.long, device=self.device)
        self._reserve(start + m)
        lc = torch.as_tensor(log_conf, dtype=torch.float32, device=self.device).reshape(-1)
        depth0 = int(self._ints[2, anchor + 1])
        ints, floats = self._ints[:, start + 1:start + m + 1], self._floats[:, start + 1:start + m + 1]
        ints[0] = _long(tokens, self.device)
        ints[1] = _long([anchor] + list(range(start, start + m - 1)), self.device)
        ints[2] = torch.arange(depth0 + 1, depth0 + m + 1, device=self.device)
        ints[4] = SOURCES.index(source)
        self.has_copies = self.has_copies or source != "draft"
        floats[0] = lc
        floats[1] = self._floats[1, anchor + 1] + lc.cumsum(0)
        self.n = start + m
        self.max_depth = max(self.max_depth, depth0 + m)
        return self._ids[start:start + m]

    def feed(self, drafter, ids) -> torch.Tensor:
        """Feed candidates to the drafter (their parents already fed); returns their children's log-probs."""
        self._write_queued()
        ids = _long(ids, self.device)
        cols = ids + 1
        fed = self._ints.index_select(1, cols)  # (5, m): tokens, parents, ...
        parent_slots = self._slot_col.index_select(0, fed[1] + 1)  # column 0 (the root) holds -1
        first = drafter.num_slots
        logp = drafter.step(fed[0], parent_slots)
        self._slot_col.index_copy_(0, cols, self._ids[first:first + ids.shape[0]])
        return logp

    def revalue(self) -> None:
        """Recompute every value as the sum of log confidences along its path (after a
        confidence changed, e.g. a copied token raised a drafted one)."""
        lv = self.log_conf.clone()  # (reading log_conf wrote the queue)
        conf, parent = self._floats[0], self._ints[1]
        col = self.parents + 1  # each candidate's ancestors' columns, one level up at a time;
        for _ in range(self.max_depth - 1):  # past the root, column 0 (confidence 0, parent -1) stays put
            lv += conf.index_select(0, col)
            col = parent.index_select(0, col) + 1
        self._floats[1, 1:self.n + 1] = lv

    def sources(self) -> list[str]:
        return [SOURCES[s] for s in self.source.tolist()]

    def records(self, ids) -> list:
        """The candidates as trace records (only when someone records)."""
        from .trace import Candidate

        ids = _long(ids, self.device)
        cols = [self.tokens[ids], self.parents[ids], self.depth[ids], self.log_conf[ids].double().exp(),
                self.log_value[ids].double().exp()]
        rows = zip(ids.tolist(), *(c.tolist() for c in cols), self.source[ids].tolist())
        return [Candidate(i, t, p, d, c, v, SOURCES[s]) for i, t, p, d, c, v, s in rows]

    def top(self, n: int) -> torch.Tensor:
        """Ids of the `n` most valuable candidates, in creation order. Values never increase
        along a path, and ties are broken by creation order (a stable sort), so every one's
        parent is among them too."""
        k = min(int(n), len(self))
        return torch.sort(torch.sort(-self.log_value, stable=True).indices[:k]).values

    def rerank(self, root_token, total_tokens: int) -> "DraftTree":
        """Keep the `total_tokens` most valuable candidates, as a tree."""
        return self.select(root_token, self.top(total_tokens))

    def select(self, root_token, keep: torch.Tensor) -> "DraftTree":
        """The tree of the candidates `keep` (ids in creation order, every parent among them); it
        carries their sources only when some candidate was copied (otherwise all are drafted)."""
        self._write_queued()
        cols = torch.cat((self._ids[:1], keep + 1))  # the root's column, then the kept ones (increasing)
        ints = self._ints.index_select(1, cols)  # token, parent, depth, slot, source: the tree's columns
        floats = self._floats.index_select(1, cols)  # log confidence, log value (the root's: 0, 0)
        ints[1, 1:] = torch.searchsorted(cols, ints[1, 1:] + 1)  # parents as tree nodes (the root's stays -1)
        ints[3, 1:] = keep  # the slot row becomes the candidate ids
        if isinstance(root_token, int):
            ints[0, 0] = root_token
        else:
            ints[0, :1] = _long(root_token, self.device)[:1]
        return DraftTree.from_columns(ints[0], ints[1], floats[0], floats[1], ints[2], ints[3],
                                      ints[4] if self.has_copies else None, self.max_depth)


def _field(buffer: str, row: int, doc: str) -> property:
    def get(self):
        if self._levels or self._fed:
            self._write_queued()
        return getattr(self, buffer)[row, 1:self.n + 1]

    def set(self, value):
        if self._levels or self._fed:
            self._write_queued()
        getattr(self, buffer)[row, 1:self.n + 1] = value

    return property(get, set, doc=doc)


for _row, (_name, _doc) in enumerate([("tokens", "token ids"), ("parents", "pool id of each parent (-1 = root)"),
                                      ("depth", "depth below the root (1 = a child of the root)"),
                                      ("slot", "drafter slot once fed (-1 before)"),
                                      ("source", "index into SOURCES")]):
    setattr(CandidatePool, _name, _field("_ints", _row, _doc))
for _row, (_name, _doc) in enumerate([("log_conf", "log draft probability given the parent"),
                                      ("log_value", "sum of log_conf along the path")]):
    setattr(CandidatePool, _name, _field("_floats", _row, _doc))


class DraftTree:
    """Tokens + parent pointers as tensors; depths, values, mask and paths derive from them.

    Built by a policy (from CandidatePool.rerank, which already knows depths and values) or by
    hand from lists (then checked, and depths/values computed).
    """

    def __init__(self, tokens, parents, log_confidences=None, candidate_ids=None, *, candidates=None,
                 depths=None, log_values=None, depth_bound: int | None = None, sources=None, check: bool = True):
        self.tokens = _long(tokens, None)
        device = self.tokens.device
        self.parents = _long(parents, device)
        n = self.tokens.shape[0]
        if n == 0 or self.parents.shape[0] != n:
            raise ValueError("a draft tree needs a root and one parent per token")
        if check:
            idx = torch.arange(n, device=device)
            if int(self.parents[0]) != -1 or bool(((self.parents[1:] < 0) | (self.parents[1:] >= idx[1:])).any()):
                raise ValueError("parents must precede children and node 0 must be the root")
        if log_confidences is None:
            log_confidences = torch.zeros(n)
        if not (isinstance(log_confidences, torch.Tensor) and log_confidences.dtype == torch.float32):
            log_confidences = torch.as_tensor(log_confidences, dtype=torch.float32)
        self.log_confidences = log_confidences.reshape(-1).to(device)
        if n == 1:
            depths, log_values = torch.zeros(1, dtype=torch.long, device=device), self.log_confidences * 0
        elif depths is None or log_values is None:  # walk down level by level: parents come first
            depths = torch.zeros(n, dtype=torch.long, device=device)
            log_values = torch.zeros(n, dtype=torch.float32, device=device)
            for i, p in enumerate(self.parents.tolist()[1:], start=1):
                depths[i] = depths[p] + 1
                log_values[i] = log_values[p] + self.log_confidences[i]
        self.depths, self.log_values = depths, log_values
        self._depth_bound = depth_bound  # >= the deepest node's depth: how far ancestry is chased
        if candidates is None:
            candidates = candidate_ids if candidate_ids is not None else range(-1, n - 1)
        self.candidates = _long(list(candidates) if not torch.is_tensor(candidates) else candidates, device)
        # where each node came from (index into SOURCES; None: all drafted): sampling tries a
        # node's drawn children before its copied ones (verify.sample_accept)
        self.sources = _long(sources, device) if sources is not None else None
        self._clear_cached()

    def _clear_cached(self) -> None:
        self._lists: dict[str, list] = {}  # host copies of columns, made when asked for
        self._anc: torch.Tensor | None = None
        self._up: torch.Tensor | None = None
        self._max_depth: int | None = None

    @classmethod
    def from_columns(cls, tokens, parents, log_confidences, log_values, depths, candidates, sources,
                     depth_bound: int) -> "DraftTree":
        """A tree from columns a rerank has already built and checked (no copies, no checks)."""
        tree = cls.__new__(cls)
        tree.tokens, tree.parents, tree.log_confidences = tokens, parents, log_confidences
        tree.depths, tree.log_values, tree.candidates, tree.sources = depths, log_values, candidates, sources
        tree._depth_bound = depth_bound
        tree._clear_cached()
        return tree

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def size(self) -> int:
        """Number of drafted nodes (the root is not a draft)."""
        return len(self) - 1

    @property
    def depth_bound(self) -> int:
        """At least the deepest node's depth (known without asking the device when built by a rerank)."""
        return self._depth_bound if self._depth_bound is not None else self.max_depth

    @property
    def max_depth(self) -> int:
        if self._max_depth is None:
            self._max_depth = int(self.depths.max())
        return self._max_depth

    def _list(self, name: str) -> list:
        if name not in self._lists:
            self._lists[name] = getattr(self, name).tolist()
        return self._lists[name]

    @property
    def candidate_ids(self) -> list[int]:
        """Pool id of each node (-1 for the root): what links the tree back to its expansion."""
        return self._list("candidates")

    def copied(self) -> list[bool]:
        """Per node: is it a fixed candidate copied from the context (not drafted)?"""
        if self.sources is None:
            return [False] * len(self)
        return [s == COPIED for s in self._list("sources")]

    def children(self) -> list[list[int]]:
        kids: list[list[int]] = [[] for _ in range(len(self))]
        for i, p in enumerate(self._list("parents")[1:], start=1):
            kids[p].append(i)
        return kids

    @property
    def parent_rows(self) -> torch.Tensor:
        """Each node's parent, the root standing for its own (cached)."""
        if self._up is None:
            self._up = self.parents.clamp_min(0)
        return self._up

    def ancestor_matrix(self) -> torch.Tensor:
        """(N, N) bool: [i, j] is True when j is i or one of i's ancestors (cached). Built in
        one scatter of every node's [self, parent, grandparent, ...] columns; the root is its
        own parent here, so chasing past it stays on it (it is every node's ancestor anyway)."""
        if self._anc is None:
            n, dev = len(self), self.tokens.device
            up = self.parent_rows
            cols, cur = [torch.arange(n, device=dev)], up
            for level in range(self.depth_bound):
                cols.append(cur)
                if level + 1 < self.depth_bound:
                    cur = up.index_select(0, cur)
            anc = torch.zeros(n, n, dtype=torch.bool, device=dev)
            self._anc = anc.scatter_(1, torch.stack(cols, 1), True)
        return self._anc

    def attention_mask(self, prefix_len: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """Additive 4D mask (1, 1, N, prefix_len + N): the prefix and ancestors are visible."""
        n = len(self)
        anc = self.ancestor_matrix().to(device)
        mask = torch.zeros(n, prefix_len + n, dtype=dtype, device=anc.device)
        mask[:, prefix_len:].masked_fill_(~anc, torch.finfo(dtype).min)
        return mask[None, None]

    def position_ids(self, prefix_len: int, device=None) -> torch.Tensor:
        return (self.depths + prefix_len).to(device)[None]

    def path_to(self, i: int) -> list[int]:
        par = self._list("parents")
        path = []
        while i >= 0:
            path.append(i)
            i = par[i]
        return path[::-1]

    def paths(self) -> list[list[int]]:
        """Every root-to-leaf path (EAGLE's "retrieve indices")."""
        kids = self.children()
        return [self.path_to(i) for i in range(len(self)) if not kids[i]]

    def nodes(self) -> list[Node]:
        conf = self.log_confidences.double().exp().tolist()
        val = self.log_values.double().exp().tolist()
        return [Node(i, t, p, d, c if i else 1.0, v) for i, (t, p, d, c, v) in
                enumerate(zip(self._list("tokens"), self._list("parents"), self._list("depths"), conf, val))]

    def __repr__(self) -> str:
        return f"DraftTree(size={self.size}, depth={self.max_depth})"


def max_candidates(top_k: int, depth: int) -> int:
    """How many candidates EAGLE-2 expansion produces: top_k at depth 1, top_k² per deeper step."""
    return top_k + (depth - 1) * top_k * top_k


def rerank(root_token: int, tokens: torch.Tensor, parents: torch.Tensor, log_confidences: torch.Tensor,
           log_values: torch.Tensor, total_tokens: int) -> tuple[DraftTree, list[int]]:
    """Keep the `total_tokens` candidates with the highest value, as a tree (candidates given
    as tensors in creation order; parents index them, -1 = root). Returns the tree and the
    kept candidate ids. Policies call CandidatePool.rerank, which this wraps."""
    n = tokens.numel()
    pool = CandidatePool(tokens.device, capacity=n)
    pool.n = n
    pool.tokens, pool.parents = _long(tokens, pool.device), _long(parents, pool.device)
    pool.log_conf = log_confidences.float().reshape(-1)
    pool.log_value = log_values.float().reshape(-1)
    depth = [0] * n
    for i, p in enumerate(pool.parents.tolist()):
        depth[i] = (depth[p] if p >= 0 else 0) + 1
    pool.depth = torch.tensor(depth, dtype=torch.long)
    pool.max_depth = max(depth, default=0)
    tree = pool.rerank(root_token, total_tokens)
    kept = set(tree.candidate_ids)  # with -1, the root
    if any(p not in kept for p in pool.parents[tree.candidates[1:]].tolist()):
        raise ValueError("rerank produced an orphan: candidate values must not increase along a path")
    return tree, tree.candidate_ids[1:]
