"""Decode steps replay full CUDA graphs and still equal the oracle (GPU only).

The test counts calls of the attention backend's `forward` in the engine
core: a step replayed from a full CUDA graph runs no Python, so decode steps
must add no calls.
"""

from __future__ import annotations

import multiprocessing
import random

import pytest
import torch
from conftest import ENGINE_KWARGS, TINY, engine_for_module
from oracle_checks import assert_matches_oracle
from test_engine_retrieval import greedy, random_history

from vllm_mtgr.prompts import history_prompt

vllm = pytest.importorskip("vllm", reason="needs vLLM")

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU"
    ),
]
CAPTURE_SIZES = [1, 2, 4, 8]


@pytest.fixture(scope="module")
def graphed(tiny_model):
    from vllm_mtgr.attention import HSTUAttentionImpl

    # The engine core is forked from this process: it inherits the patched
    # class, and the counter lives in shared memory.
    calls = multiprocessing.get_context("fork").Value("i", 0)
    forward = HSTUAttentionImpl.forward

    def counted(self, *args, **kwargs):
        with calls.get_lock():
            calls.value += 1
        return forward(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HSTUAttentionImpl, "forward", counted)
        patch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "fork")
        with engine_for_module(
            str(tiny_model.model_dir),
            **{
                **ENGINE_KWARGS,
                "enforce_eager": False,
                "compilation_config": {
                    "cudagraph_mode": "FULL_AND_PIECEWISE",
                    "cudagraph_capture_sizes": CAPTURE_SIZES,
                },
            },
        ) as llm:
            yield llm, calls


@pytest.mark.parametrize("batch", [1, 3])
def test_decode_steps_replay_full_graphs(graphed, tiny_model, batch):
    llm, calls = graphed
    rng = random.Random(batch)
    # 3 requests pad to the captured size 4: the padded request has no keys
    # and no cache slot. Decoding crosses 16-token block boundaries.
    cases = [random_history(rng, length) for length in (14, 31, 46)[:batch]]
    steps = 8
    calls.value = 0
    outputs = llm.generate(
        [history_prompt(items, times) for items, times in cases],
        greedy(steps),
        use_tqdm=False,
    )
    for (items, times), output in zip(cases, outputs, strict=True):
        assert len(output.outputs[0].token_ids) == steps
        assert_matches_oracle(output, tiny_model.reference, items, times)
    # One prefill step runs the layers eagerly (piecewise graphs around
    # attention); the 7 decode steps would add 7 calls per layer without
    # full graphs.
    assert 0 < calls.value < TINY["num_blocks"] * steps // 2, calls.value
