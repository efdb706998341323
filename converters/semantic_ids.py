"""Semantic IDs: every item of a catalogue as a short tuple of code tokens.

Generative retrieval over semantic IDs (TIGER, OneRec) generates an item's
code level by level instead of scoring the whole catalogue in one output
layer. A code here is `levels` cluster indices from residual k-means over
item vectors, then one last index that tells apart the items whose clusters
all agree, so that every item has a code of its own (TIGER's extra token).

Why residual k-means, not an RQ-VAE: it has no training loop to tune or
diverge, is deterministic for a seed, and its codebook is the centroids
themselves, so what a code means can be read back (the sum of its centroids
approximates the item's vector). TIGER's RQ-VAE earns its encoder on
768-wide text embeddings; the vectors here are a trained item-ID model's
embeddings (what users co-consume) and, optionally, the items' attributes
(brand, categories: what an item is), which need no learned compression.

Files written into a model directory (`write`): `semantic_ids/codes.safetensors`
(in a folder of its own: vLLM loads every top-level `*.safetensors` file of
a model directory as weights) with `codebooks` `[levels, codes, dim]`
float32 and `codes` `[num_items, levels + 1]` int64 (row i: item i + 1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FILE_NAME = "semantic_ids/codes.safetensors"
ARCHITECTURE = "MTGRForSemanticRetrieval"
PLUGIN_NAME = "mtgr_semantic"  # the /pooling IO processor, vllm_mtgr.serving.semantic


@dataclass(frozen=True)
class SemanticIds:
    """A catalogue's codes and the centroids that define them."""

    codebooks: torch.Tensor  # float32 [levels, codes, dim]
    codes: torch.Tensor  # int64 [num_items, levels + 1]; row i is item i + 1

    @property
    def levels(self) -> int:
        return self.codebooks.shape[0]

    def level_sizes(self) -> list[int]:
        """How many distinct tokens each position of a code can take."""
        last = int(self.codes[:, -1].max()) + 1
        return [self.codebooks.shape[1]] * self.levels + [last]


