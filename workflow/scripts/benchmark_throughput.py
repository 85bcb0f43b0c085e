"""Training and inference throughput of the library's hot loop, per model, on this machine.

Measures exactly what training does per batch (index gather from the resident uint8 dataset, trigger
stamping, crop+flip, forward, backward, SGD step; bf16 autocast and channels-last on CUDA) on
synthetic CIFAR-sized data, and batched inference. Prints a Markdown table; results are recorded
in docs/benchmarks.md.

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


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(arch: str, device, steps: int, batch: int) -> dict:
    data = make_synthetic(num_classes=10, train_per_class=max(50, steps * batch // 10 + 10), test_per_class=50,
                          image_size=32, seed=0)
    train = data["train"].to(device)
    atk = create_attack({"type": "badnets", "ratio": 0.1, "target": 0}, train.x, train.y, 10, seed=0).to(device)
    model = build_model(arch, 10).to(device)
    cfg = {"epochs": 1, "batch_size": batch, "lr": 0.01}
    mask = atk.poison_mask(len(train), device)
    sub = train.subset(torch.arange(batch * 2))  # warm-up (cuDNN autotune, allocator)
    training.train(model, sub, cfg, seed=0, attack=atk, poison_mask=mask[: len(sub)])
    n = steps * batch
    part = train.subset(torch.arange(n))
    _sync(device)
    t = time.perf_counter()
    training.train(model, part, cfg, seed=0, attack=atk, poison_mask=mask[:n])
    _sync(device)
    train_ips = n / (time.perf_counter() - t)
    x = train.x[:n]
    predict(model, x[:batch])
    _sync(device)
    t = time.perf_counter()
    predict(model, x, batch_size=1000)
    _sync(device)
    infer_ips = n / (time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"arch": arch, "train_img_s": train_ips, "infer_img_s": infer_ips, "peak_gib": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["cnn_small", "preact_resnet18"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    device = runtime.setup(a.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"batch {a.batch}, {a.steps} steps")
    print("| model | train img/s | inference img/s | peak GPU GiB |")
    print("|---|---|---|---|")
    for arch in a.models:
        r = bench(arch, device, a.steps, a.batch)
        print(f"| {arch} | {r['train_img_s']:.0f} | {r['infer_img_s']:.0f} | {r['peak_gib']:.2f} |")


if __name__ == "__main__":
    main()
