"""One-command check of the paper path on one GPU (``make gpu-check``; docs/benchmarks.md "GPU check").

Runs the pipeline's own stage functions (dormant.stages: the code every Snakemake job runs) in one process, phase
by phase, and writes its figures to ``<out>.json`` and ``<out>.md`` after every phase, so a run cut off by its
time guard still reports what it measured:

1. environment: torch, CUDA, the GPU, its compute capability and native bf16, CUDA start-up time and host memory;
2. throughput: training and inference images/s at batch 128 and 512 and host-device syncs per training step
   (counted with ``torch.cuda.set_sync_debug_mode``), PreAct-ResNet18;
3. a clean and a BadNets PreAct-ResNet18 on the CIFAR-10 archive at the longest schedule (up to the paper's
   100 epochs) that the measured throughput fits into the budget; their C-ACC/ASR/RA next to BackdoorBench's;
4. FT on the defender's 2,500 clean images (5%), at the paper's settings; 5. BEC of the FT model;
6. white-box re-activation and gUAA at the paper's settings, and the query attack's queries/s;
7. a smoke run of every attack and every defense of config/paper.yaml at 2% of its budget (epochs, iterations);
8. determinism: weight digests of two identical short trainings with the deterministic settings on and off.

``--smoke`` runs every phase with tiny sizes (synthetic data, tests/tiny.yaml's model) on the CPU in about a
ten seconds; CI runs it so the script cannot rot. A hard guard (``--budget`` seconds, default 480) stops the run:
each phase is skipped when too little time is left, and an alarm writes the report and exits at the deadline.

    python workflow/scripts/gpu_check.py --archive data/cifar10-jpeg.tar.gz   # on a GPU machine (make gpu-check)
    python workflow/scripts/gpu_check.py --smoke --out /tmp/gpu-check          # CPU, CI
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import resource
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

import yaml

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS; set before CUDA starts

REPO = Path(__file__).resolve().parents[2]
# BackdoorBench (PreAct-ResNet18, CIFAR-10, 100 epochs, 10% poisoning; leaderboard): C-ACC / ASR. The JPEG copy of
# CIFAR-10 costs about 2-3 points of C-ACC.
EXPECTED = {"backdoor": {"c_acc": 91.3, "asr": 95.0}, "ft": {"c_acc": 90.0, "asr": 1.5}}
JPEG_C_ACC_LOSS = (2.0, 3.0)
BUDGET_KEYS = ("epochs", "teacher_epochs", "epochs_reverse", "iterations", "mask_epochs", "rounds_budget")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Report:
    """The figures so far, written as JSON and Markdown after every phase (and by the time guard)."""

    def __init__(self, out: Path, mode: str):
        self.out, self.data = out, {"mode": mode, "started_unix": round(time.time(), 1), "phases": {}}
        self.out.parent.mkdir(parents=True, exist_ok=True)

    def set(self, phase: str, **figures) -> None:
        self.data["phases"].setdefault(phase, {}).update(figures)
        self.write()

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.time() - self.data["started_unix"], 1)
        tmp = self.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True, default=str) + "\n")
        tmp.replace(self.out.with_suffix(".json"))
        self.out.with_suffix(".md").write_text(self.markdown())

    def markdown(self) -> str:
        d = self.data
        lines = [f"# GPU check ({d['mode']})", "", f"elapsed {d['elapsed_s']} s; written by "
                 "workflow/scripts/gpu_check.py after every phase", ""]
        for name, figs in d["phases"].items():
            lines += [f"## {name}", "", "| figure | measured | expected |", "|---|---|---|"]
            expected = figs.get("expected", {})
            for k, v in figs.items():
                if k == "expected":
                    continue
                if isinstance(v, dict):
                    for k2, v2 in v.items():
                        lines.append(f"| {k}.{k2} | {_fmt(v2)} | {_fmt(expected.get(k, {}).get(k2, ''))} |")
                else:
                    lines.append(f"| {k} | {_fmt(v)} | {_fmt(expected.get(k, ''))} |")
            lines.append("")
        return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Guard:
    """Hard time guard: phases ask for their estimated seconds; an alarm at the deadline writes and exits."""

    def __init__(self, budget_s: float, report: Report):
        self.deadline, self.report = time.time() + budget_s, report
        signal.signal(signal.SIGALRM, self._expire)
        signal.alarm(max(1, int(budget_s)))

    def _expire(self, *_):
        self.report.data["cut_off"] = "time guard: the budget ran out during the phase in progress"
        self.report.write()
        os._exit(3)

    def left(self) -> float:
        return self.deadline - time.time()

    def allows(self, phase: str, need_s: float) -> bool:
        if self.left() < need_s:
            self.report.set(phase, skipped=f"needs about {need_s:.0f} s, {self.left():.0f} s left")
            return False
        return True


# ---- phases (each takes a ``precision`` so that the fast-precision switch plugs in here) -------------------------
def environment(device, report: Report) -> None:
    import torch

    figs = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
            "host_rss_before_cuda_mb": round(rss_mb())}
    if device.type == "cuda":
        t = time.perf_counter()
        torch.zeros(1, device=device)
        torch.backends.cudnn.version()
        torch.cuda.synchronize()
        figs["cuda_init_s"] = round(time.perf_counter() - t, 2)
        p = torch.cuda.get_device_properties(device)
        figs.update(gpu=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                    bf16_native=p.major >= 8, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    host_rss_after_cuda_mb=round(rss_mb()))
    else:
        figs.update(cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    report.set("environment", **figs)


def count_syncs(fn) -> tuple[float, int | None]:
    """Runs ``fn`` and returns (seconds, host-device syncs it made; None off CUDA)."""
    import torch

    if not torch.cuda.is_available():
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t, None
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        t = time.perf_counter()
        try:
            fn()
            torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    n = sum("synchroniz" in str(w.message) for w in caught)
    return time.perf_counter() - t, n


def throughput(arch: str, device, batch: int, steps: int, precision: str = "auto") -> dict:
    """Training (gather, BadNets stamp, crop+flip, forward, backward, SGD) and inference images/s, syncs per step,
    in ``precision`` (``$DORMANT_PRECISION``: auto = the fast precision on CUDA; fp32). Inference goes through the
    metrics' ``predict``, which is fp32 by design, so only the training figure depends on ``precision``."""
    with _environ(DORMANT_PRECISION=precision):
        return _throughput(arch, device, batch, steps, precision)


