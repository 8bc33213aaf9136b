"""Data preparation under one and two processes: every rank preparing (as before) vs prepared once per node.

    python benchmarks/distributed_prep.py --rows 100000        # prints a table, writes --json if given

Starts itself under `torchrun --nproc_per_node 1` and `2` (CPU, gloo). Each rank builds the same prompt/completion
rows and, between barriers, times:

- `each`: `PreparationPipeline.prepare` on every rank (what every rank did before `prepare_once`);
- `once`: `distributed.prepare_once` around the same call: the node's main process prepares and saves the Arrow files,
  the other rank waits for them and memory-maps them.

(wall seconds, and CPU seconds per rank: on a busy machine the wall time is noise, the CPU time is what each rank
pays) and, on rank 0, the parts: the preparation per row, `save_to_disk` and `load_from_disk` of the result, and one
all-reduce of a `[world_size]` float tensor (what `validate_batch` sends per micro-batch), for docs/distributed.md's
estimates. On a machine with fewer free cores than processes, `each` shows the contention every rank adds.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rows(count: int) -> dict[str, list[str]]:
    return {
        "prompt": [f"How many meters are there in {i % 997} km? Answer in <answer> tags." for i in range(count)],
        "completion": [f" <answer>{(i % 997) * 1000}</answer>" for i in range(count)],
    }


def worker(out: str, rows: int) -> None:
    """One rank: the timings described in the module docstring, written to `<out>/rank<r>.json`."""
    import torch
    import torch.distributed as dist
    from datasets import Dataset, load_from_disk

    from trl_masked_sft import MaskedSFTConfig, PreparationPipeline
    from trl_masked_sft.distributed import prepare_once
    from trl_masked_sft.tiny import build_tiny_tokenizer

    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    data = Dataset.from_dict(_rows(rows))
    config = MaskedSFTConfig(output_dir=os.path.join(out, "unused"), use_cpu=True, report_to="none", max_length=64)
    pipeline = PreparationPipeline.from_config(build_tiny_tokenizer(), config)
    barrier = dist.barrier if world > 1 else (lambda: None)
    result: dict[str, float] = {"rank": rank, "world": world}

    pipeline.prepare(data.select(range(min(rows, 1000))))  # warm-up: caches, lazy imports
    barrier()
    start, cpu = time.perf_counter(), time.process_time()
    prepared = pipeline.prepare(data).dataset
    result["each_s"], result["each_cpu_s"] = time.perf_counter() - start, time.process_time() - cpu
    barrier()
    start, cpu = time.perf_counter(), time.process_time()
    dataset, _ = prepare_once(lambda: (pipeline.prepare(data).dataset, None))
    result["once_s"], result["once_cpu_s"] = time.perf_counter() - start, time.process_time() - cpu
    assert len(dataset) == rows
    barrier()
    if rank == 0:
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            prepared.save_to_disk(folder)
            result["save_s"] = time.perf_counter() - start
            start = time.perf_counter()
            load_from_disk(folder)
            result["load_s"] = time.perf_counter() - start
    if world > 1:
        flags = torch.zeros(world)
        for _ in range(20):  # warm-up
            dist.all_reduce(flags)
        start = time.perf_counter()
        for _ in range(200):
            dist.all_reduce(flags)
        result["all_reduce_us"] = (time.perf_counter() - start) / 200 * 1e6
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    if world > 1:
        dist.destroy_process_group()


def launch(processes: int, rows: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as out, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
        s.close()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_OFFLINE": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_port", port, __file__, "--worker", out, "--rows", str(rows),
        ]  # fmt: skip
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=1800)
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(processes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.rows)
        return
    results = {str(n): launch(n, args.rows) for n in (1, 2)}
    one, two = results["1"][0], results["2"]
    print(f"{args.rows} prompt/completion rows, tiny byte-level tokenizer, max_length 64")
    print("| processes | every rank prepares: wall s; CPU s per rank | prepared once: wall s; CPU s per rank |")
    print("|---|---|---|")
    for n, ranks in results.items():
        cells = [
            f"{max(r[key + '_s'] for r in ranks):.1f}; " + ", ".join(f"{r[key + '_cpu_s']:.1f}" for r in ranks)
            for key in ("each", "once")
        ]
        print(f"| {n} | {cells[0]} | {cells[1]} |")
    print(
        f"per row: {one['each_cpu_s'] / args.rows * 1e6:.0f} us CPU to prepare; save_to_disk {one['save_s']:.2f} s, "
        f"load_from_disk {one['load_s']:.2f} s for all rows; gloo all-reduce of [2] floats: "
        f"{two[0]['all_reduce_us']:.0f} us"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
