"""A small semantic-ID model and its oracle, shared by the engine and server
tests.

A small HSTU over the code tokens of residual k-means codes is written in
Meta's checkpoint format, converted, and made a semantic-ID model
(`converters.semantic_ids.make_model`). The oracle is
`kernels.reference.constrained_beam_search` (one beam at a time, the valid
next tokens read off the code table) over `HSTUReference` holding the
original weights.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from conftest import save_meta_checkpoint

from vllm_mtgr.converters import semantic_ids
from vllm_mtgr.converters.meta_hstu import ConversionOptions, convert
from vllm_mtgr.kernels.reference import HSTUReference, constrained_beam_search
from vllm_mtgr.layout.code_trie import CodeTokens

ITEMS = 300
MAX_BEAM = 64
MAX_EVENTS = 31  # (96 positions - 2 levels + 1) // 2 levels
TOLERANCE = 1e-4


@dataclass
class SemanticModel:
    reference: HSTUReference
    vocab: CodeTokens
    model_dir: Path


def make_semantic_model(root: Path) -> SemanticModel:
    vectors = torch.randn(ITEMS, 12, generator=torch.Generator().manual_seed(3))
    ids = semantic_ids.build(vectors, levels=2, codes_per_level=8, seed=3)
    vocab = CodeTokens(ids.codes)
    torch.manual_seed(4)
    reference = HSTUReference(
        num_items=vocab.num_tokens, embedding_dim=32, num_blocks=2, num_heads=2,
        attention_dim=16, linear_dim=24, max_sequence_len=96,
    )  # fmt: skip
    with torch.no_grad():
        for name, param in reference.named_parameters():
            param.normal_(0.0, 0.5 if "_rel_attn_bias" in name else 0.2)
    reference.eval()
    checkpoint = save_meta_checkpoint(reference, root / "hstu.pt")
    model_dir = convert(checkpoint, root / "model", ConversionOptions(num_heads=2))
    semantic_ids.make_model(model_dir, ids, max_beam_width=MAX_BEAM)
    return SemanticModel(reference, vocab, model_dir)


def random_request(rng: random.Random, events: int, width: int, **fields) -> dict:
    start = rng.randrange(10**6)
    times = sorted(start + rng.randrange(10**5) for _ in range(events))
    history = {"items": [rng.randint(1, ITEMS) for _ in range(events)],
               "timestamps": times}  # fmt: skip
    when = times[-1] + rng.randrange(10**4)
    return {"history": history, "beam_width": width, "request_timestamp": when,
            **fields}  # fmt: skip


def oracle(model: SemanticModel, request: dict) -> tuple[list[int], torch.Tensor]:
    """(items, scores) of the oracle's beam search for one request."""
    vocab, reference = model.vocab, model.reference
    items = request["history"]["items"]
    history = vocab.tokens(items)
    times = [t for t in request["history"]["timestamps"] for _ in range(vocab.levels)]

    def step(prefix: torch.Tensor) -> torch.Tensor:
        depth = prefix.shape[1]
        low = int(vocab.offsets[depth])
        tokens = history + (prefix[0] + vocab.offsets[:depth]).tolist()
        logits = reference.sequence_logits(
            tokens, times, request["request_timestamp"], len(history)
        )[-1]
        return logits[low : low + vocab.sizes[depth]].log_softmax(-1)[None]

    seen = set(items) if request.get("exclude_seen", True) else set()
    with torch.no_grad():
        found = constrained_beam_search(step, vocab.codes, request["beam_width"], seen)
    return [item for item, _ in found], torch.tensor([score for _, score in found])


def check(result: dict, expected: tuple[list[int], torch.Tensor]) -> None:
    items, scores = expected
    assert result["items"] == items
    served = torch.tensor(result["scores"], dtype=torch.float64)
    error = (served - scores.double()).abs().max() / scores.abs().max()
    assert error < TOLERANCE
