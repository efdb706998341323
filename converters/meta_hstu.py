"""Converts Meta's research HSTU checkpoints (generative-recommenders repo).

Input: `torch.save({"model_state_dict": ...})` of the DDP-wrapped model, keys
prefixed `module.` (docs/DESIGN.md section 3). Shapes fix everything but the head
split, so the number of heads is an argument (Meta's ML-1M models use 1).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from vllm_mtgr.config import MTGRConfig

from .model_dir import write_model_dir
from .shapes import ITEM_EMBEDDING, CheckpointError

ITEM_EMB = "_embedding_module._item_emb.weight"
POS_EMB = "_input_features_preproc._pos_emb.weight"
LAYER = "_hstu._attention_layers.{i}."
UVQK = LAYER + "_uvqk"
O_WEIGHT = LAYER + "_o.weight"
O_BIAS = LAYER + "_o.bias"
TS_W = LAYER + "_rel_attn_bias._ts_w"
POS_W = LAYER + "_rel_attn_bias._pos_w"
# vllm-mtgr's extension: an action-type embedding (Meta's models have none).
ACTION_EMB = "_action_emb.weight"


@dataclass(frozen=True)
class ConversionOptions:
    num_heads: int = 1
    temperature: float = 0.05
    time_bucket_divisor: float = 0.301
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        # Checked here, not only in MTGRConfig, so the message names the
        # option the user typed (and 0 heads is no ZeroDivisionError).
        if isinstance(self.num_heads, bool) or not (
            isinstance(self.num_heads, int) and self.num_heads >= 1
        ):
            raise ValueError(
                f"--num-heads must be an integer >= 1, got {self.num_heads!r}"
            )
        for option, value in (
            ("--temperature", self.temperature),
            ("time_bucket_divisor", self.time_bucket_divisor),
            ("layer_norm_eps", self.layer_norm_eps),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(
                    f"{option} must be a finite number above 0, got {value!r}"
                )


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the checkpoint safely (`weights_only`) and drop the DDP prefix."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a dict")
    state = checkpoint.get("model_state_dict", checkpoint)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: `model_state_dict` is not a dict")
    return {key.removeprefix("module."): value for key, value in state.items()}


def _tensor(state: dict[str, torch.Tensor], key: str, ndim: int) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"checkpoint has no tensor `{key}`")
    tensor = state[key]
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != ndim:
        shape = list(tensor.shape) if isinstance(tensor, torch.Tensor) else tensor
        raise CheckpointError(f"`{key}` is {shape}, expected a {ndim}-d tensor")
    return tensor


def _expect(key: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != shape:
        raise CheckpointError(
            f"`{key}` has shape {list(tensor.shape)}, expected {list(shape)}"
        )


def infer_config(
    state: dict[str, torch.Tensor], options: ConversionOptions
) -> MTGRConfig:
    """The MTGRConfig a state dict implies; checks every tensor's shape."""
    items = _tensor(state, ITEM_EMB, 2)
    positions = _tensor(state, POS_EMB, 2)
    num_items, dim = items.shape[0] - 1, items.shape[1]
    max_len = positions.shape[0]
    _expect(POS_EMB, positions, (max_len, dim))
    layer_ids = {
        int(m.group(1))
        for key in state
        if (m := re.match(r"_hstu\._attention_layers\.(\d+)\.", key))
    }
    if not layer_ids:
        raise CheckpointError(f"checkpoint has no tensor `{UVQK.format(i=0)}`")
    num_layers = max(layer_ids) + 1
    heads = options.num_heads
    o_weight = _tensor(state, O_WEIGHT.format(i=0), 2)
    if o_weight.shape[1] % heads:
        raise CheckpointError(
            f"`{O_WEIGHT.format(i=0)}` input width {o_weight.shape[1]} does not "
            f"split into {heads} heads"
        )
    dv = o_weight.shape[1] // heads
    uvqk_width = _tensor(state, UVQK.format(i=0), 2).shape[1]
    dqk, rest = divmod(uvqk_width - 2 * heads * dv, 2 * heads)
    if rest or dqk <= 0:
        raise CheckpointError(
            f"`{UVQK.format(i=0)}` width {uvqk_width} does not split into "
            f"u|v|q|k for {heads} heads of value width {dv}"
        )
    num_buckets = _tensor(state, TS_W.format(i=0), 1).shape[0] - 1
    for i in range(num_layers):
        _expect(
            UVQK.format(i=i), _tensor(state, UVQK.format(i=i), 2), (dim, uvqk_width)
        )
        _expect(
            O_WEIGHT.format(i=i),
            _tensor(state, O_WEIGHT.format(i=i), 2),
            (dim, heads * dv),
        )
        _expect(O_BIAS.format(i=i), _tensor(state, O_BIAS.format(i=i), 1), (dim,))
        _expect(
            TS_W.format(i=i), _tensor(state, TS_W.format(i=i), 1), (num_buckets + 1,)
        )
        _expect(
            POS_W.format(i=i), _tensor(state, POS_W.format(i=i), 1), (2 * max_len - 1,)
        )
    num_action_types = 0
    if ACTION_EMB in state:
        actions = _tensor(state, ACTION_EMB, 2)
        _expect(ACTION_EMB, actions, (actions.shape[0], dim))
        num_action_types = actions.shape[0]
    return MTGRConfig(
        architectures=["MTGRForCausalLM"],
        vocab_size=num_items + 2,
        hidden_size=dim,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        attention_dim=dqk,
        linear_dim=dv,
        max_position_embeddings=max_len,
        num_time_buckets=num_buckets,
        time_bucket_divisor=options.time_bucket_divisor,
        layer_norm_eps=options.layer_norm_eps,
        logit_temperature=options.temperature,
        num_action_types=num_action_types,
        torch_dtype=str(items.dtype).removeprefix("torch."),
    )


