"""Constrained beam search over a catalogue's codes, for many requests at once.

Each request has a row of beams (trie nodes and summed log-probabilities;
-inf marks a row's unused beams); a step takes every beam's log-probabilities
of the next code token and keeps each request's best `width` valid
continuations. A request's seen items are taken out of its trie before the
search (`excluded_nodes`): a prefix all of whose items the user has seen is
never extended, so no beam is spent on it and a request gets `width` items
whenever its catalogue has that many unseen ones. (Dropping seen items only
at the last level would return fewer: the beams that led to them are gone.)
The served model (`vllm_mtgr.models.semantic`), the logits constraint for vLLM's
beam search (`vllm_mtgr.decoding.semantic_constraint`) and the training example run
it; the oracle `kernels.reference.constrained_beam_search` checks it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from vllm_mtgr.layout.code_trie import CodeTrie

# Per depth 0..levels, sorted keys `row * (nodes at that depth + 1) + node`.
Excluded = list[torch.Tensor]


@dataclass
class BeamStep:
    """Each request's beams after a step, `[requests, width]` each, best first."""

    nodes: torch.Tensor  # trie nodes at the new depth
    scores: torch.Tensor  # summed log-probabilities; -inf: no beam
    parents: torch.Tensor  # the beam (of the step's input row) it extends
    tokens: torch.Tensor  # the code it appended, 0..sizes[depth] - 1


def excluded_nodes(trie: CodeTrie, seen: list[torch.Tensor]) -> Excluded:
    """The nodes each request (row) must never reach: its seen items' leaves,
    and every node whose children are all excluded, up to the root's
    children. `seen[row]`: item ids (repeats allowed), on the trie's device."""
    device = trie.items.device
    leaves = [trie.leaves[items.to(device).long() - 1] for items in seen]
    rows = [torch.full_like(nodes, row) for row, nodes in enumerate(leaves)]
    if not leaves:
        return [torch.empty(0, dtype=torch.long, device=device)] * (trie.levels + 1)
    width = trie.nodes(trie.levels) + 1
    keys = (torch.cat(rows) * width + torch.cat(leaves)).unique()
    excluded = [keys]
    for depth in range(trie.levels, 1, -1):
        row, node = keys // (trie.nodes(depth) + 1), keys % (trie.nodes(depth) + 1)
        parent_width = trie.nodes(depth - 1) + 1
        parents, dead_children = torch.unique(
            row * parent_width + trie.parent[depth - 1][node], return_counts=True
        )
        children = trie.count[depth - 1][parents % parent_width]
        keys = parents[dead_children == children]
        excluded.append(keys)
    excluded.append(torch.empty(0, dtype=torch.long, device=device))  # the root
    return excluded[::-1]


def allowed_children(
    trie: CodeTrie,
    nodes: torch.Tensor,
    depth: int,
    excluded: Excluded | None = None,
    beams_per_row: int = 1,
) -> torch.Tensor:
    """`[beams, sizes[depth]]` bool: the tokens that take each beam (`nodes`,
    at `depth`) to a node its request may reach; beam b is request
    b // `beams_per_row`'s."""
    mask = trie.allowed(nodes, depth)
    if excluded is None or not len(excluded[depth + 1]):
        return mask
    beams, tokens = mask.nonzero(as_tuple=True)
    children = trie.advance(nodes[beams], tokens, depth)
    keys = (beams // beams_per_row) * (trie.nodes(depth + 1) + 1) + children
    mask[beams, tokens] = ~torch.isin(keys, excluded[depth + 1])
    return mask


def next_beams(
    trie: CodeTrie,
    depth: int,
    nodes: torch.Tensor,
    scores: torch.Tensor,
    logp: torch.Tensor,
    width: int,
    widths: torch.Tensor | None = None,
    excluded: Excluded | None = None,
) -> BeamStep:
    """Extend `nodes`/`scores` (`[R, B]`) by the tokens of `logp` (`[R, B,
    sizes[depth]]`) that the trie allows, keeping `width` beams per request
    (`widths` `[R]`: fewer for some), never into a node of `excluded`."""
    requests, beams, size = logp.shape
    mask = allowed_children(trie, nodes.flatten(), depth, excluded, beams)
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
    children = children.clamp(max=trie.nodes(depth + 1) - 1).view_as(best)
    return BeamStep(children, best, parents, tokens)


def beam_search(
    step: Callable[[torch.Tensor], torch.Tensor],
    trie: CodeTrie,
    width: int,
    seen: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One request: (items `[<= width]`, summed log-probabilities), best
    first. `step(tokens)` gets the beams' code tokens so far (`[beams,
    depth]`) and returns log-probabilities `[beams, sizes[depth]]` of the
    next token; items in `seen` (ids) are left out of the search."""
    device = trie.items.device
    excluded = excluded_nodes(trie, [seen]) if seen is not None else None
    nodes = torch.zeros(1, 1, dtype=torch.long, device=device)
    scores = torch.zeros(1, 1, device=device)
    tokens = torch.zeros(1, 0, dtype=torch.long, device=device)
    for depth in range(trie.levels):
        logp = step(tokens).float()[None]
        beam = next_beams(trie, depth, nodes, scores, logp, width, excluded=excluded)
        nodes, scores = beam.nodes, beam.scores
        tokens = torch.cat([tokens[beam.parents[0]], beam.tokens[0][:, None]], 1)
    valid = int(scores.isfinite().sum())
    return trie.item(nodes[0, :valid]), scores[0, :valid]
