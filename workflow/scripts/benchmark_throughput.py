"""Training, inference and query throughput of the library's hot loops, per model, on this machine.

Training: exactly what training does per batch (index gather from the resident uint8 dataset, trigger
stamping, crop+flip, forward, backward, SGD step; bf16 autocast and channels-last on CUDA) on synthetic
CIFAR-sized data, timed over steady-state steps only: the run's start (config and dataset hashing, resume
check) and ``--warmup`` steps (cuDNN autotuning, allocator) are excluded by timing from the end of the last
warm-up step to the end of the last step. Inference: batched ``predict`` after one warm-up batch.
Queries: the query attack's Square-Attack search (docs/methods.md section 7.3) on a batch of ``--query-batch``
images, after a warm-up search: queries/s in fp32, in the fast precision (channels-last under the fast
context, no calibration), with a captured CUDA graph (CUDA only), and for the joint QRA + gUAA search
(search queries/s: two per forward pass). On the CPU the fast context is fp32 (``runtime.autocast``); the
``cpu bf16`` row uses CPU bf16 autocast for comparison. Prints Markdown tables; results are recorded in
docs/benchmarks.md.

    python workflow/scripts/benchmark_throughput.py [--models cnn_small preact_resnet18] [--steps 20]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from dormant import runtime, training
from dormant.analysis.metrics import predict
from dormant.attacks import create_attack
from dormant.data.sources import make_synthetic
from dormant.nets import build_model
from dormant.reactivation.query import ScoreOracle, square_search, square_search_joint


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class _StepClock:
    """``after_step`` callback: the time at the end of the warm-up and at the end of the last step."""

    def __init__(self, device, warmup: int, total: int):
        self.device, self.warmup, self.total, self.n, self.t0, self.t1 = device, warmup, total, 0, None, None

    def __call__(self, model):
        self.n += 1
        if self.n in (self.warmup, self.total):
            _sync(self.device)
            if self.n == self.warmup:
                self.t0 = time.perf_counter()
            if self.n == self.total:
                self.t1 = time.perf_counter()


def bench(arch: str, device, steps: int, batch: int, warmup: int) -> dict:
    total = warmup + steps
    n = total * batch
    data = make_synthetic(num_classes=10, train_per_class=max(50, n // 10 + 10), test_per_class=50,
                          image_size=32, seed=0)
    train = data["train"].to(device)
    atk = create_attack({"type": "badnets", "ratio": 0.1, "target": 0}, train.x, train.y, 10, seed=0).to(device)
    model = build_model(arch, 10).to(device)
    cfg = {"epochs": 1, "batch_size": batch, "lr": 0.01}
    mask = atk.poison_mask(len(train), device)
    part = train.subset(torch.arange(n))
    clock = _StepClock(device, warmup, total)
    training.train(model, part, cfg, seed=0, attack=atk, poison_mask=mask[:n], after_step=clock)
    train_ips = steps * batch / (clock.t1 - clock.t0)
    x = train.x[:n]
    predict(model, x[:batch])
    _sync(device)
    t = time.perf_counter()
    predict(model, x, batch_size=1000)
    _sync(device)
    infer_ips = n / (time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"arch": arch, "train_img_s": train_ips, "infer_img_s": infer_ips, "peak_gib": peak}


def _bf16_cpu(device):
    return torch.autocast("cpu", dtype=torch.bfloat16)


def bench_queries(arch: str, device, queries: int, batch: int) -> list[tuple[str, float]]:
    """Queries per second of the Square-Attack search in each oracle mode (a warm-up search first)."""
    torch.manual_seed(0)
    model = build_model(arch, 10).to(device).eval()
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    modes = [("fp32", {}), ("fast", {"precision": "fast"})]
    if device.type == "cuda":
        modes.append(("fast + CUDA graph", {"precision": "fast", "cuda_graph": True}))
        modes.append(("fp32 + CUDA graph", {"cuda_graph": True}))
    else:
        modes.append(("cpu bf16", {"precision": "fast", "fast": _bf16_cpu}))
    rows = []
    for name, kw in modes:
        for budget in (3, queries):  # warm-up, then timed
            _sync(device)
            t = time.perf_counter()
            square_search(ScoreOracle(model, **kw), x, 0, budget=budget, early_stop=1.0, seed=0)
            _sync(device)
        rows.append((name, queries / (time.perf_counter() - t)))
        if name in ("fp32", "fast + CUDA graph"):
            for budget in (3, queries):
                oracles = [ScoreOracle(model, **kw) for _ in range(2)]
                _sync(device)
                t = time.perf_counter()
                square_search_joint(oracles, [x, x.flip(0)], [0, 0], budget=budget, early_stop=1.0, seed=0)
                _sync(device)
            rows.append((f"{name}, joint QRA + gUAA", 2 * queries / (time.perf_counter() - t)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["cnn_small", "preact_resnet18"])
    p.add_argument("--steps", type=int, default=10, help="timed training steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--queries", type=int, default=30, help="queries per timed search (0: skip the query table)")
    p.add_argument("--query-batch", type=int, default=100, help="images per query")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.warmup < 1 or a.steps < 1:
        p.error("--warmup and --steps must be at least 1 (the clock starts at the end of the warm-up)")
    device = runtime.setup(a.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"batch {a.batch}, {a.warmup} warm-up + {a.steps} timed steps")
    print("| model | train img/s | inference img/s | peak GPU GiB |")
    print("|---|---|---|---|")
    for arch in a.models:
        r = bench(arch, device, a.steps, a.batch, a.warmup)
        print(f"| {arch} | {r['train_img_s']:.0f} | {r['infer_img_s']:.0f} | {r['peak_gib']:.2f} |")
    if a.queries:
        print(f"\nquery search, {a.query_batch} images per query, {a.queries} queries per search")
        print("| model | oracle | queries/s |")
        print("|---|---|---|")
        for arch in a.models:
            for mode, qps in bench_queries(arch, device, a.queries, a.query_batch):
                print(f"| {arch} | {mode} | {qps:.1f} |")


if __name__ == "__main__":
    main()