def converted_tensors(
    state: dict[str, torch.Tensor], config: MTGRConfig
) -> Iterator[tuple[str, torch.Tensor]]:
    """Meta's tensors under vllm-mtgr's names and layouts."""
    items = state[ITEM_EMB]
    # One extra zero row: the `<unk>` token, which is never scored.
    yield ITEM_EMBEDDING, torch.cat([items, items.new_zeros(1, items.shape[1])])
    yield "model.position_embedding.weight", state[POS_EMB]
    if config.num_action_types:
        yield "model.action_embedding.weight", state[ACTION_EMB]
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}."
        # Meta multiplies `x @ _uvqk` ([D, out]); nn.Linear stores [out, D].
        yield prefix + "uvqk_proj.weight", state[UVQK.format(i=i)].t()
        yield prefix + "o_proj.weight", state[O_WEIGHT.format(i=i)]
        yield prefix + "o_proj.bias", state[O_BIAS.format(i=i)]
        yield prefix + "attn.relative_bias.position_weight", state[POS_W.format(i=i)]
        yield prefix + "attn.relative_bias.time_weight", state[TS_W.format(i=i)]


def read_item_titles(path: str | Path) -> dict[int, str]:
    """`id::title::genres` lines (MovieLens movies.dat) -> {id: title}."""
    titles = {}
    with open(path, encoding="latin-1") as lines:
        for number, line in enumerate(lines, 1):
            fields = line.rstrip("\n").split("::")
            if len(fields) < 2 or not fields[0].isdigit():
                raise CheckpointError(f"{path}:{number}: expected `id::title::...`")
            titles[int(fields[0])] = fields[1]
    return titles


def convert(
    checkpoint: str | Path,
    out_dir: str | Path,
    options: ConversionOptions = ConversionOptions(),
    item_titles: dict[int, str] | None = None,
) -> Path:
    state = load_state_dict(checkpoint)
    config = infer_config(state, options)
    extra = {}
    if item_titles:
        unknown = [i for i in item_titles if not 1 <= i <= config.num_items]
        if unknown:
            raise CheckpointError(
                f"item ids {unknown[:5]} are outside the checkpoint's item table "
                f"(1..{config.num_items})"
            )
        extra["items.json"] = json.dumps(
            {str(k): v for k, v in sorted(item_titles.items())}
        )
    total = sum(
        t.numel() * t.element_size() for _, t in converted_tensors(state, config)
    )
    return write_model_dir(
        out_dir, config, converted_tensors(state, config), total, extra_files=extra
    )
