"""The item vocabulary as a real Hugging Face `tokenizer.json`.

Token id == item id: `<pad>` is 0, `item_1 .. item_N` are 1..N, `<unk>` is N + 1.
Histories are whitespace-separated item tokens ("item_1193 item_661"); the
decoder joins tokens with spaces, so a completion's text is its items.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
# Ranking prompts: one slot per profile feature and per candidate.
PROFILE_TOKEN = "<profile>"
CANDIDATE_TOKEN = "<candidate>"
ITEM_PREFIX = "item_"


def item_token(item_id: int) -> str:
    return f"{ITEM_PREFIX}{item_id}"


def build_tokenizer(num_items: int, ranking: bool = False) -> Tokenizer:
    vocab = {PAD_TOKEN: 0}
    vocab.update((item_token(i), i) for i in range(1, num_items + 1))
    vocab[UNK_TOKEN] = num_items + 1
    if ranking:
        vocab[PROFILE_TOKEN] = num_items + 2
        vocab[CANDIDATE_TOKEN] = num_items + 3
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return tokenizer


def write_tokenizer(
    directory: str | Path, num_items: int, max_length: int, ranking: bool = False
) -> None:
    """Write tokenizer.json and the small files transformers reads beside it."""
    directory = Path(directory)
    build_tokenizer(num_items, ranking).save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": PAD_TOKEN,
        "unk_token": UNK_TOKEN,
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {"pad_token": PAD_TOKEN, "unk_token": UNK_TOKEN}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
