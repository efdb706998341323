"""Ask a running vllm-mtgr server for next-item recommendations.

    # a MovieLens-100K user's real history, read in place from ../shared/data
    python examples/recommend.py --movielens-user 42

    # or any history of item tokens, with their Unix timestamps
    python examples/recommend.py --history item_1 item_50 item_181 \
        --timestamps 874965758 874965954 874966142

Prints the top-k next items with their scores (log-probabilities) and titles:
from the model directory's items.json (`vllm-mtgr convert --items`) when
`--model-dir` is given, else from the MovieLens-100K data beside the project.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from movielens import DATA_DIR, item_titles, load_sequences
from openai import OpenAI

DATASET = "ml-100k"


def movielens_history(user: int, max_len: int) -> tuple[list[str], list[int]]:
    """A user's most recent `max_len` ratings as item tokens and timestamps."""
    sequence = next((s for s in load_sequences(DATASET) if s.user == user), None)
    if sequence is None:
        raise SystemExit(f"--movielens-user: no user {user} in {DATASET}")
    items, times = sequence.items[-max_len:], sequence.times[-max_len:]
    return [f"item_{i}" for i in items], times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-url", default="http://localhost:8000/v1")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--movielens-user", type=int, help="a MovieLens-100K user id")
    source.add_argument("--history", nargs="+", help="item tokens, oldest first")
    parser.add_argument("--timestamps", nargs="+", type=int, help="one per item")
    parser.add_argument("--max-history", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--model-dir", type=Path, help="for items.json titles")
    args = parser.parse_args()

    if args.movielens_user is not None:
        history, timestamps = movielens_history(args.movielens_user, args.max_history)
    else:
        history, timestamps = args.history, args.timestamps

    client = OpenAI(base_url=args.base_url, api_key="unused")
    model = client.models.list().data[0].id
    response = client.completions.create(
        model=model,
        prompt=" ".join(history),
        max_tokens=1,
        logprobs=args.top_k,
        # Seen items are excluded by default; "exclude_seen": False keeps them.
        extra_body={"timestamps": timestamps} if timestamps else {},
    )
    titles = {}
    if args.model_dir and (args.model_dir / "items.json").exists():
        catalogue = json.loads((args.model_dir / "items.json").read_text())
        titles = {int(item): title for item, title in catalogue.items()}
    elif (DATA_DIR / "ml-100k").exists():
        titles = item_titles(DATASET)
    top = response.choices[0].logprobs.top_logprobs[0]
    print(f"top {len(top)} next items after a history of {len(history)} events:")
    ranked = sorted(top.items(), key=lambda entry: -entry[1])
    for rank, (token, logprob) in enumerate(ranked, 1):
        title = titles.get(int(token.removeprefix("item_")), "")
        print(f"{rank:3d}. {token:10s} {logprob:8.3f}  {title}")


if __name__ == "__main__":
    main()