def kmeans(
    points: torch.Tensor, count: int, iterations: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids `[count, dim]`, each point's cluster `[n]`) by Lloyd's
    iterations from a k-means++ start. A cluster left empty restarts at the
    point farthest from its centroid, so every code stays in use while there
    are more distinct points than codes."""
    n = points.shape[0]
    centroids = points[torch.randint(n, (1,), generator=generator)]
    nearest = torch.cdist(points, centroids).squeeze(1) ** 2
    for _ in range(1, count):
        weights = nearest if nearest.sum() > 0 else torch.ones_like(nearest)
        pick = torch.multinomial(weights, 1, generator=generator)
        centroids = torch.cat([centroids, points[pick]])
        nearest = torch.minimum(
            nearest, torch.cdist(points, points[pick]).squeeze(1) ** 2
        )
    for _ in range(iterations):
        distances = torch.cdist(points, centroids)
        assignment = distances.argmin(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        sizes = torch.bincount(assignment, minlength=count)
        empty = (sizes == 0).nonzero().flatten()
        if len(empty):
            farthest = distances.gather(1, assignment[:, None]).squeeze(1)
            far = farthest.topk(len(empty)).indices
            sums[empty], sizes[empty] = points[far], 1
        centroids = sums / sizes[:, None].to(points.dtype)
    return centroids, torch.cdist(points, centroids).argmin(dim=1)


def build(
    vectors: torch.Tensor,
    levels: int = 3,
    codes_per_level: int = 256,
    iterations: int = 25,
    seed: int = 0,
) -> SemanticIds:
    """Codes for the items whose vectors are the rows of `vectors` (row i:
    item i + 1): residual k-means over `levels` levels, then the index of
    each item among those with the same clusters at every level."""
    if vectors.dim() != 2 or vectors.shape[0] == 0:
        raise ValueError(f"item vectors: need [items, dim], got {list(vectors.shape)}")
    if not torch.isfinite(vectors).all():
        raise ValueError("item vectors: not all finite (NaN or infinite entries)")
    if levels < 1 or codes_per_level < 2:
        raise ValueError(
            f"levels {levels}, codes per level {codes_per_level}: need >= 1 and >= 2"
        )
    if codes_per_level > vectors.shape[0]:
        raise ValueError(
            f"codes per level {codes_per_level} > {vectors.shape[0]} items: some "
            "codes could never be used"
        )
    generator = torch.Generator().manual_seed(seed)
    residual = vectors.double()
    codebooks, columns = [], []
    for _ in range(levels):
        centroids, assignment = kmeans(residual, codes_per_level, iterations, generator)
        codebooks.append(centroids.float())
        columns.append(assignment)
        residual = residual - centroids[assignment]
    prefix = torch.stack(columns, dim=1)
    return SemanticIds(
        torch.stack(codebooks), torch.cat([prefix, _rank_within(prefix)], 1)
    )


def _rank_within(prefix: torch.Tensor) -> torch.Tensor:
    """`[n, 1]`: each row's index among the rows equal to it, in row order."""
    _, group = torch.unique(prefix, dim=0, return_inverse=True)
    order = torch.argsort(group, stable=True)
    sorted_group = group[order]
    starts = torch.searchsorted(sorted_group, sorted_group, right=False)
    rank = torch.empty_like(group)
    rank[order] = torch.arange(len(group)) - starts
    return rank[:, None]


def item_vectors(
    embeddings: torch.Tensor,
    num_items: int,
    attributes: dict[int, list[int]] | None = None,
) -> torch.Tensor:
    """Rows for items 1..num_items: a trained item-ID model's item-table rows
    1..num_items (row 0 is padding, rows after them special tokens),
    L2-normalised, then, with `attributes` (item id -> attribute ids), their
    multi-hot rows, L2-normalised, beside them. Each half then weighs the
    same in the clustering's distances."""
    if embeddings.dim() != 2 or embeddings.shape[0] <= num_items:
        raise ValueError(
            f"item embeddings {list(embeddings.shape)}: need [> {num_items}, dim] "
            f"(padding and {num_items} items)"
        )
    rows = torch.nn.functional.normalize(embeddings[1 : num_items + 1].double(), dim=1)
    if not attributes:
        return rows
    width = 1 + max((a for values in attributes.values() for a in values), default=0)
    hot = torch.zeros(rows.shape[0], width, dtype=torch.float64)
    for item, values in attributes.items():
        if not 1 <= item <= rows.shape[0]:
            raise ValueError(f"attributes: item {item} outside 1..{rows.shape[0]}")
        hot[item - 1, values] = 1.0
    return torch.cat([rows, torch.nn.functional.normalize(hot, dim=1)], dim=1)


def read_attributes(path: Path) -> dict[int, list[int]]:
    """S3-Rec's `<Name>_item2attributes.json`: {"item id": [attribute ids]}."""
    try:
        raw = json.loads(Path(path).read_text())
        return {int(item): [int(a) for a in values] for item, values in raw.items()}
    except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(
            f"{path}: not an item -> attribute ids map ({error})"
        ) from None


def write(ids: SemanticIds, directory: Path) -> Path:
    """Write `FILE_NAME` into the model directory `directory`."""
    path = Path(directory) / FILE_NAME
    path.parent.mkdir(exist_ok=True)
    save_file({"codebooks": ids.codebooks, "codes": ids.codes}, str(path))
    return path


def make_model(directory: Path, ids: SemanticIds, max_beam_width: int = 256) -> Path:
    """Turn an HSTU model directory over `ids`' code tokens (its items are
    the tokens, `vllm_mtgr.layout.code_trie.CodeTokens`: `num_items` = the sum of
    `level_sizes()`) into a semantic-ID retrieval model: the codes, the
    architecture, the `/pooling` plugin, code-token names in the tokenizer."""
    from vllm_mtgr.config import ConfigError, MTGRConfig
    from vllm_mtgr.tokenizer import code_token_names, write_tokenizer

    directory = Path(directory)
    config = MTGRConfig.from_pretrained(directory)
    sizes = ids.level_sizes()
    if config.num_items != sum(sizes):
        raise ConfigError(
            f"{directory}/config.json `num_items` is {config.num_items}; the codes "
            f"(levels {sizes}) make {sum(sizes)} tokens: train the model over them"
        )
    config.architectures = [ARCHITECTURE]
    config.io_processor_plugin = PLUGIN_NAME
    config.max_beam_width = max_beam_width
    config.save_pretrained(directory)
    write_tokenizer(directory, config.num_items, config.max_position_embeddings,
                    names=code_token_names(sizes))  # fmt: skip
    write(ids, directory)
    return directory


def has_codes(directory: str | Path) -> bool:
    """Whether a model directory is a semantic-ID model (holds its codes)."""
    return (Path(directory) / FILE_NAME).is_file()


def read(directory: Path) -> SemanticIds:
    """The semantic IDs of a model directory, checked for shape and range."""
    path = Path(directory) / FILE_NAME
    tensors = load_file(str(path))
    for name in ("codebooks", "codes"):
        if name not in tensors:
            raise ValueError(f"{path}: no tensor '{name}'")
    ids = SemanticIds(tensors["codebooks"], tensors["codes"])
    if ids.codebooks.dim() != 3 or ids.codes.dim() != 2:
        raise ValueError(f"{path}: codebooks must be 3-D and codes 2-D")
    if ids.codes.shape[1] != ids.levels + 1:
        raise ValueError(
            f"{path}: codes have {ids.codes.shape[1]} columns, codebooks "
            f"{ids.levels} levels (need levels + 1)"
        )
    prefix = ids.codes[:, :-1]
    if (prefix < 0).any() or (prefix >= ids.codebooks.shape[1]).any():
        raise ValueError(f"{path}: a code outside 0..{ids.codebooks.shape[1] - 1}")
    if len(torch.unique(ids.codes, dim=0)) != len(ids.codes):
        raise ValueError(f"{path}: two items share a code")
    return ids
