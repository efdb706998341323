"""Converting Meta's research checkpoints, and writing model directories."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, random_reference, save_meta_checkpoint
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerFast

from vllm_mtgr.cli import main as cli
from vllm_mtgr.config import MTGRConfig
from vllm_mtgr.converters.meta_hstu import (
    CheckpointError,
    ConversionOptions,
    convert,
)
from vllm_mtgr.converters.model_dir import write_weights
from vllm_mtgr.converters.presets import PRESETS, create
from vllm_mtgr.converters.shapes import parameter_count
from vllm_mtgr.weight_files import WeightFileError, check_weight_files

OPTIONS = ConversionOptions(num_heads=TINY["num_heads"])
POS_W_0 = "module._hstu._attention_layers.0._rel_attn_bias._pos_w"


def meta_keys(num_layers: int, max_len: int) -> dict[str, tuple[int, ...]]:
    """Meta's checkpoint keys and shapes as docs/DESIGN.md section 3 documents them."""
    d, items = TINY["embedding_dim"], TINY["num_items"]
    heads, dqk, dv = TINY["num_heads"], TINY["attention_dim"], TINY["linear_dim"]
    keys = {
        "module._embedding_module._item_emb.weight": (items + 1, d),
        "module._input_features_preproc._pos_emb.weight": (max_len, d),
    }
    for i in range(num_layers):
        layer = f"module._hstu._attention_layers.{i}."
        keys[layer + "_uvqk"] = (d, (2 * dv + 2 * dqk) * heads)
        keys[layer + "_o.weight"] = (d, dv * heads)
        keys[layer + "_o.bias"] = (d,)
        keys[layer + "_rel_attn_bias._ts_w"] = (129,)
        keys[layer + "_rel_attn_bias._pos_w"] = (2 * max_len - 1,)
    return keys


@pytest.fixture
def checkpoint(tmp_path):
    return save_meta_checkpoint(random_reference(seed=3), tmp_path / "ckpt.pt")


def test_oracle_checkpoint_has_exactly_metas_keys(checkpoint):
    state = torch.load(checkpoint, weights_only=True)["model_state_dict"]
    expected = meta_keys(TINY["num_blocks"], TINY["max_sequence_len"])
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_conversion_writes_a_servable_directory(checkpoint, tmp_path):
    out = convert(checkpoint, tmp_path / "model", OPTIONS)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["MTGRForCausalLM"]
    assert config["vocab_size"] == TINY["num_items"] + 2
    assert (config["attention_dim"], config["linear_dim"]) == (16, 24)
    assert json.loads((out / "generation_config.json").read_text())["temperature"] == 0
    weights = load_file(out / "model.safetensors")
    state = torch.load(checkpoint, weights_only=True)["model_state_dict"]
    uvqk = state["module._hstu._attention_layers.1._uvqk"]
    assert torch.equal(weights["model.layers.1.uvqk_proj.weight"], uvqk.t())
    items = weights["model.item_embedding.weight"]
    assert torch.equal(items[:-1], state["module._embedding_module._item_emb.weight"])
    assert not items[-1].any()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(out)
    assert tokenizer("item_5 item_300").input_ids == [5, 300]
    assert tokenizer("item_301").input_ids == [TINY["num_items"] + 1]
    assert tokenizer.decode([5, 300]) == "item_5 item_300"


def test_item_titles_file(checkpoint, tmp_path, capsys):
    movies = tmp_path / "movies.dat"
    movies.write_text("1::Toy Story (1995)::Animation\n7::Sabrina (1995)::Comedy\n")
    cli(
        [
            "convert",
            "hstu-research",
            str(checkpoint),
            "--out",
            str(tmp_path / "m"),
            "--items",
            str(movies),
            "--num-heads",
            "2",
        ]
    )
    titles = json.loads((tmp_path / "m" / "items.json").read_text())
    assert titles == {"1": "Toy Story (1995)", "7": "Sabrina (1995)"}
    movies.write_text("999::Beyond the table::Drama\n")
    with pytest.raises(SystemExit):
        cli(
            [
                "convert",
                "hstu-research",
                str(checkpoint),
                "--out",
                str(tmp_path / "n"),
                "--items",
                str(movies),
                "--num-heads",
                "2",
            ]
        )
    assert "item ids [999] are outside" in capsys.readouterr().err


