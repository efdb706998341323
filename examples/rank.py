"""Score candidate items for one user with an MTGR ranking model.

    vllm-mtgr create mtgr-rank-small --out /tmp/mtgr-rank-small --dtype float32
    vllm-mtgr serve /tmp/mtgr-rank-small --port 8000        # in another shell
    python examples/rank.py --model-dir /tmp/mtgr-rank-small --movielens-user 42

    # the same request through vLLM's offline API, no server
    python examples/rank.py --model-dir /tmp/mtgr-rank-small --offline

The request goes to the server's `/pooling` endpoint (vLLM's IO-processor
path; `data` may also be a list of users). One user's request:

    {"profile": [24, 1, 19, 857],                       # categorical features
     "history":  {"items": [...], "timestamps": [...]}, # long-term behaviour
     "realtime": {"items": [...], "timestamps": [...]}, # today's events
     "candidates": {"items": [...],                      # the items to score
                    "features": [[...], ...]},           # cross features per item
     "request_timestamp": 893286638}

and the response's `data`:

    {"tasks": ["ctr", "ctcvr", "engagement", "retention"],
     "results": [{"scores": {"ctr": [...], ...}, "num_cached_tokens": 0}]}

Every candidate is scored against the profile and history only, never the
other candidates, so the scores do not depend on which items are ranked
together; a second request for the same user reuses its cached history.
The user's behaviour is a real MovieLens-100K history read in place from
`../shared/data`; a preset model has random weights, so its scores show the
API, not a trained ranking.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

import httpx
from movielens import DATA_DIR, load_sequences

DATASET = "ml-100k"
OCCUPATIONS = "ml-100k/u.occupation"
USERS = "ml-100k/u.user"


def user_profile(user: int, width: int, vocab: int) -> list[int]:
    """Age, gender, occupation and zip prefix of a MovieLens user, as ids."""
    occupations = (DATA_DIR / OCCUPATIONS).read_text().split()
    for line in (DATA_DIR / USERS).read_text(encoding="latin-1").splitlines():
        uid, age, gender, occupation, zipcode = line.split("|")
        if int(uid) == user:
            prefix = int(zipcode[:3]) if zipcode[:3].isdigit() else 0
            values = [
                int(age),
                int(gender == "F"),
                occupations.index(occupation),
                prefix,
            ]
            return [v % vocab for v in (values * width)[:width]]
    raise SystemExit(f"--movielens-user: no user {user} in {DATASET}")


def ranking_request(config: dict, user: int, args: argparse.Namespace) -> dict:
    sequences = load_sequences(DATASET)
    sequence = next((s for s in sequences if s.user == user), None)
    if sequence is None:
        raise SystemExit(f"--movielens-user: no user {user} in {DATASET}")
    seen = set(sequence.items)
    counts: dict[int, int] = {}
    for s in sequences:
        for item in s.items:
            counts[item] = counts.get(item, 0) + 1
    limit = config["num_items"]
    unseen = sorted(i for i in counts if i not in seen and i <= limit)
    candidates = random.Random(user).sample(unseen, args.candidates)
    width = config["num_cross_features"]
    # Cross features come from the caller's feature service; here: item
    # popularity and a bias term, padded to the model's width.
    features = [
        ([math.log1p(counts[i]), 1.0] + [0.0] * width)[:width] for i in candidates
    ]
    split = len(sequence.items) - args.realtime
    # Candidates are not tokens: the history (profile + events) may take every
    # position but the one the candidates sit at.
    history = (
        config["max_position_embeddings"]
        - 1
        - config["num_profile_features"]
        - args.realtime
    )
    return {
        "profile": user_profile(
            user, config["num_profile_features"], config["profile_vocab_size"]
        ),
        "history": {
            "items": sequence.items[:split][-history:],
            "timestamps": sequence.times[:split][-history:],
        },
        "realtime": {
            "items": sequence.items[split:],
            "timestamps": sequence.times[split:],
        },
        "candidates": {"items": candidates, "features": features},
        "request_timestamp": sequence.times[-1] + 60,
    }


def rank_on_server(base_url: str, request: dict) -> dict:
    model = httpx.get(f"{base_url}/v1/models").json()["data"][0]["id"]
    response = httpx.post(
        f"{base_url}/pooling", json={"model": model, "data": request}, timeout=120
    )
    if response.status_code != 200:
        raise SystemExit(f"HTTP {response.status_code}: {response.text}")
    return response.json()["data"]


def rank_offline(model_dir: Path, request: dict) -> dict:
    from vllm import LLM

    llm = LLM(str(model_dir), enforce_eager=True, gpu_memory_utilization=0.3)
    (output,) = llm.encode({"data": request}, pooling_task="plugin")
    return output.outputs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--base-url", default="http://localhost:8000")
    parser.add_argument("--offline", action="store_true", help="no server: LLM API")
    parser.add_argument("--movielens-user", type=int, default=42)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--realtime", type=int, default=10, help="events of today")
    args = parser.parse_args()

    config = json.loads((args.model_dir / "config.json").read_text())
    request = ranking_request(config, args.movielens_user, args)
    if args.offline:
        data = rank_offline(args.model_dir, request)
    else:
        data = rank_on_server(args.base_url, request)
    tasks, (result,) = data["tasks"], data["results"]
    order = sorted(range(args.candidates), key=lambda c: -result["scores"][tasks[0]][c])
    print(f"user {args.movielens_user}: {args.candidates} candidates by {tasks[0]}")
    print("item    " + "".join(f"{task:>12s}" for task in tasks))
    for c in order:
        item = request["candidates"]["items"][c]
        scores = "".join(f"{result['scores'][task][c]:12.6f}" for task in tasks)
        print(f"{item:<8d}{scores}")
    print(f"cached tokens reused: {result['num_cached_tokens']}")


if __name__ == "__main__":
    main()
