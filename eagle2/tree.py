"""DraftTree: the tokens a policy proposes, as a tree rooted at the last accepted token.

Pure tensor/list code, no model: the tree's attention mask (each node sees the prefix and its
ancestors), its position ids (prefix length + depth) and its root-to-leaf paths all follow
from `parents`. Node 0 is the root: the newest token, already chosen by the target but not
yet fed to it. Nodes are ordered parents-before-children.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Node:
    """One tree node, for people and traces (the decoder itself works on the tensors)."""

    index: int
    token: int
    parent: int  # -1 for the root
    depth: int
    confidence: float  # draft probability of this token given its parent
    value: float  # product of confidences along the path from the root


class DraftTree:
    """Tokens + parent pointers; everything else (depth, value, mask, paths) is derived."""

    def __init__(self, tokens, parents, log_confidences=None, candidate_ids=None):
        self.tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
        self.parents = torch.as_tensor(parents, dtype=torch.long).reshape(-1)
        n = self.tokens.numel()
        if n == 0 or self.parents.numel() != n:
            raise ValueError("a draft tree needs a root and one parent per token")
        par = self.parents.tolist()
        if par[0] != -1 or any(not (0 <= p < i) for i, p in enumerate(par) if i > 0):
            raise ValueError("parents must precede children and node 0 must be the root")
        if log_confidences is None:
            log_confidences = torch.zeros(n)
        self.log_confidences = torch.as_tensor(log_confidences, dtype=torch.float32).reshape(-1)
        depths, log_values = [0] * n, [0.0] * n
        lc = self.log_confidences.tolist()
        for i in range(1, n):
            depths[i] = depths[par[i]] + 1
            log_values[i] = log_values[par[i]] + lc[i]
        self.depths = torch.tensor(depths, dtype=torch.long)
        self.log_values = torch.tensor(log_values, dtype=torch.float32)
        self.candidate_ids = list(candidate_ids) if candidate_ids is not None else list(range(-1, n - 1))
        self._parent_list = par

    def __len__(self) -> int:
        return self.tokens.numel()

    @property
    def size(self) -> int:
        """Number of drafted nodes (the root is not a draft)."""
        return len(self) - 1

    @property
    def max_depth(self) -> int:
        return int(self.depths.max())

    def children(self) -> list[list[int]]:
        kids: list[list[int]] = [[] for _ in range(len(self))]
        for i, p in enumerate(self._parent_list[1:], start=1):
            kids[p].append(i)
        return kids

    def ancestor_matrix(self) -> torch.Tensor:
        """(N, N) bool: [i, j] is True when j is i or one of i's ancestors."""
        n = len(self)
        anc = torch.eye(n, dtype=torch.bool)
        for i, p in enumerate(self._parent_list[1:], start=1):
            anc[i] |= anc[p]
        return anc

    def attention_mask(self, prefix_len: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """Additive 4D mask (1, 1, N, prefix_len + N): the prefix and ancestors are visible."""
        n = len(self)
        mask = torch.zeros(n, prefix_len + n, dtype=dtype, device=device)
        mask[:, prefix_len:].masked_fill_(~self.ancestor_matrix().to(device), torch.finfo(dtype).min)
        return mask[None, None]

    def position_ids(self, prefix_len: int, device=None) -> torch.Tensor:
        return (self.depths + prefix_len).to(device)[None]

    def path_to(self, i: int) -> list[int]:
        path = []
        while i >= 0:
            path.append(i)
            i = self._parent_list[i]
        return path[::-1]

    def paths(self) -> list[list[int]]:
        """Every root-to-leaf path (EAGLE's "retrieve indices")."""
        kids = self.children()
        return [self.path_to(i) for i in range(len(self)) if not kids[i]]

    def nodes(self) -> list[Node]:
        conf = self.log_confidences.exp().tolist()
        val = self.log_values.exp().tolist()
        return [Node(i, t, p, d, c if i else 1.0, v) for i, (t, p, d, c, v) in
                enumerate(zip(self.tokens.tolist(), self._parent_list, self.depths.tolist(), conf, val))]

    def __repr__(self) -> str:
        return f"DraftTree(size={self.size}, depth={self.max_depth})"


def max_candidates(top_k: int, depth: int) -> int:
    """How many candidates EAGLE-2 expansion produces: top_k at depth 1, top_k² per deeper step."""
    return top_k + (depth - 1) * top_k * top_k


def rerank(root_token: int, tokens: torch.Tensor, parents: torch.Tensor, log_confidences: torch.Tensor,
           log_values: torch.Tensor, total_tokens: int) -> tuple[DraftTree, list[int]]:
    """Keep the `total_tokens` candidates with the highest value, as a tree.

    Candidates are given in creation order (a parent before its children; parents index the
    candidates, -1 = root). Values never increase along a path, and ties are broken by
    creation order, so every kept node's parent is kept too. Returns the tree (nodes in
    creation order, i.e. parents first) and the kept candidate ids.
    """
    c = tokens.numel()
    k = min(total_tokens, c)
    order = torch.sort(-log_values, stable=True).indices[:k]
    keep = torch.sort(order).values
    position = torch.full((c + 1,), -1, dtype=torch.long)  # candidate id + 1 -> node index
    position[0] = 0
    position[keep + 1] = torch.arange(1, k + 1)
    node_parents = position[parents[keep] + 1]
    if bool((node_parents < 0).any()):
        raise ValueError("rerank produced an orphan: candidate values must not increase along a path")
    tree = DraftTree(
        torch.cat([torch.tensor([root_token]), tokens[keep]]),
        torch.cat([torch.tensor([-1]), node_parents]),
        torch.cat([torch.zeros(1), log_confidences[keep].float()]),
        candidate_ids=[-1] + keep.tolist(),
    )
    return tree, keep.tolist()


def value_cutoff(log_values: torch.Tensor, total_tokens: int) -> float:
    """The smallest value that survived the rerank (exp of the k-th largest log value)."""
    if log_values.numel() == 0:
        return 1.0
    k = min(total_tokens, log_values.numel())
    return math.exp(float(torch.topk(log_values, k).values[-1]))
