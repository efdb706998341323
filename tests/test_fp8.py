"""`--quantization fp8`: the HSTU layers' projections in FP8 (Hopper GPUs).

vLLM quantizes the layers' weights when it loads them (per tensor, dynamic
activation scales); the item table and the attention stay in bf16. The
test serves the tiny model twice, bf16 and FP8, and bounds how far the
next-item results move: the share of the top 10 both return, and the
logits' error relative to their spread.
"""

from __future__ import annotations

import random

import pytest
import torch
from conftest import ENGINE_KWARGS, engine_for_module
from test_engine_retrieval import random_history

from vllm_mtgr.prompts import history_prompt

vllm = pytest.importorskip("vllm", reason="needs vLLM")

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
        reason="FP8 matmuls need an sm89+ GPU (Ada, Hopper); the CPU has none",
    ),
]
TOP = 10
USERS = 16
# The H200 measured mean overlap 0.944 and a largest error of 0.259 of the
# spread (benchmarks/results/h200-20261203b); FP8 with wrong scales would
# keep almost none of the top 10.
MIN_MEAN_OVERLAP = 0.85
MAX_LOGIT_ERROR = 0.35  # of the bf16 logits' spread (max - min of the top 10)


def top_logits(model_dir: str, prompts: list[dict], **kwargs) -> list[dict[int, float]]:
    """Each prompt's top `TOP` next items and their logits."""
    engine = {**ENGINE_KWARGS, "dtype": "bfloat16", **kwargs}
    with engine_for_module(model_dir, **engine) as llm:
        params = vllm.SamplingParams(max_tokens=1, temperature=0.0, logprobs=TOP)
        outputs = llm.generate(prompts, params, use_tqdm=False)
    return [
        {token: entry.logprob for token, entry in out.outputs[0].logprobs[0].items()}
        for out in outputs
    ]


def test_fp8_weights_keep_the_top_items(tiny_model):
    rng = random.Random(8)
    prompts = [
        history_prompt(*random_history(rng, rng.randint(5, 90))) for _ in range(USERS)
    ]
    model_dir = str(tiny_model.model_dir)
    exact = top_logits(model_dir, prompts)
    fp8 = top_logits(model_dir, prompts, quantization="fp8")
    overlaps, errors = [], []
    for reference, quantized in zip(exact, fp8, strict=True):
        ref_top = sorted(reference, key=reference.get, reverse=True)[:TOP]
        fp8_top = sorted(quantized, key=quantized.get, reverse=True)[:TOP]
        overlaps.append(len(set(ref_top) & set(fp8_top)) / TOP)
        spread = reference[ref_top[0]] - reference[ref_top[-1]]
        shared = set(ref_top) & set(quantized)
        errors.append(max(abs(reference[t] - quantized[t]) for t in shared) / spread)
    mean_overlap = sum(overlaps) / len(overlaps)
    print(f"fp8: mean top-{TOP} overlap {mean_overlap:.3f}, logit error "
          f"max {max(errors):.4f} of the spread")  # fmt: skip
    assert mean_overlap >= MIN_MEAN_OVERLAP, overlaps
    assert max(errors) <= MAX_LOGIT_ERROR, errors