@contextlib.contextmanager
def _environ(**values):
    """Environment variables set for the duration of a block, the previous values restored after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _throughput(arch: str, device, batch: int, steps: int, precision: str) -> dict:
    import torch
    from dormant import training
    from dormant.analysis.metrics import predict
    from dormant.attacks import create_attack
    from dormant.data.sources import make_synthetic
    from dormant.nets import build_model

    n = steps * batch
    data = make_synthetic(num_classes=10, train_per_class=n // 10 + batch, test_per_class=10, image_size=32, seed=0)
    train = data["train"].to(device)
    atk = create_attack({"type": "badnets", "ratio": 0.1, "target": 0}, train.x, train.y, 10, seed=0).to(device)
    model = build_model(arch, 10).to(device)
    cfg = {"epochs": 1, "batch_size": batch, "lr": 0.01}
    mask = atk.poison_mask(len(train), device)
    warm = train.subset(torch.arange(2 * batch, device=train.x.device))
    training.train(model, warm, cfg, seed=0, attack=atk, poison_mask=mask[: len(warm)])
    part = train.subset(torch.arange(n, device=train.x.device))
    secs, syncs = count_syncs(lambda: training.train(model, part, cfg, seed=0, attack=atk, poison_mask=mask[:n]))
    x = train.x[:n]
    predict(model, x[:batch], batch_size=batch)
    t = time.perf_counter()
    predict(model, x, batch_size=batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    infer = n / (time.perf_counter() - t)
    return {"train_img_s": round(n / secs), "infer_img_s": round(infer), "precision": precision,
            "syncs_per_step": None if syncs is None else round(syncs / steps, 2)}


def run_stage(name: str, params: dict, device, **paths) -> float:
    """Calls one pipeline stage in this process (what `dormant <stage>` runs); returns its seconds."""
    import inspect

    from dormant.stages import STAGES, load_all

    load_all()
    st = STAGES[name]
    if "device" in inspect.signature(st.func).parameters:
        paths["device"] = device
    t = time.perf_counter()
    st.func(params, **{k: str(v) if isinstance(v, Path) else v for k, v in paths.items()})
    return time.perf_counter() - t


def scaled(entry: dict, factor: float) -> dict:
    """A defense or attack entry at ``factor`` of its budget: epochs and iterations scaled (at least 1)."""
    e = copy.deepcopy(entry)
    for k in BUDGET_KEYS:
        if isinstance(e.get(k), int):
            e[k] = max(1, round(e[k] * factor))
    if e.get("type") == "trojannn":
        e["steps"] = max(1, round(e["steps"] * factor))
    if e.get("type") in ("lf", "trojannn") and isinstance(e.get("n_images"), int):
        e["n_images"] = max(e.get("batch_size", 1), round(e["n_images"] * factor))
    return e


def digest_of_training(device, deterministic: bool, epochs: int, n: int) -> str:
    """Weights digest of a short cnn_small training with the deterministic settings on or off
    (``dormant.runtime.configure``, what ``runtime.deterministic`` sets in every job)."""
    import torch
    from dormant import runtime, training
    from dormant.data.sources import make_synthetic
    from dormant.io import tensor_digest
    from dormant.nets import build_model

    runtime.configure(deterministic)
    try:
        data = make_synthetic(num_classes=10, train_per_class=n // 10, test_per_class=10, image_size=32, seed=0)
        train = data["train"].to(device)
        torch.manual_seed(0)
        model = build_model("cnn_small", 10).to(device)
        training.train(model, train, {"epochs": epochs, "batch_size": 128, "lr": 0.01}, seed=0)
        return tensor_digest(*[p.detach().float() for p in model.state_dict().values()])
    finally:
        runtime.configure(False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archive", default=None, help="the CIFAR-10 JPEG archive (.tar.gz) or folder (full mode)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on synthetic data (CPU, about a minute)")
    p.add_argument("--budget", type=float, default=480.0, help="hard time limit in seconds (default 480)")
    p.add_argument("--out", default=None,
                   help="output path without suffix: writes OUT.json and OUT.md (default: docs/benchmarks/gpu-check, "
                        "with --smoke logs/gpu-check-smoke/gpu-check)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--workdir", default=None, help="folder for the run's artifacts (default: a temporary one)")
    a = p.parse_args(argv)
    if not a.smoke and not a.archive:
        p.error("--archive is needed unless --smoke")

    out = a.out or str(REPO / ("logs/gpu-check-smoke/gpu-check" if a.smoke else "docs/benchmarks/gpu-check"))
    report = Report(Path(out), "smoke" if a.smoke else "full")
    guard = Guard(a.budget, report)
    from dormant import runtime

    device = runtime.setup(None, a.device)
    environment(device, report)

    cfg = yaml.safe_load((REPO / ("tests/tiny.yaml" if a.smoke else "config/paper.yaml")).read_text())
    paper = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    if not a.smoke:
        cfg["data"].update(source="path", path=str(Path(a.archive).resolve()), root=None)
    arch = cfg["model"]["arch"]

    # 2. throughput
    if guard.allows("throughput", 5 if a.smoke else 40):
        steps = 2 if a.smoke else 30
        for batch in ((16, 32) if a.smoke else (128, 512)):
            for prec in ("auto", "fp32"):  # auto: the fast precision on CUDA (bf16 on sm80+), fp32 on the CPU
                report.set("throughput", **{f"{arch}_batch{batch}_{prec}": throughput(arch, device, batch, steps,
                                                                                      prec)})
        if not a.smoke:  # the cost model's estimate (workflow/lib/dormant/plan_rates.yaml), to be replaced by these
            from dormant.plan import load_rates

            g = load_rates()["gpu"]
            est = {"train_img_s": round(g["infer_img_per_s"] / 3), "infer_img_s": g["infer_img_per_s"]}
            report.set("throughput", expected={f"{arch}_batch128_auto": est, f"{arch}_batch512_auto": est})

    work = Path(a.workdir or tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    ds, sub = work / "dataset.safetensors", work / "subset.json"
    t = run_stage("prepare_data", {"data": cfg["data"], "seed": 0}, device, dataset=ds)
    run_stage("clean_subset", {"defense_data": {"clean_ratio": 0.05 if not a.smoke else 0.2}, "seed": 0}, device,
              dataset=ds, subset=sub)
    report.set("data", prepare_s=round(t, 1), dataset_mb=round(ds.stat().st_size / 1e6, 1))

    # 3. clean and BadNets models at the longest schedule that fits
    badnets = cfg["attacks"]["badnets"]
    trig0, trig, clean, bd = (work / "badnets_trigger0.safetensors", work / "badnets_trigger.safetensors",
                              work / "clean.safetensors", work / "badnets.safetensors")
    run_stage("trigger", {"attack": badnets, "name": "badnets", "seed": 0}, device, dataset=ds, trigger=trig0)
    train_cfg = dict(cfg["train"])
    if not a.smoke:
        measured = report.data["phases"].get("throughput", {}).get(f"{arch}_batch128_auto")
        ips = measured["train_img_s"] if isinstance(measured, dict) else 1000
        per_model = max(30.0, (guard.left() - 200) / 2)  # leave about 200 s for the phases after it
        train_cfg["epochs"] = int(max(1, min(paper["train"]["epochs"], per_model * ips / 50000)))
        train_cfg["eval_every"] = max(1, train_cfg["epochs"])
    if guard.allows("models", 10):
        report.set("models", epochs=train_cfg["epochs"], schedule=f"{train_cfg['schedule']} over "
                   f"{train_cfg['epochs']} epochs (paper: {paper['train']['epochs']})")
        mparams = {"model": cfg["model"], "train": train_cfg, "seed": 0}
        t = run_stage("train_clean", mparams, device, dataset=ds, model=clean)
        t2 = run_stage("train_backdoor", mparams, device, dataset=ds, trigger=trig0, trained_trigger=trig, model=bd)
        figs = {}
        for role, m in (("clean", clean), ("backdoor", bd)):
            out = work / f"metrics_{role}.json"
            run_stage("metrics", {"role": role, "seed": 0}, device, dataset=ds, trigger=trig, model=m,
                      backdoored=bd, metrics=out)
            figs[role] = {k: round(v, 2) for k, v in json.loads(out.read_text())["metrics"].items()
                          if k in ("c_acc", "asr", "ra")}
        lo, hi = JPEG_C_ACC_LOSS
        exp = {"backdoor": {**EXPECTED["backdoor"],
                            "c_acc": f"{EXPECTED['backdoor']['c_acc']} ({EXPECTED['backdoor']['c_acc'] - hi:.1f}-"
                                     f"{EXPECTED['backdoor']['c_acc'] - lo:.1f} on the JPEG copy; 100 epochs)"}}
        report.set("models", train_clean_s=round(t, 1), train_backdoor_s=round(t2, 1), **figs, expected=exp)

    # 4. FT on the defender's clean subset, 5. BEC
    ft = work / "ft.safetensors"
    if bd.exists() and guard.allows("ft_bec", 5 if a.smoke else 60):
        t = run_stage("defend", {"defense": cfg["defenses"]["ft"], "seed": 0}, device, dataset=ds, subset=sub,
                      trigger=trig, backdoored=bd, model=ft, checkpoint=None)
        out = work / "metrics_ft.json"
        run_stage("metrics", {"role": "defense", "seed": 0}, device, dataset=ds, trigger=trig, model=ft,
                  backdoored=bd, metrics=out)
        m = json.loads(out.read_text())["metrics"]
        bec_out = work / "bec_ft.json"
        t_bec = run_stage("bec", {"bec": cfg["bec"], "seed": 0}, device, dataset=ds, trigger=trig, model=ft,
                          backdoored=bd, clean=clean, bec=bec_out)
        b = json.loads(bec_out.read_text())["metrics"]
        report.set("ft_bec", ft_s=round(t, 1), bec_s=round(t_bec, 1),
                   ft={k: m[k] for k in ("c_acc", "asr", "ra")}, bec={k: v for k, v in b.items()
                                                                     if isinstance(v, (int, float))},
                   expected={"ft": {**EXPECTED["ft"], "c_acc": f"{EXPECTED['ft']['c_acc']} (JPEG: 2-3 less)"}})

    # 6. white-box re-activation + gUAA, and queries/s
    target = ft if ft.exists() else bd
    if bd.exists() and guard.allows("reactivation", 5 if a.smoke else 60):
        res, delta = work / "reactivation.json", work / "delta.safetensors"
        t = run_stage("reactivate", {"reactivation": cfg["reactivation"], "seed": 0}, device, dataset=ds,
                      trigger=trig, model=target, result=res, delta=delta)
        r = json.loads(res.read_text()).get("metrics", {})
        q = dict(cfg["query"])
        q["budget"] = max(2, q["budget"] // 50)  # 2% of the paper's budget
        q["checkpoints"] = [c for c in q["checkpoints"] if c < q["budget"]]
        q["early_stop"] = 1.0
        qres, qdelta = work / "query.json", work / "query_delta.safetensors"
        queries = 2 * q["budget"]  # two searches (the trigger's and gUAA's), early stop off
        oracle = {}
        # the oracle three ways: fp32; the fast precision after calibration; the same replayed from a CUDA graph
        for name, over in (("fp32", {"precision": "fp32", "cuda_graph": False}),
                           ("fast", {"precision": "fast", "cuda_graph": False}),
                           ("fast_graph", {"precision": "fast", "cuda_graph": True})):
            if guard.left() < (2 if a.smoke else 30):
                break
            tq = run_stage("query", {"query": {**q, **over}, "seed": 0}, device, dataset=ds, trigger=trig,
                           model=target, result=qres, delta=qdelta)
            out = json.loads(qres.read_text())
            out = out.get("metrics", out)
            prec = (out.get("reactivated") or {}).get("precision")
            oracle[name] = {"query_s": round(tq, 1), "queries_per_s": round(queries / tq, 1), "precision": prec}
        report.set("reactivation", reactivate_s=round(t, 1),
                   whitebox={k: v for k, v in r.items() if isinstance(v, (int, float))},
                   queries=queries, query_batch=q["batch_size"], oracle=oracle,
                   expected={"oracle": {"fast": "about 2x fp32's queries/s on CUDA, if its calibration agreed",
                                        "fast_graph": "at least fast's"}})

    # 7. every attack and defense at 2% of its budget
    if bd.exists() and guard.allows("smoke_all", 20 if a.smoke else 120):
        times, failed = {}, {}
        smoke_train = {**train_cfg, "epochs": 1, "eval_every": 1}
        for name, entry in paper["attacks"].items():
            if guard.left() < 30:
                failed[f"attack {name}"] = "skipped: time"
                continue
            e = scaled(entry, 0.02)
            try:
                t = time.perf_counter()
                from dormant.attacks import ATTACKS

                cls = ATTACKS.get(e["type"])
                res = work / f"{name}_resource.safetensors"
                extra = {}
                if cls.resource_stage:
                    run_stage("attack_resource", {"attack": e, "name": name, "seed": 0}, device, dataset=ds,
                              resource=res, clean=clean if cls.needs_clean_model else None)
                    extra["resource"] = res
                t0 = work / f"{name}_trigger0.safetensors"
                run_stage("trigger", {"attack": e, "name": name, "seed": 0}, device, dataset=ds, trigger=t0, **extra)
                run_stage("train_backdoor", {"model": cfg["model"], "train": smoke_train, "seed": 0}, device,
                          dataset=ds, trigger=t0, trained_trigger=work / f"{name}_trigger.safetensors",
                          model=work / f"{name}_model.safetensors")
                times[f"attack {name}"] = round(time.perf_counter() - t, 1)
            except Exception as ex:  # a failure is a finding: recorded, the check goes on
                failed[f"attack {name}"] = f"{type(ex).__name__}: {ex}"[:300]
            report.set("smoke_all", seconds=times, failed=failed)
        for name, entry in paper["defenses"].items():
            if guard.left() < 20:
                failed[f"defense {name}"] = "skipped: time"
                continue
            try:
                t = run_stage("defend", {"defense": scaled(entry, 0.02), "seed": 0}, device, dataset=ds, subset=sub,
                              trigger=trig, backdoored=bd, model=work / f"def_{name}.safetensors", checkpoint=None)
                times[f"defense {name}"] = round(t, 1)
            except Exception as ex:
                failed[f"defense {name}"] = f"{type(ex).__name__}: {ex}"[:300]
            report.set("smoke_all", seconds=times, failed=failed)
        report.set("smoke_all", budget="2% of each entry's epochs/iterations (at least 1); attacks: 1 training epoch",
                   passed=len(times), n_failed=len(failed))

    # 8. determinism
    if guard.allows("determinism", 5 if a.smoke else 40):
        n, ep = (200, 1) if a.smoke else (10000, 1)
        figs = {}
        for flag in (True, False):
            try:
                d1, d2 = (digest_of_training(device, flag, ep, n) for _ in range(2))
                figs["on" if flag else "off"] = {"digest_1": d1, "digest_2": d2, "identical": d1 == d2}
            except Exception as ex:
                figs["on" if flag else "off"] = {"error": f"{type(ex).__name__}: {ex}"[:300]}
        report.set("determinism", **figs, expected={"on": {"identical": True},
                                                    "off": {"identical": "True on CPU; may differ on CUDA"}})

    signal.alarm(0)
    if not a.workdir:  # a temporary folder of models and datasets: not kept
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    report.data["finished"] = True
    report.write()
    print(report.out.with_suffix(".md").read_text())
    failed = report.data["phases"].get("smoke_all", {}).get("failed", {})
    return 1 if any(not str(v).startswith("skipped") for v in failed.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
