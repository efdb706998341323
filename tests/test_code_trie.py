"""Semantic-ID decoding: the prefix table and the batched beam search
against the plain oracle (`kernels.reference.constrained_beam_search`)."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from vllm_mtgr.decoding.beams import beam_search
from vllm_mtgr.kernels.reference import constrained_beam_search
from vllm_mtgr.layout.code_trie import CodeTrie


def _codes(items: int, sizes: list[int], seed: int) -> torch.Tensor:
    """`items` distinct random codes over `sizes` tokens per level."""
    rng = random.Random(seed)
    every = list(itertools.product(*(range(s) for s in sizes)))
    return torch.tensor(rng.sample(every, items))


def _step(sizes: list[int], seed: int):
    """A fixed random next-token distribution per prefix (a stand-in model)."""

    def step(tokens: torch.Tensor) -> torch.Tensor:
        rows = []
        for prefix in tokens.tolist():
            g = torch.Generator().manual_seed(hash((seed, *prefix)) % 2**31)
            rows.append(torch.randn(sizes[len(prefix)], generator=g).log_softmax(0))
        return torch.stack(rows).double()

    return step


def test_allowed_tokens_are_exactly_the_codes_next_tokens():
    seed = random.randrange(2**31)
    codes = _codes(60, [4, 5, 6], seed)
    trie = CodeTrie(codes, [4, 5, 6])
    for depth in range(3):
        prefixes = (
            torch.unique(codes[:, :depth], dim=0)
            if depth
            else torch.zeros(1, 0, dtype=torch.long)
        )
        nodes = torch.zeros(len(prefixes), dtype=torch.long)
        for d in range(depth):
            nodes = trie.advance(nodes, prefixes[:, d], d)
        allowed = trie.allowed(nodes, depth)
        for prefix, row in zip(prefixes.tolist(), allowed, strict=True):
            match = (codes[:, :depth] == torch.tensor(prefix, dtype=torch.long)).all(1)
            expected = set(codes[match, depth].tolist())
            assert set(row.nonzero().flatten().tolist()) == expected, f"seed {seed}"
        assert trie.find(prefixes).tolist() == nodes.tolist(), f"seed {seed}"
    # Prefixes of no item (and tokens out of range) have no node.
    present = {tuple(row) for row in codes[:, :2].tolist()}
    grid = itertools.product(range(-1, 6), range(-1, 7))
    absent = [prefix for prefix in grid if prefix not in present]
    assert (trie.find(torch.tensor(absent)) == -1).all(), f"seed {seed}"
    leaves = torch.zeros(len(codes), dtype=torch.long)
    for d in range(3):
        leaves = trie.advance(leaves, codes[:, d], d)
    assert trie.item(leaves).tolist() == list(range(1, 61)), f"seed {seed}"


@pytest.mark.parametrize("width", [1, 3, 10, 200])
def test_beam_search_equals_the_oracle(width):
    seed = random.randrange(2**31)
    sizes = [5, 4, 3]
    codes = _codes(40, sizes, seed)
    seen = set(random.Random(seed).sample(range(1, 41), 5))
    step = _step(sizes, seed)
    items, scores = beam_search(
        step, CodeTrie(codes), width, torch.tensor(sorted(seen))
    )
    expected = constrained_beam_search(step, codes, width, seen)
    assert items.tolist() == [item for item, _ in expected], f"seed {seed}"
    want = torch.tensor([s for _, s in expected], dtype=torch.float64)
    assert torch.allclose(scores.double(), want, rtol=1e-5), f"seed {seed}"
    if width >= 40:  # wide enough to be exhaustive: the true top items
        assert len(items) == 35 and not seen & set(items.tolist())


def test_seen_items_cost_no_beam():
    # The model prefers exactly the seen items: dropping them only at the last
    # level would leave fewer than `width` results.
    seed = random.randrange(2**31)
    sizes = [4, 4, 3]
    codes = _codes(45, sizes, seed)
    seen = set(random.Random(seed).sample(range(1, 46), 12))
    favourite = codes[torch.tensor(sorted(seen)) - 1]
    noise = _step(sizes, seed)  # no ties

    def step(tokens: torch.Tensor) -> torch.Tensor:
        depth = tokens.shape[1]
        logp = noise(tokens) - 20.0
        for beam, prefix in enumerate(tokens.tolist()):
            for code in favourite.tolist():
                if code[:depth] == prefix:
                    logp[beam, code[depth]] += 20.0
        return logp

    for width in (3, 8, 20):
        items, scores = beam_search(step, CodeTrie(codes), width,
                                    torch.tensor(sorted(seen)))  # fmt: skip
        assert len(items) == width and not seen & set(items.tolist()), f"seed {seed}"
        expected = constrained_beam_search(step, codes, width, seen)
        assert items.tolist() == [item for item, _ in expected], f"seed {seed}"


def test_random_searches_never_return_a_non_item():
    seed = random.randrange(2**31)
    rng = random.Random(seed)
    for _ in range(50):
        sizes = [rng.randint(2, 6) for _ in range(rng.randint(1, 4))]
        total = 1
        for s in sizes:
            total *= s
        codes = _codes(rng.randint(1, min(total, 50)), sizes, rng.randrange(2**31))
        items, scores = beam_search(
            _step(sizes, rng.randrange(2**31)),
            CodeTrie(codes, sizes),
            rng.randint(1, 20),
        )
        assert ((items >= 1) & (items <= len(codes))).all(), f"seed {seed}"
        assert len(set(items.tolist())) == len(items)
        assert (scores[:-1] >= scores[1:]).all()


def test_bad_code_tables_are_refused():
    with pytest.raises(ValueError, match="two items share a code"):
        CodeTrie(torch.tensor([[0, 1], [0, 1]]))
    with pytest.raises(ValueError, match="indices >= 0"):
        CodeTrie(torch.tensor([[0, -1]]))
    with pytest.raises(ValueError, match=r"need one per level, >= \[1, 3\]"):
        CodeTrie(torch.tensor([[0, 2]]), [1, 2])
