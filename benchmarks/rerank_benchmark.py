"""k-reciprocal re-ranking at a real dataset size: dense (the whole (Q+G)^2 matrix) vs blocked.

Random identity-clustered float32 features (`eval_benchmark.make_data`), cosine, the paper's
k1 = 20, k2 = 6, lambda = 0.3. Default: Occluded-Duke (2,210 x 17,661); MSMT17 size:

    python benchmarks/rerank_benchmark.py --queries 11659 --gallery 82161 --gallery-ids 3060 \\
        --query-ids 3060 --cameras 15 --no-dense

* dense: what `evaluate_features(..., rerank=True)` did before the blocks: fill the matrix
  (`pairwise_distance`), `rerank.k_reciprocal_rerank`, `evaluate_rank`;
* blocked: `rerank_blocks.BlockedReRanking` ranked by `evaluate_distance_blocks` (what
  `evaluate_features(..., rerank=True)` does now), with the time split into the neighbour pass,
  the expansion (k-reciprocal sets, V, local query expansion), the Jaccard blocks and ranking.

Each configuration runs once in a fresh subprocess for its peak RSS (VmHWM) and metrics; then
both run --repeats times alternately in this process, whose median times give the ratio
(with --no-dense, the table shows the subprocess's time). The metrics of the two must be
equal: CMC, every AP and INP, bit for bit.

Then the neighbour pass alone beside the bare blocked product of the same blocks (and faiss's
exact flat search when faiss-cpu is installed; not a dependency of the package), --repeats
times alternating, with their ratio (`--neighbours-only`: that table alone).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

# Run as a file: make the repository root importable for `benchmarks.*`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.eval_benchmark import (  # noqa: E402
    DATA_NAMES,
    add_data_arguments,
    make_data,
    peak_rss_mib,
)
from occreid_jax.errors import OneLineArgumentParser, int_at_least  # noqa: E402
from occreid_jax.evaluation import (  # noqa: E402
    FeatureSetPairs,
    evaluate_distance_blocks,
    evaluate_rank,
    pairwise_distance,
)
from occreid_jax.evaluation import blocks as tiling  # noqa: E402
from occreid_jax.evaluation.rerank import k_reciprocal_rerank  # noqa: E402
from occreid_jax.evaluation.rerank_blocks import (  # noqa: E402
    BlockedReRanking,
    budget_rows,
    neighbour_pass,
)
from occreid_jax.evaluation.set_pairs import probe_slices  # noqa: E402


def run_dense(data: dict, args: argparse.Namespace) -> tuple[dict, dict]:
    """(metrics, seconds per step) of the dense path."""
    ids = [data[k] for k in ("q_pids", "g_pids", "q_camids", "g_camids")]
    t0 = time.perf_counter()
    everything = np.concatenate([data["q"], data["g"]])
    full = pairwise_distance(everything, everything, args.metric)
    del everything
    t1 = time.perf_counter()
    final = k_reciprocal_rerank(full, data["q"].shape[0], overwrite=True)
    del full
    t2 = time.perf_counter()
    metrics = evaluate_rank(final, *ids)
    t3 = time.perf_counter()
    return metrics, {"fill": t1 - t0, "re-rank": t2 - t1, "ranking": t3 - t2, "total": t3 - t0}


def run_blocked(data: dict, args: argparse.Namespace) -> tuple[dict, dict]:
    """(metrics, seconds per step) of the blocked path."""
    ids = [data[k] for k in ("q_pids", "g_pids", "q_camids", "g_camids")]
    backend = tiling.resolve_backend(args.backend)  # (imports JAX: not timed)
    t0 = time.perf_counter()
    pairs = FeatureSetPairs(data["q"], data["g"], args.metric)  # cosine: a unit-norm copy
    t1 = time.perf_counter()
    reranked = BlockedReRanking(pairs, memory_mib=args.memory_mib, backend=backend)
    t2 = time.perf_counter()
    metrics = evaluate_distance_blocks(
        reranked, *ids, chunk_size=reranked.block_rows, memory_mib=args.memory_mib
    )
    t3 = time.perf_counter()
    steps = {"setup": t1 - t0, **reranked.timings}
    steps.update(ranking=t3 - t2 - steps["jaccard"], total=t3 - t0)
    return metrics, steps


RUNS = {"dense": run_dense, "blocked": run_blocked}


def neighbour_pass_rows(data: dict, args: argparse.Namespace) -> dict[str, list[float]]:
    """Seconds of the neighbour pass beside the bare blocked product of the same blocks, and
    an exact flat search of faiss (when installed), each --repeats times, alternating.

    * bare product: every probe block of the pass times the queries and the gallery (the
      matrix products of `FeatureSetPairs.block`, nothing else);
    * neighbour pass: `rerank_blocks.neighbour_pass`, the K = 21 nearest of every row by
      d = M / row max, ties by index, the pass `BlockedReRanking` runs;
    * faiss: `IndexFlatIP` over the unit features (cosine), the 21 nearest of all Q + G.
    """
    pairs = FeatureSetPairs(data["q"], data["g"], args.metric)
    rows = budget_rows(pairs, args.memory_mib)
    slices = probe_slices(pairs.num_query, pairs.num_gallery, rows)

    everything = np.concatenate([pairs.q, pairs.g])  # the probes, as the pass reads them

    def bare():
        for block in slices:
            for cands in pairs.cands:
                everything[block] @ cands.T

    runs = {"bare product": bare, "neighbour pass": lambda: neighbour_pass(pairs, rows, 21)}
    try:
        import faiss

        index = faiss.IndexFlatIP(pairs.q.shape[1])
        for cands in pairs.cands:
            index.add(cands)  # (cosine: unit rows; euclidean: raw rows, an inner-product search)
        unit = np.concatenate(pairs.cands)
        runs["faiss IndexFlatIP"] = lambda: index.search(unit, 21)
    except ImportError:
        print("faiss-cpu is not installed (pip install faiss-cpu): its reference row left out")
    times = {name: [] for name in runs}
    for _ in range(max(1, args.repeats)):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    return times


def print_neighbour_pass(times: dict[str, list[float]]) -> None:
    """The table of `neighbour_pass_rows`: median seconds and the ratio to the bare product."""
    median = {name: float(np.median(t)) for name, t in times.items()}
    print("| neighbour pass step | median s | / bare product |")
    print("|---|---|---|")
    for name, m in median.items():
        print(f"| {name} | {m:.2f} | {m / median['bare product']:.2f} |")


def child(kind: str, path: str, args: argparse.Namespace) -> None:
    """Loads the data, runs one configuration, prints JSON and saves the per-query metrics."""
    data = {name: np.load(os.path.join(path, f"{name}.npy")) for name in DATA_NAMES}
    before = peak_rss_mib()
    metrics, steps = RUNS[kind](data, args)
    peak = peak_rss_mib()
    np.savez(os.path.join(path, f"{kind}.npz"), **{k: metrics[k] for k in ("cmc", "AP", "INP")})
    print(json.dumps({"before_mib": before, "peak_mib": peak, "steps": steps,
                      "mAP": metrics["mAP"], "mINP": metrics["mINP"]}))  # fmt: skip


def main() -> None:
    p = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_data_arguments(p)
    p.add_argument(
        "--repeats", type=int_at_least(1), default=1, help="in-process runs of each, alternating"
    )
    p.add_argument("--no-dense", action="store_true", help="blocked only (MSMT17: 35 GB dense)")
    p.add_argument(
        "--neighbours-only", action="store_true",
        help="only the neighbour pass beside the bare product (and faiss, when installed)",
    )  # fmt: skip
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    p.add_argument("--data", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.data, args)
        return

    kinds = ["blocked"] if args.no_dense else ["dense", "blocked"]
    data = make_data(args)
    num_q, num_g = data["q"].shape[0], data["g"].shape[0]
    backend = tiling.resolve_backend(args.backend)
    print(f"{num_q} queries x {num_g} gallery, dim {args.dim}, {args.metric}, k1=20 k2=6 "
          f"lambda=0.3, budget {args.memory_mib:g} MiB, {backend}")  # fmt: skip
    if args.neighbours_only:
        print_neighbour_pass(neighbour_pass_rows(data, args))
        return
    children, per_query = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in DATA_NAMES:
            np.save(os.path.join(tmp, f"{name}.npy"), data[name])
        for kind in kinds:  # a fresh process per configuration: its own peak RSS
            out = subprocess.run(
                [sys.executable, __file__, "--child", kind, "--data", tmp, *sys.argv[1:]],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            children[kind] = json.loads(out.stdout.strip().splitlines()[-1])
            per_query[kind] = dict(np.load(os.path.join(tmp, f"{kind}.npz")))
    times = {kind: [children[kind]["steps"]["total"]] for kind in kinds}
    if not args.no_dense:  # in-process runs, alternating: load from other processes hits both
        times = {kind: [] for kind in kinds}
        for _ in range(args.repeats):
            for kind in kinds:
                times[kind].append(RUNS[kind](data, args)[1]["total"])
    median = {kind: float(np.median(t)) for kind, t in times.items()}

    for kind in kinds:
        c = children[kind]
        steps = ", ".join(f"{k} {v:.1f}" for k, v in c["steps"].items())
        print(f"{kind:8s} mAP {c['mAP']:.6f} mINP {c['mINP']:.6f}; subprocess: peak RSS "
              f"{c['peak_mib']:.0f} MiB (imports and features {c['before_mib']:.0f} MiB); "
              f"seconds: {steps}")  # fmt: skip
    print(
        "| size | dense s | blocked s | blocked / dense | dense peak RSS | blocked peak RSS "
        "| metrics equal |"
    )
    print("|---|---|---|---|---|---|---|")
    size = f"{num_q:,} x {num_g:,}"
    rss = {k: f"{children[k]['peak_mib']:,.0f} MiB" for k in kinds}
    if args.no_dense:
        print(f"| {size} | - | {median['blocked']:.1f} | - | - | {rss['blocked']} | - |")
        if args.repeats > 1:
            print_neighbour_pass(neighbour_pass_rows(data, args))
        return
    equal = all(
        np.array_equal(per_query["dense"][k], per_query["blocked"][k]) for k in ("cmc", "AP", "INP")
    )
    diff = float(np.abs(per_query["dense"]["AP"] - per_query["blocked"]["AP"]).max())
    print(f"| {size} | {median['dense']:.1f} | {median['blocked']:.1f} | "
          f"{median['blocked'] / median['dense']:.2f} | {rss['dense']} | {rss['blocked']} | "
          f"{'yes' if equal else f'no (max |dAP| {diff:.1e})'} |")  # fmt: skip
    print_neighbour_pass(neighbour_pass_rows(data, args))
    if not equal:
        sys.exit("MISMATCH between the dense and the blocked re-ranking")


if __name__ == "__main__":
    main()
