"""Amazon Beauty test metrics of a semantic-ID model served by vLLM.

    cd examples
    python evaluate_semantic.py --model ../models/semantic-beauty

Every test user (TIGER's leave-one-out) goes through the real engine
(`LLM.encode`, the beam search inside it, history excluded), 256 users per
call; Recall and NDCG at 5 and 10 by the target's rank in the served list,
computed as `train_semantic_ids.py` computes them, so the two must agree.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from movielens import load_sequences, queries
from train_semantic_ids import MAX_ITEMS, metrics_at

from vllm_mtgr.serving.limits import DEFAULT_MAX_USERS as USERS_PER_CALL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--report", type=Path, help="write the metrics JSON here")
    args = parser.parse_args()

    import vllm

    test = queries(load_sequences("beauty"), "test", MAX_ITEMS)
    llm = vllm.LLM(
        str(args.model), dtype="float32", enforce_eager=True,
        gpu_memory_utilization=0.3, max_num_seqs=USERS_PER_CALL, seed=0,
    )  # fmt: skip
    ranks, started = [], time.time()
    for start in range(0, len(test), USERS_PER_CALL):
        chunk = test[start : start + USERS_PER_CALL]
        data = [{"history": {"items": q.history, "timestamps": q.times},
                 "request_timestamp": q.target_time, "beam_width": args.beam}
                for q in chunk]  # fmt: skip
        (output,) = llm.encode({"data": data}, pooling_task="plugin", use_tqdm=False)
        for query, result in zip(chunk, output.outputs["results"], strict=True):
            items = result["items"]
            found = query.target in items
            ranks.append(items.index(query.target) if found else args.beam)
    result = {
        "model": str(args.model),
        "users": len(test),
        "beam": args.beam,
        "seconds": round(time.time() - started, 1),
        "served_test": metrics_at(ranks),
    }
    print(json.dumps(result, indent=2))
    if args.report:
        args.report.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
