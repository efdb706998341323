"""Ask a running vllm-mtgr server for next-item recommendations.

    python examples/recommend.py --base-url http://localhost:8000/v1 \
        --history item_1 item_50 item_181 --timestamps 874965758 874965954 874966142

Prints the top-k next items with their scores (log-probabilities), titles
from the model's items.json when it has one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from openai import OpenAI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", default="http://localhost:8000/v1")
    parser.add_argument("--history", nargs="+", required=True, help="item tokens")
    parser.add_argument("--timestamps", nargs="+", type=int, help="one per item")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--model-dir", help="model directory, for item titles")
    args = parser.parse_args()

    client = OpenAI(base_url=args.base_url, api_key="unused")
    model = client.models.list().data[0].id
    extra = {"timestamps": args.timestamps} if args.timestamps else {}
    response = client.completions.create(
        model=model,
        prompt=" ".join(args.history),
        max_tokens=1,
        logprobs=args.top_k,
        extra_body=extra,
    )
    titles = {}
    if args.model_dir and (Path(args.model_dir) / "items.json").exists():
        titles = json.loads((Path(args.model_dir) / "items.json").read_text())
    top = response.choices[0].logprobs.top_logprobs[0]
    print(f"top {len(top)} next items for a history of {len(args.history)} events:")
    for rank, (token, logprob) in enumerate(top.items(), 1):
        title = titles.get(token.removeprefix("item_"), "")
        print(f"{rank:3d}. {token:12s} {logprob:8.3f}  {title}")


if __name__ == "__main__":
    main()
