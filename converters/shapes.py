"""The weights of each MTGR architecture and their shapes, from the config.

The converters check checkpoints against this table, the presets initialise
from it, and the tests build checkpoints from it.
"""

from __future__ import annotations

from vllm_mtgr.config import NUM_GROUPS, MTGRConfig

ITEM_EMBEDDING = "model.item_embedding.weight"


class CheckpointError(ValueError):
    """A checkpoint the converters cannot use; the message names the tensor."""


def weight_shapes(config: MTGRConfig) -> dict[str, tuple[int, ...]]:
    d, h = config.hidden_size, config.num_attention_heads
    dqk, dv = config.attention_dim, config.linear_dim
    shapes: dict[str, tuple[int, ...]] = {
        ITEM_EMBEDDING: (config.vocab_size, d),
        "model.position_embedding.weight": (config.max_position_embeddings, d),
    }
    if config.num_action_types:
        shapes["model.action_embedding.weight"] = (config.num_action_types, d)
    if config.is_ranking:
        shapes["model.profile_embedding.weight"] = (
            max(config.profile_vocab_size, 1),
            d,
        )
        shapes["model.candidate_mlp.in_proj.weight"] = (
            d,
            d + config.num_cross_features,
        )
        shapes["model.candidate_mlp.in_proj.bias"] = (d,)
        shapes["model.candidate_mlp.out_proj.weight"] = (d, d)
        shapes["model.candidate_mlp.out_proj.bias"] = (d,)
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}."
        shapes[prefix + "uvqk_proj.weight"] = (2 * h * (dv + dqk), d)
        shapes[prefix + "o_proj.weight"] = (d, h * dv)
        shapes[prefix + "o_proj.bias"] = (d,)
        shapes[prefix + "attn.relative_bias.position_weight"] = (
            2 * config.max_position_embeddings - 1,
        )
        shapes[prefix + "attn.relative_bias.time_weight"] = (
            config.num_time_buckets + 1,
        )
        if config.is_ranking:
            for norm, width in (("input_norm", d), ("output_norm", h * dv)):
                shapes[f"{prefix}{norm}.weight"] = (NUM_GROUPS, width)
                shapes[f"{prefix}{norm}.bias"] = (NUM_GROUPS, width)
    if config.is_ranking:
        tasks, hidden = len(config.task_names), config.head_hidden_size
        shapes["scoring_head.w1"] = (tasks, d, hidden)
        shapes["scoring_head.b1"] = (tasks, hidden)
        shapes["scoring_head.w2"] = (tasks, hidden)
        shapes["scoring_head.b2"] = (tasks,)
    return shapes


def parameter_count(config: MTGRConfig) -> int:
    total = 0
    for shape in weight_shapes(config).values():
        count = 1
        for size in shape:
            count *= size
        total += count
    return total
