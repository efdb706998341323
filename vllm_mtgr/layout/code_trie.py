"""The prefix table of a catalogue's semantic IDs: which code token may come
next after a prefix, so that decoding never leaves the set of real items.

Codes are `[num_items, levels]` token indices (`converters.semantic_ids`;
level l's tokens are 0..sizes[l] - 1). The table is a trie stored level by
level as flat tensors, so that a whole batch of beams moves through it with
a few gathers on the device: every node at depth l has its children in one
contiguous run `first[node] .. first[node] + count[node]` of depth l + 1's
nodes, sorted by token. A beam's state is its node; depth `levels` nodes are
items. Torch only: the model, the logits constraint and the tests use it.
"""

from __future__ import annotations

import torch


class CodeTokens:
    """A semantic-ID model's vocabulary: code c of level l is token id
    `1 + offset[l] + c` (0 pads, as item ids do), levels one after another;
    an item is its code's tokens in level order. `codes` `[items, levels]`
    (row i: item i + 1), e.g. `converters.semantic_ids.read(...).codes`."""

    def __init__(self, codes: torch.Tensor) -> None:
        self.codes = codes
        self.trie = CodeTrie(codes)
        self.sizes = self.trie.sizes
        self.levels = len(self.sizes)
        self.offsets = torch.tensor([0, *self.sizes[:-1]]).cumsum(0) + 1
        self.num_tokens = sum(self.sizes)

    def tokens(self, items: list[int]) -> list[int]:
        """The token stream of a history: each item's codes, level by level."""
        return (self.codes[torch.tensor(items) - 1] + self.offsets).flatten().tolist()

    def items_of(self, tokens: torch.Tensor) -> torch.Tensor:
        """The item of each row of code tokens (`[n, levels]`); 0 where a
        row is the code of no item."""
        leaves = self.trie.find(tokens.cpu().long() - self.offsets)
        return torch.where(leaves >= 0, self.trie.item(leaves.clamp(min=0)), 0)

    def level_of(self, token: torch.Tensor) -> torch.Tensor:
        return (token[..., None] >= self.offsets).sum(-1) - 1

    def level_mask(self) -> torch.Tensor:
        """`[levels, num_tokens + 1]`: the token columns of each level."""
        columns = torch.arange(self.num_tokens + 1)
        return self.level_of(columns)[None, :] == torch.arange(self.levels)[:, None]


class CodeTrie:
    """Trie over `codes` (`[num_items, levels]`, row i: item i + 1)."""

    def __init__(self, codes: torch.Tensor, sizes: list[int] | None = None) -> None:
        """`sizes`: tokens per level of the model's code vocabulary (default:
        the largest token in each column, plus one)."""
        if codes.dim() != 2 or codes.shape[0] == 0 or (codes < 0).any():
            raise ValueError(
                f"codes: need [items, levels] of indices >= 0, got {list(codes.shape)}"
            )
        if len(torch.unique(codes, dim=0)) != codes.shape[0]:
            raise ValueError("codes: two items share a code")
        self.levels = codes.shape[1]
        used = [int(codes[:, level].max()) + 1 for level in range(self.levels)]
        self.sizes = used if sizes is None else list(sizes)
        if len(self.sizes) != self.levels or any(
            s < u for s, u in zip(self.sizes, used, strict=True)
        ):
            raise ValueError(f"sizes {self.sizes}: need one per level, >= {used}")
        # Node ids per depth: the distinct prefixes of that length, sorted.
        self.tokens: list[torch.Tensor] = []  # depth d >= 1: each node's last token
        self.first: list[torch.Tensor] = []  # depth d < levels: first child
        self.count: list[torch.Tensor] = []  # depth d < levels: children
        self.parent: list[torch.Tensor] = []  # depth d >= 1: each node's parent
        parents = torch.zeros(codes.shape[0], dtype=torch.long)  # the root
        for depth in range(1, self.levels + 1):
            prefixes, node = torch.unique(codes[:, :depth], dim=0, return_inverse=True)
            parent_of_node = torch.zeros(len(prefixes), dtype=torch.long)
            parent_of_node[node] = parents
            width = int(parents.max()) + 1
            count = torch.bincount(parent_of_node, minlength=width)
            self.count.append(count)
            self.first.append(torch.cumsum(count, 0) - count)
            self.tokens.append(prefixes[:, -1])
            self.parent.append(parent_of_node)
            parents = node
        # Most children of a node per depth: fixed, so the device never has
        # to tell the host how wide a beam step's tables are.
        self.most = [int(count.max()) for count in self.count]
        # Leaves in node order -> item ids (unique prefixes of full length).
        self.items = torch.empty(codes.shape[0], dtype=torch.long)
        self.items[parents] = torch.arange(1, codes.shape[0] + 1)
        self.leaves = parents  # item i + 1 -> its leaf

    def nodes(self, depth: int) -> int:
        """How many nodes the trie has at `depth` (0: the root)."""
        return len(self.tokens[depth - 1]) if depth else 1

    def to(self, device: torch.device | str) -> CodeTrie:
        self.leaves = self.leaves.to(device)
        for name in ("tokens", "first", "count", "parent"):
            setattr(self, name, [t.to(device) for t in getattr(self, name)])
        self.items = self.items.to(device)
        return self

    def allowed(self, nodes: torch.Tensor, depth: int) -> torch.Tensor:
        """`[beams, sizes[depth]]` bool: the tokens that may follow each
        beam's node (at `depth`, 0 = the root)."""
        first, count = self.first[depth][nodes], self.count[depth][nodes]
        mask = torch.zeros(len(nodes), self.sizes[depth], dtype=torch.bool,
                           device=nodes.device)  # fmt: skip
        offsets = torch.arange(self.most[depth], device=nodes.device)
        child = first[:, None] + offsets[None, :]
        real = offsets[None, :] < count[:, None]
        tokens = self.tokens[depth][child.clamp(max=len(self.tokens[depth]) - 1)]
        rows = torch.arange(len(nodes), device=nodes.device)[:, None].expand_as(child)
        mask[rows[real], tokens[real]] = True
        return mask

    def advance(
        self, nodes: torch.Tensor, tokens: torch.Tensor, depth: int
    ) -> torch.Tensor:
        """Each beam's child node for its next `tokens` (which `allowed`
        permits): a binary search in the node's sorted run of children."""
        first, count = self.first[depth][nodes], self.count[depth][nodes]
        children = self.tokens[depth]
        lo, hi = first, first + count
        for _ in range(self.most[depth].bit_length() + 1):
            mid = (lo + hi) // 2
            less = children[mid.clamp(max=len(children) - 1)] < tokens
            active = lo < hi
            lo = torch.where(active & less, mid + 1, lo)
            hi = torch.where(active & ~less, mid, hi)
        return lo

    def find(self, prefixes: torch.Tensor) -> torch.Tensor:
        """The node of each code prefix (`[n, depth]` token indices, any
        values); -1 where a prefix is no real item's."""
        nodes = torch.zeros(len(prefixes), dtype=torch.long, device=prefixes.device)
        for depth in range(prefixes.shape[1]):
            token, at = prefixes[:, depth], nodes.clamp(min=0)
            child = self.advance(at, token, depth)
            end = self.first[depth][at] + self.count[depth][at]
            last = len(self.tokens[depth]) - 1
            hit = (child < end) & (self.tokens[depth][child.clamp(max=last)] == token)
            nodes = torch.where(hit & (nodes >= 0), child, -1)
        return nodes

    def item(self, leaves: torch.Tensor) -> torch.Tensor:
        """Item ids of depth-`levels` nodes."""
        return self.items[leaves]
