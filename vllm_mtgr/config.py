"""The Hugging Face config shared by the vllm-mtgr models (`model_type: "mtgr"`).

One config class serves both architectures: `MTGRForCausalLM` (HSTU generative
retrieval) reads the HSTU fields, `MTGRForRanking` additionally reads the
ranking fields (token groups and task heads).

Token ids: 0 is padding, 1..num_items are the items (token id == item id, as in
Meta's research code), num_items + 1 is the unknown-item token; ranking models
add `<profile>` (num_items + 2) and `<candidate>` (num_items + 3) slots. No
special token is ever a retrieval result.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

# Timestamps travel to the model in M-RoPE-style position rows (see
# `vllm_mtgr.events`). vLLM switches those rows on when the config declares an
# `mrope_section`; the section sizes themselves are never used for rotation.
EVENT_ROWS_ROPE_PARAMETERS = {
    "rope_type": "default",
    "rope_theta": 10000.0,
    "mrope_section": [1, 1, 1],
}


class MTGRConfig(PretrainedConfig):
    model_type = "mtgr"
    ignore_keys_at_rope_validation = {"mrope_section"}

    def __init__(
        self,
        vocab_size: int = 3954,
        num_items: int | None = None,
        hidden_size: int = 50,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 1,
        attention_dim: int = 50,
        linear_dim: int = 50,
        max_position_embeddings: int = 211,
        num_time_buckets: int = 128,
        time_bucket_divisor: float = 0.301,
        layer_norm_eps: float = 1e-6,
        num_action_types: int = 0,
        logit_temperature: float = 0.05,
        attention_normalizer: int | None = None,
        # Ranking (MTGRForRanking) fields.
        task_names: list[str] | None = None,
        num_profile_features: int = 0,
        profile_vocab_size: int = 0,
        num_cross_features: int = 0,
        head_hidden_size: int = 0,
        max_candidates: int = 0,
        pad_token_id: int = 0,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.num_items = vocab_size - 2 if num_items is None else num_items
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.attention_dim = attention_dim
        self.linear_dim = linear_dim
        self.max_position_embeddings = max_position_embeddings
        self.num_time_buckets = num_time_buckets
        self.time_bucket_divisor = time_bucket_divisor
        self.layer_norm_eps = layer_norm_eps
        self.num_action_types = num_action_types
        self.logit_temperature = logit_temperature
        # HSTU divides SiLU attention by a fixed length, never by the runtime
        # length, so cached keys stay valid whatever follows them.
        self.attention_normalizer = attention_normalizer or max_position_embeddings
        self.task_names = list(task_names or [])
        self.num_profile_features = num_profile_features
        self.profile_vocab_size = profile_vocab_size
        self.num_cross_features = num_cross_features
        self.head_hidden_size = head_hidden_size
        self.max_candidates = max_candidates
        kwargs.setdefault("rope_parameters", dict(EVENT_ROWS_ROPE_PARAMETERS))
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(pad_token_id=pad_token_id, **kwargs)

    @property
    def unk_token_id(self) -> int:
        return self.num_items + 1

    @property
    def profile_token_id(self) -> int:
        return self.num_items + 2

    @property
    def candidate_token_id(self) -> int:
        return self.num_items + 3

    # vLLM reads these two names to size the KV cache.
    @property
    def head_dim(self) -> int:
        return self.attention_dim

    @property
    def num_key_value_heads(self) -> int:
        return self.num_attention_heads