def _broken(checkpoint, tmp_path, change):
    state = torch.load(checkpoint, weights_only=True)["model_state_dict"]
    change(state)
    path = tmp_path / "broken.pt"
    torch.save({"model_state_dict": state}, path)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda s: s.pop("module._hstu._attention_layers.1._o.weight"),
            "no tensor `_hstu._attention_layers.1._o.weight`",
        ),
        (
            lambda s: s.update(
                {"module._hstu._attention_layers.1._o.bias": torch.zeros(5)}
            ),
            "`_hstu._attention_layers.1._o.bias` has shape [5], expected [32]",
        ),
        (
            lambda s: s.update({POS_W_0: torch.zeros(9)}),
            "`_hstu._attention_layers.0._rel_attn_bias._pos_w` has shape [9]",
        ),
        (
            lambda s: s.update(
                {"module._embedding_module._item_emb.weight": torch.zeros(4)}
            ),
            "`_embedding_module._item_emb.weight` is [4], expected a 2-d tensor",
        ),
        (
            lambda s: s.update(
                {"module._hstu._attention_layers.0._uvqk": torch.zeros(32, 81)}
            ),
            "`_hstu._attention_layers.0._uvqk` width 81 does not split",
        ),
    ],
)
def test_malformed_checkpoint_names_the_tensor(checkpoint, tmp_path, change, message):
    with pytest.raises(CheckpointError) as raised:
        convert(_broken(checkpoint, tmp_path, change), tmp_path / "out", OPTIONS)
    assert message in str(raised.value)


def test_corrupt_file_is_reported(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        convert(corrupt, tmp_path / "out", OPTIONS)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list, not a dict"):
        convert(tmp_path / "list.pt", tmp_path / "out", OPTIONS)


def test_large_weights_are_sharded_with_an_index(tmp_path):
    tensors = [(f"w{i}", torch.randn(100, 10)) for i in range(5)]
    total = sum(t.numel() * 4 for _, t in tensors)
    files = write_weights(tmp_path, iter(tensors), total, shard_bytes=8_000)
    assert len(files) == 3
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == total
    for name, tensor in tensors:
        shard = load_file(tmp_path / index["weight_map"][name])
        assert torch.equal(shard[name], tensor)


def test_presets(tmp_path):
    small = create("mtgr-small", tmp_path / "small", dtype="float32")
    weights = load_file(small / "model.safetensors")
    config = MTGRConfig.from_pretrained(small)
    assert sum(t.numel() for t in weights.values()) == parameter_count(config)
    only = create("mtgr-8b", tmp_path / "big", config_only=True)
    assert not list(only.glob("*.safetensors"))
    assert 7.9e9 < parameter_count(PRESETS["mtgr-8b"].config("bfloat16")) < 8.1e9
    with pytest.raises(ValueError, match="unknown preset"):
        create("mtgr-huge", tmp_path / "x")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--num-heads", "0"], "--num-heads must be an integer >= 1, got 0"),
        (["--num-heads", "2", "--temperature", "0"], "--temperature must be a finite"),
        (["--num-heads", "2", "--temperature", "nan"], "--temperature must be"),
    ],
)
def test_bad_converter_options_are_named(checkpoint, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exited:
        cli(["convert", "hstu-research", str(checkpoint), "--out",
              str(tmp_path / "out"), *argv])  # fmt: skip
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_hidden_layers", 10**6, "`num_hidden_layers` must be in [1, 512]"),
        ("hidden_size", 10**6, "`hidden_size` must be in [1, 65536]"),
        ("num_items", -3, "`num_items` must be in [1,"),
        ("num_attention_heads", 0, "`num_attention_heads` must be in [1, 256]"),
        ("logit_temperature", 0, "`logit_temperature` must be a finite number"),
        ("time_bucket_divisor", float("nan"), "`time_bucket_divisor` must be"),
        ("num_hidden_layers", "2", "`num_hidden_layers` must be an integer"),
        ("vocab_size", 10, "`vocab_size` (10) must hold padding"),
    ],
)
def test_config_values_are_checked_at_load(tmp_path, field, value, message):
    directory = tmp_path / "model"
    MTGRConfig().save_pretrained(directory)
    raw = json.loads((directory / "config.json").read_text())
    raw[field] = value
    (directory / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError) as raised:
        MTGRConfig.from_pretrained(directory)
    assert message in str(raised.value)
    assert "config.json" in str(raised.value)


def _weights_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(4, 3), "b": torch.ones(5)}, path)
    return path


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[: len(data) - 7], "tensor `b` spans bytes"),
        (lambda data: b"", "too short for safetensors"),
        (lambda data: (10**12).to_bytes(8, "little") + data[8:], "header length"),
        (lambda data: data[:8] + b"\xff" * 20 + data[28:], "header is not JSON"),
    ],
)
def test_broken_weight_file_is_named(tmp_path, damage, message):
    path = _weights_file(tmp_path)
    check_weight_files(tmp_path)  # an intact file passes
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(WeightFileError) as raised:
        check_weight_files(tmp_path)
    assert str(path) in str(raised.value)
    assert message in str(raised.value)


def test_heads_the_checkpoint_cannot_tell_are_asked_for(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli(["convert", "hstu-research", str(checkpoint), "--out", str(tmp_path / "o")])
    error = capsys.readouterr().err
    assert "--num-heads (Meta's gin `hstu_encoder.num_heads`)" in error
