"""The Hugging Face config shared by the vllm-mtgr models (`model_type: "mtgr"`).

One config class serves the three architectures: `MTGRForCausalLM` (HSTU
generative retrieval) reads the HSTU fields, `MTGRForRanking` additionally
reads the ranking fields (token groups and task heads), and
`MTGRForSemanticRetrieval` (HSTU over semantic-ID code tokens, beam search)
`max_beam_width`; its "items" are code tokens (`vllm_mtgr.layout.code_trie`).

Token ids: 0 is padding, 1..num_items are the items (token id == item id, as in
Meta's research code), num_items + 1 is the unknown-item token; ranking models
add `<profile>` (num_items + 2) and `<candidate>` (num_items + 3) slots. No
special token is ever a retrieval result.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import PretrainedConfig

from vllm_mtgr.tokenizer import (
    CANDIDATE_TOKEN,
    PROFILE_TOKEN,
    UNK_TOKEN,
    special_token_ids,
)

# Timestamps travel to the model in M-RoPE-style position rows (see
# `vllm_mtgr.layout.positions`). vLLM switches those rows on when the config
# declares an `mrope_section`; nothing is ever rotated, so the rotated
# fraction of a head is 0. Saying so also keeps transformers (5.x) from
# refusing odd head sizes (Meta's HSTU-large: 25) as "RoPE requires an even
# rotary dimension".
EVENT_ROWS_ROPE_PARAMETERS = {
    "rope_type": "default",
    "rope_theta": 10000.0,
    "mrope_section": [1, 1, 1],
    "partial_rotary_factor": 0.0,
}


# The range each config.json field may take. Upper bounds are far above any
# model we know (mtgr-8b: 32 layers, D=4096, 3.57M items) but stop a typo such
# as 10**6 layers from growing memory for minutes before anything fails.
# Item and token ids travel as int32.
INTEGER_RANGES = {
    "vocab_size": (3, 2**31 - 1),
    "num_items": (1, 2**31 - 5),
    "hidden_size": (1, 65536),
    "num_hidden_layers": (1, 512),
    "num_attention_heads": (1, 256),
    "attention_dim": (1, 1024),
    "linear_dim": (1, 1024),
    "max_position_embeddings": (2, 2**20),
    "num_time_buckets": (1, 65536),
    "num_action_types": (0, 65536),
    "attention_normalizer": (1, 2**31 - 1),
    "num_profile_features": (0, 4096),
    "profile_vocab_size": (0, 2**31 - 1),
    "num_cross_features": (0, 4096),
    "head_hidden_size": (0, 65536),
    "max_candidates": (0, 2**20),
    "max_beam_width": (0, 4096),
}
# MTGR's token groups (profile, long history, real-time history, candidates):
# one LayerNorm affine per group.
NUM_GROUPS = 4
POSITIVE_FLOATS = ("time_bucket_divisor", "layer_norm_eps", "logit_temperature")


class ConfigError(ValueError):
    """A config.json value a model cannot be built from; names the field."""


def check_config(config: MTGRConfig) -> None:
    """Every field in its range, and the fields consistent with each other."""
    for name, (low, high) in INTEGER_RANGES.items():
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config.json `{name}` must be an integer, got {value!r}")
        if not low <= value <= high:
            raise ConfigError(
                f"config.json `{name}` must be in [{low}, {high}], got {value}"
            )
    for name in POSITIVE_FLOATS:
        value = getattr(config, name)
        if not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value > 0
        ):
            raise ConfigError(
                f"config.json `{name}` must be a finite number above 0, got {value!r}"
            )
    special = special_token_ids(config.num_items)
    last = special[CANDIDATE_TOKEN if config.task_names else UNK_TOKEN]
    if config.vocab_size < last + 1:
        raise ConfigError(
            f"config.json `vocab_size` ({config.vocab_size}) must hold padding, "
            f"the {config.num_items} items (`num_items`) and the special tokens: "
            f"at least {last + 1}"
        )


class MTGRConfig(PretrainedConfig):
    model_type = "mtgr"
    ignore_keys_at_rope_validation = {"mrope_section", "partial_rotary_factor"}

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
        # Semantic-ID retrieval (MTGRForSemanticRetrieval): the widest beam
        # a request may ask for.
        max_beam_width: int = 0,
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
        self.max_beam_width = max_beam_width
        # Model directories written before the rotated fraction was declared
        # get it too.
        kwargs["rope_parameters"] = {
            **EVENT_ROWS_ROPE_PARAMETERS,
            **(kwargs.get("rope_parameters") or {}),
            "partial_rotary_factor": 0.0,
        }
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        check_config(self)

    @property
    def is_ranking(self) -> bool:
        """An MTGR ranking model (candidates scored), not retrieval."""
        return "MTGRForRanking" in (self.architectures or [])

    @property
    def unk_token_id(self) -> int:
        return special_token_ids(self.num_items)[UNK_TOKEN]

    @property
    def profile_token_id(self) -> int:
        return special_token_ids(self.num_items)[PROFILE_TOKEN]

    @property
    def candidate_token_id(self) -> int:
        return special_token_ids(self.num_items)[CANDIDATE_TOKEN]

    # vLLM reads these two names to size the KV cache.
    @property
    def head_dim(self) -> int:
        return self.attention_dim

    @property
    def num_key_value_heads(self) -> int:
        return self.num_attention_heads
