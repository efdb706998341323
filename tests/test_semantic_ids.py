"""Semantic IDs of a catalogue: residual k-means codes, unique per item."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vllm_mtgr.cli import main
from vllm_mtgr.converters import semantic_ids

EMBEDDED_MODEL = Path(__file__).resolve().parents[1] / "models" / "hstu-ml100k"


def _blobs(centres: int, per_centre: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    middles = torch.randn(centres, dim, generator=g, dtype=torch.float64) * 10
    noise = torch.randn(centres, per_centre, dim, generator=g, dtype=torch.float64)
    return (middles[:, None] + 0.01 * noise).reshape(-1, dim)


def test_kmeans_finds_well_separated_clusters():
    seed = random.randrange(2**31)
    points = _blobs(8, 30, 5, seed)
    _, assignment = semantic_ids.kmeans(
        points, 8, 25, torch.Generator().manual_seed(seed)
    )
    truth = torch.arange(8).repeat_interleave(30)
    # One cluster per blob, whatever the numbering.
    pairs = {(int(a), int(t)) for a, t in zip(assignment, truth, strict=True)}
    assert len(pairs) == 8 and len({a for a, _ in pairs}) == 8, f"seed {seed}"


def test_every_item_gets_its_own_code_and_levels_refine():
    seed = random.randrange(2**31)
    g = torch.Generator().manual_seed(seed)
    # Duplicated vectors: only the last level can tell those items apart.
    vectors = torch.randn(300, 16, generator=g, dtype=torch.float64)
    vectors = torch.cat([vectors, vectors[:40]])
    ids = semantic_ids.build(vectors, levels=3, codes_per_level=16, seed=seed)
    assert ids.codes.shape == (340, 4) and ids.codebooks.shape == (3, 16, 16)
    assert len(torch.unique(ids.codes, dim=0)) == 340, f"seed {seed}"
    assert (ids.codes[:, :3] < 16).all() and (ids.codes >= 0).all()
    assert ids.level_sizes()[-1] >= 2  # the duplicates needed the last level
    # Each level's centroids explain more of the vectors than the one before.
    errors, approximation = [], torch.zeros_like(vectors)
    for level in range(3):
        approximation += ids.codebooks[level][ids.codes[:, level]].double()
        errors.append(float((vectors - approximation).norm()))
    assert errors[0] > errors[1] > errors[2], f"seed {seed}: {errors}"


def test_rank_within_equals_counting_in_order():
    seed = random.randrange(2**31)
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, 3, (200, 2), generator=g)
    seen: dict[tuple[int, int], int] = {}
    expected = []
    for row in prefix.tolist():
        expected.append(seen.get(tuple(row), 0))
        seen[tuple(row)] = expected[-1] + 1
    got = semantic_ids._rank_within(prefix)[:, 0].tolist()
    assert got == expected, f"seed {seed}"


def test_the_same_seed_gives_the_same_codes():
    vectors = _blobs(4, 20, 3, 0)
    first = semantic_ids.build(vectors, 2, 4, seed=7)
    second = semantic_ids.build(vectors, 2, 4, seed=7)
    assert torch.equal(first.codes, second.codes)


@pytest.mark.parametrize(
    ("vectors", "levels", "codes", "message"),
    [
        (torch.randn(10), 2, 4, r"need \[items, dim\]"),
        (torch.full((10, 2), float("nan")), 2, 4, "not all finite"),
        (torch.randn(10, 2), 0, 4, "need >= 1"),
        (torch.randn(10, 2), 2, 1, "need >= 1 and >= 2"),
        (torch.randn(3, 2), 2, 4, "codes per level 4 > 3 items"),
    ],
    ids=["one_dim", "nan", "no_levels", "one_code", "more_codes_than_items"],
)
def test_bad_inputs_are_named(vectors, levels, codes, message):
    with pytest.raises(ValueError, match=message):
        semantic_ids.build(vectors, levels, codes)


def test_item_vectors_put_embeddings_and_attributes_side_by_side():
    embeddings = torch.randn(6, 3)  # row 0: padding, row 5: `<unk>`
    vectors = semantic_ids.item_vectors(embeddings, 4, {1: [0, 2], 4: [1]})
    assert vectors.shape == (4, 3 + 3)
    assert torch.allclose(
        vectors[:, :3].norm(dim=1), torch.ones(4, dtype=torch.float64)
    )
    assert vectors[0, 3:].tolist() == pytest.approx([2**-0.5, 0, 2**-0.5])
    assert vectors[1, 3:].tolist() == [0, 0, 0]  # item 2 has no attributes
    with pytest.raises(ValueError, match="item 9 outside 1..4"):
        semantic_ids.item_vectors(embeddings, 4, {9: [0]})
    with pytest.raises(ValueError, match=r"need \[> 6, dim\]"):
        semantic_ids.item_vectors(embeddings, 6)


def test_read_refuses_files_that_are_not_codes(tmp_path):
    ids = semantic_ids.build(_blobs(4, 5, 2, 1), 2, 4)
    semantic_ids.write(ids, tmp_path)
    assert torch.equal(semantic_ids.read(tmp_path).codes, ids.codes)
    path = tmp_path / semantic_ids.FILE_NAME
    duplicated = ids.codes.clone()
    duplicated[1] = duplicated[0]
    cases = {
        "two items share a code": {"codebooks": ids.codebooks, "codes": duplicated},
        "a code outside 0..3": {"codebooks": ids.codebooks, "codes": ids.codes + 4},
        "need levels \\+ 1": {"codebooks": ids.codebooks, "codes": ids.codes[:, :2]},
        "no tensor 'codes'": {"codebooks": ids.codebooks},
    }
    for message, tensors in cases.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        with pytest.raises(ValueError, match=message):
            semantic_ids.read(tmp_path)


def test_cli_writes_codes_for_the_embedded_model(tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(EMBEDDED_MODEL, model)
    config = json.loads((model / "config.json").read_text())
    attributes = tmp_path / "attributes.json"
    attributes.write_text(json.dumps({"1": [0, 1], "2": [1]}))
    main(["semantic-ids", str(model), "--levels", "2", "--codes", "32",
          "--attributes", str(attributes)])  # fmt: skip
    ids = semantic_ids.read(model)
    assert ids.codes.shape == (config["num_items"], 3)
    assert "tokens per level [32, 32," in capsys.readouterr().out


def test_cli_names_a_missing_tensor(tmp_path, capsys):
    shutil.copy(EMBEDDED_MODEL / "config.json", tmp_path)
    save_file({"other": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(SystemExit) as exit_info:
        main(["semantic-ids", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "no tensor 'model.item_embedding.weight'" in capsys.readouterr().err
