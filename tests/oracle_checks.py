"""Compare what vLLM served with what the oracle computes.

Engines under test run with `logprobs_mode="processed_logits"` and request
every token's value: each generation step then returns the served logits
(after seen items are set to -inf), which must equal the oracle's.
"""

from __future__ import annotations

import torch

from vllm_mtgr.kernels.reference import HSTUReference

TOLERANCE = 1e-4  # fp32 on CPU


def served_logits(step_logprobs: dict, vocab_size: int) -> torch.Tensor:
    """One step's `{token_id: Logprob}` (all tokens requested) as a dense row."""
    row = torch.full((vocab_size,), float("-inf"), dtype=torch.float64)
    for token_id, logprob in step_logprobs.items():
        row[token_id] = logprob.logprob
    return row


def oracle_logits(
    reference: HSTUReference,
    history: list[int],
    generated: list[int],
    timestamps: list[int] | None,
    request_timestamp: int | None,
    exclude_seen: bool,
    vocab_size: int,
) -> list[torch.Tensor]:
    """Expected logit rows for each generation step (-inf where excluded)."""
    sequence = history + generated
    with torch.no_grad():
        logits = reference.sequence_logits(
            sequence, timestamps, request_timestamp, history_length=len(history)
        ).double()
    rows = []
    for step in range(len(generated)):
        row = torch.full((vocab_size,), float("-inf"), dtype=torch.float64)
        row[: logits.shape[1]] = logits[len(history) - 1 + step]
        if exclude_seen:
            row[sequence[: len(history) + step]] = float("-inf")
        rows.append(row)
    return rows


def assert_matches_oracle(
    output,
    reference: HSTUReference,
    history: list[int],
    timestamps: list[int] | None = None,
    request_timestamp: int | None = None,
    exclude_seen: bool = True,
    tolerance: float = TOLERANCE,
) -> None:
    """Every generated step's full logit row equals the oracle's."""
    vocab_size = reference._embedding_module._item_emb.num_embeddings + 1
    completion = output.outputs[0]
    generated = list(completion.token_ids)
    expected = oracle_logits(
        reference,
        history,
        generated,
        timestamps,
        request_timestamp,
        exclude_seen,
        vocab_size,
    )
    for step, want in enumerate(expected):
        got = served_logits(completion.logprobs[step], vocab_size)
        finite = torch.isfinite(want)
        assert torch.equal(torch.isfinite(got), finite), f"step {step}: masks differ"
        error = float((got[finite] - want[finite]).norm() / want[finite].norm())
        assert error < tolerance, f"step {step}: relative error {error:.2e}"


def check_top_logprobs(
    reference: HSTUReference,
    history: list[int],
    generated: list[int],
    step: int,
    top: dict[str, float],
    timestamps: list[int] | None,
    request_timestamp: int | None,
    exclude_seen: bool = True,
) -> None:
    """A served step's top log-probabilities (`{"item_<id>": logprob}`, as
    the completions API returns them) equal the oracle's log-softmax."""
    vocab_size = reference._embedding_module._item_emb.num_embeddings + 1
    logits = oracle_logits(
        reference, history, generated, timestamps, request_timestamp,
        exclude_seen, vocab_size,
    )[step]  # fmt: skip
    want = torch.log_softmax(logits, dim=-1).topk(len(top))
    assert list(top) == [f"item_{i}" for i in want.indices.tolist()]
    got = torch.tensor(list(top.values()), dtype=torch.float64)
    error = float((got - want.values).norm() / want.values.norm())
    assert error < TOLERANCE, f"step {step}: relative error {error:.2e}"
