"""One step of constrained beam search for many requests at once.

Each request has a row of beams (trie nodes and summed log-probabilities;
-inf marks a row's unused beams); a step takes every beam's log-probabilities
of the next code token and keeps each request's best `width` valid
continuations. The served model (`vllm_mtgr.semantic`) and the training
example run it; `code_trie.beam_search` (one request) and the oracle
`kernels.reference.constrained_beam_search` check it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_mtgr.code_trie import CodeTrie


@dataclass
class BeamStep:
    """Each request's beams after a step, `[requests, width]` each, best first."""

    nodes: torch.Tensor  # trie nodes at the new depth
    scores: torch.Tensor  # summed log-probabilities; -inf: no beam
    parents: torch.Tensor  # the beam (of the step's input row) it extends
    tokens: torch.Tensor  # the code it appended, 0..sizes[depth] - 1


def seen_keys(requests: list[torch.Tensor], num_items: int) -> torch.Tensor:
    """The seen items of each request as sorted keys `row * (num_items + 1) +
    item`, the form `next_beams` takes."""
    keys = [items.long() + row * (num_items + 1) for row, items in enumerate(requests)]
    if not keys:
        return torch.empty(0, dtype=torch.long)
    return torch.cat(keys).unique()


def next_beams(
    trie: CodeTrie,
    depth: int,
    nodes: torch.Tensor,
    scores: torch.Tensor,
    logp: torch.Tensor,
    width: int,
    widths: torch.Tensor | None = None,
    seen: torch.Tensor | None = None,
) -> BeamStep:
    """Extend `nodes`/`scores` (`[R, B]`) by the tokens of `logp` (`[R, B,
    sizes[depth]]`) that the trie allows, keeping `width` beams per request
    (`widths` `[R]`: fewer for some). At the last depth, items whose key is
    in `seen` (`seen_keys`) are never taken."""
    requests, beams, size = logp.shape
    flat_nodes = nodes.flatten()
    mask = trie.allowed(flat_nodes, depth)
    if depth == trie.levels - 1 and seen is not None and len(seen):
        rows, tokens = mask.nonzero(as_tuple=True)
        items = trie.item(trie.advance(flat_nodes[rows], tokens, depth))
        keys = (rows // beams) * (len(trie.items) + 1) + items
        mask[rows, tokens] = ~torch.isin(keys, seen.to(keys.device))
    mask = mask.view(requests, beams, size)
    total = torch.where(mask, scores[..., None] + logp.float(), float("-inf"))
    best, flat = total.flatten(1).topk(min(width, beams * size), dim=1)
    if widths is not None:
        rank = torch.arange(best.shape[1], device=best.device)
        best = best.masked_fill(rank[None, :] >= widths[:, None], float("-inf"))
    parents, tokens = flat // size, flat % size
    children = trie.advance(nodes.gather(1, parents).flatten(), tokens.flatten(), depth)
    # A beam without a score (-inf) may sit past its node's children: keep
    # its node inside the table; nothing it leads to is ever returned.
    children = children.clamp(max=len(trie.tokens[depth]) - 1).view_as(best)
    return BeamStep(children, best, parents, tokens)
