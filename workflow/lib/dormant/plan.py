"""Cost model of a run (``dormant plan``) and the per-rule cluster resources the workflow requests.

For a config, the jobs come from Snakemake's own plan (``snakemake -n --forceall``, so the job count is the
DAG's, per rule), and each job's GPU time is projected from the work its config asks for (images passed
forward or trained, per architecture) at the rates of ``plan_rates.yaml``, whose every figure names its
source: CPU and start-up figures are measured, GPU throughput is a FLOP-based estimate until a GPU run
(``make gpu-check``) measures it. On top of the GPU work, every SLURM job pays a start-up (the job step
parses the workflow, the stage imports torch, creates a CUDA context and loads the dataset) while holding its
GPU, and training writes resume checkpoints while the GPU waits. The plan compares two layouts: one job per
SLURM submission, checkpoints every epoch (the layout before issue 16) against the cluster profile's grouping
(a model's analysis jobs in one submission) and the config's checkpoint cadence.

Pure Python (no torch): the Snakefile calls :func:`mem_mb` and :func:`runtime_min` while it parses.
"""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

RATES_FILE = Path(__file__).with_name("plan_rates.yaml")
REPO = Path(__file__).resolve().parents[3]

# Rules that run a network: they request a GPU (resources: gpu=1) and pay a CUDA start-up on a GPU node.
GPU_RULES = ("train_clean", "attack_resource", "train_backdoor", "defend", "metrics", "bec", "reactivate", "observe",
             "query", "transfer_evaluate", "evidence", "train_surrogate", "defend_surrogate", "transfer_optimise",
             "budget")
# Rules that run where Snakemake runs (`localrule: True` in their rule; a dry run does not mark them).
LOCAL_RULES = ("prepare_data", "report", "report_blackbox", "report_defenses", "report_seeds", "report_budget",
               "leaderboard")
# Rules that train (and so write resume checkpoints): their epochs count checkpoint writes.
TRAINING_RULES = ("train_clean", "train_backdoor", "defend", "train_surrogate", "defend_surrogate")
# Within a group job of the cluster profile, the rule that runs after another (evidence reads reactivate's
# perturbation); the others run side by side.
AFTER = {"evidence": "reactivate"}

DATASETS = {"cifar10": (5000, 1000, 10, 32), "gtsrb": (620, 294, 43, 32), "tiny_imagenet": (500, 50, 200, 64)}


@lru_cache(maxsize=4)
def load_rates(path: str | None = None) -> dict:
    import yaml

    with open(path or RATES_FILE, encoding="utf-8") as f:
        return yaml.safe_load(f)


@dataclass
class Sizes:
    n_train: int
    n_test: int
    classes: int
    pixels: float  # image area relative to 32x32 (FLOPs scale with it)


def sizes(config: dict) -> Sizes:
    """Training/test set sizes of the config's dataset (per-class caps applied)."""
    d = config["data"]
    tr, te, c, side = DATASETS.get(d["dataset"], DATASETS["cifar10"])
    if d["dataset"] == "synthetic":
        s = d.get("synthetic") or {}
        c, side = s.get("classes", 10), s.get("image_size", 32)
    if d.get("image_size"):
        side = d["image_size"]
    tr = d.get("train_per_class") or tr
    te = d.get("test_per_class") or te
    return Sizes(tr * c, te * c, c, (side / 32) ** 2)


@dataclass
class Work:
    """GPU work of one job in forward passes of one image ("image-passes"; a training step is 3), per arch."""

    bf16: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    fp32: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    checkpoints: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # arch -> writes (every epoch)
    epochs: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def train(self, arch, images, epochs=1, passes=1.0):
        self.bf16[arch] += 3.0 * passes * images * epochs

    def infer(self, arch, images, fp32=False):
        (self.fp32 if fp32 else self.bf16)[arch] += images

    def ckpt(self, arch, epochs):
        self.checkpoints[arch] += int(epochs)


def _defense_work(w: Work, arch: str, cfg: dict, n_clean: int, n_train: int, classes: int) -> None:
    """Image-passes of one defense, from its config (docs/methods.md section 5); a PGD step is a training step."""
    t = cfg["type"]
    ep = cfg.get("epochs", 0)
    if t == "cleanclip":  # the in-modal views double the image passes (the text tower is not counted)
        w.train(arch, n_clean, ep, passes=2 if cfg.get("lambda_ss", 1.0) else 1)
        w.ckpt(arch, ep)
    elif t in ("ft", "fp", "fst"):
        w.train(arch, n_clean, ep)
        if t == "fp":  # the pruning sweep evaluates the held-out split once per step of 1/step levels
            w.infer(arch, n_clean * cfg.get("holdout", 0.2) * math.ceil(1 / cfg.get("step", 0.01)))
        w.ckpt(arch, ep)
    elif t == "ftsam":  # two forward-backward passes per step
        w.train(arch, n_clean, ep, passes=2)
        w.ckpt(arch, ep)
    elif t == "aft":
        w.train(arch, n_clean, ep, passes=cfg.get("steps", 7) + 1)
        w.ckpt(arch, ep)
    elif t == "pbe":  # rounds on growing subsets of the (poisoned) training set, every epoch adversarial
        fr = [cfg.get("init_fraction", 0.05), *cfg.get("keep_fractions", [])]
        for f in fr:
            w.train(arch, f * n_train, ep, passes=cfg.get("steps", 7) + 1)
            w.infer(arch, 2 * n_train)  # cosine scores of every training image
        w.ckpt(arch, ep * len(fr))
    elif t == "nad":
        te = cfg.get("teacher_epochs", 10)
        w.train(arch, n_clean, te)
        w.train(arch, n_clean, ep, passes=4 / 3)  # the student's step plus the teacher's forward pass
        w.ckpt(arch, te + ep)
    elif t == "nc":  # one reverse-engineering run per class, then unlearning
        fit = n_clean * (1 - cfg.get("holdout", 0.2))
        w.train(arch, fit * classes, cfg.get("epochs_reverse", 50))
        w.train(arch, n_clean, ep)
        w.ckpt(arch, ep)
    elif t == "anp":
        w.train(arch, cfg.get("batch_size", 128) * cfg.get("iterations", 2000), passes=cfg.get("anp_steps", 1) + 1)
    elif t == "ibau":
        w.train(arch, n_clean, cfg.get("rounds", 5) * (cfg.get("uap_epochs", 1) + 1 + cfg.get("K", 5)))
    elif t == "sau":
        w.train(arch, n_clean, ep, passes=cfg.get("steps", 5) + 2)
        w.ckpt(arch, ep)
    # clp is data-free: its evaluation only (below)


def _attack_resource_work(w: Work, arch: str, cfg: dict, s: Sizes) -> None:
    t = cfg["type"]
    if t == "lf":
        w.train(arch, cfg.get("n_images", 5000), cfg.get("epochs", 20))
    elif t == "trojannn":
        w.train(arch, cfg.get("batch_size", 128), cfg.get("steps", 1000))
    elif t in ("ssba", "input_aware"):  # a small encoder/generator trained on the training set: counted as the
        ep = cfg.get("epochs", cfg.get("mask_epochs", 20))  # victim architecture (an upper bound)
        w.train(arch, s.n_train, ep)


def job_work(rule: str, wc: dict, config: dict, *, fast_query: bool = True) -> Work:
    """The GPU work of one job of ``rule`` with wildcards ``wc`` under ``config``. ``fast_query``: the query oracle
    in the fast precision after its calibration (``query.precision`` auto or fast), assuming the calibration
    accepts it (where it does not, the search stays fp32: the cost with ``fast_query=False``)."""
    w, s = Work(), sizes(config)
    arch = config["model"]["arch"]
    n_clean = int(round(config["defense_data"]["clean_ratio"] * s.n_train))
    evaluate = 3 * s.n_test  # C-ACC, ASR and RA on the test set
    tr = config["train"]
    if rule in ("train_clean", "train_backdoor"):
        w.train(arch, s.n_train, tr["epochs"])
        w.infer(arch, 2 * s.n_test * tr["epochs"] / max(1, tr.get("eval_every", 1)) + evaluate)
        w.ckpt(arch, tr["epochs"])
    elif rule == "attack_resource":
        _attack_resource_work(w, arch, config["attacks"][wc["attack"]], s)
    elif rule == "defend":
        _defense_work(w, arch, config["defenses"][wc["defense"]], n_clean, s.n_train, s.classes)
        w.infer(arch, evaluate)
    elif rule == "metrics":
        w.infer(arch, evaluate + s.n_test, fp32=True)  # reported metrics run in fp32
    elif rule == "bec":
        b = config["bec"]
        w.infer(arch, 3 * b["n_images"] * (2 + len(b["fractions"])), fp32=True)
    elif rule == "reactivate":
        r = config["reactivation"]
        w.train(arch, r["n_images"], r["epochs"], passes=r.get("steps", 1))
        w.infer(arch, 2 * s.n_test)
    elif rule == "budget":  # a reactivate job's work at every budget of the list
        r = config["reactivation"]
        points = sum(len(v or []) for v in (r.get("budgets") or {}).values())
        w.train(arch, r["n_images"], r["epochs"], passes=r.get("steps", 1) * points)
        w.infer(arch, 2 * s.n_test * points)
    elif rule == "observe":
        o = config["observation"]
        w.train(arch, o["n_images"], passes=o.get("steps", 7) + 1)
    elif rule == "query":  # two searches (trigger and gUAA), each up to budget queries of batch_size images
        q = config["query"]
        n = 2 * q["budget"] * q["batch_size"]
        if fast_query and q.get("precision", "auto") != "fp32":
            cal = min(q.get("calibration", 50), q["budget"])  # calibration queries are scored in both precisions
            w.infer(arch, n)
            w.infer(arch, 2 * cal * q["batch_size"] + 2 * s.n_test, fp32=True)
        else:
            w.infer(arch, n + 2 * s.n_test, fp32=True)
    elif rule == "evidence":
        e = config["evidence"]
        w.infer(arch, e["n_images"] * (2 + 2 * len(e["noise"])), fp32=True)
    elif rule in ("train_surrogate", "defend_surrogate", "transfer_optimise", "transfer_evaluate"):
        t = config["transfer"]
        if rule == "transfer_evaluate":
            w.infer(arch, 2 * s.n_test * len(t["surrogates"]))
        elif rule == "transfer_optimise":
            sur = t["surrogates"][wc["surrogate"]]
            w.train(sur["arch"], t["n_images"], t["epochs"], passes=len(sur["defenses"]))  # one step per surrogate
        else:
            a_arch = wc.get("arch") or arch
            n_att = s.n_train  # the attacker's own share of the training set (blackbox.smk): counted in full
            if rule == "train_surrogate":
                w.train(a_arch, n_att, tr["epochs"])
                w.ckpt(a_arch, tr["epochs"])
            else:
                _defense_work(w, a_arch, t["defenses"][wc["sdefense"]], n_clean, n_att, s.classes)
    return w


def _checkpoint_every(config: dict) -> int:
    """Epochs between resume checkpoints: params.yaml ``runtime.checkpoint_every_epochs`` (the training loop writes
    every N epochs or M minutes, whichever comes first; the minutes bound matters only for epochs longer than
    it, which the plan ignores). Default 10, as ``dormant.runtime.CHECKPOINT_EVERY_EPOCHS``."""
    runtime = config.get("runtime") or {}
    return max(1, int(runtime.get("checkpoint_every_epochs", 10) or 1))


def busy_seconds(rule: str, wc: dict, config: dict, rates: dict | None = None, *, cadence: bool = True,
                 fast_query: bool | None = None) -> dict:
    """Projected GPU seconds of one job: ``compute`` and ``checkpoint`` (synchronous writes while the GPU waits),
    with the config's checkpoint cadence (``cadence=True``) or every epoch; ``fast_query`` (default: as
    ``cadence``, i.e. the layout after issue 16) as in :func:`job_work`."""
    rates = rates or load_rates()
    g, s = rates["gpu"], sizes(config)
    ref = rates["macs"][g["reference_arch"]]
    w = job_work(rule, wc, config, fast_query=cadence if fast_query is None else fast_query)
    compute = 0.0
    for table, slow in ((w.bf16, 1.0), (w.fp32, g["fp32_slowdown"])):
        for arch, passes in table.items():
            compute += passes * s.pixels * rates["macs"][arch] / ref / g["infer_img_per_s"] * slow
    every = _checkpoint_every(config) if cadence else 1
    ck = rates["checkpoint"]
    ckpt = sum(math.ceil(n / every) * 8 * ck["params"][a] / 1e9 / ck["write_gb_per_s"]
               for a, n in w.checkpoints.items())
    return {"compute": compute, "checkpoint": ckpt}


def startup_seconds(rates: dict | None = None, *, step: bool = True) -> float:
    """What a job holds its GPU for before it computes: the job step's workflow parse (``step``), the torch
    import, the CUDA context and the dataset load."""
    o = (rates or load_rates())["overhead"]
    return (o["snakemake_parse_s"] if step else 0.0) + o["import_s"] + o["cuda_init_s"] + o["dataset_load_s"]


# ---- resources of the rules (called by workflow/rules/*.smk) ----------------------------------------------------
def mem_mb(rule: str, config: dict, attempt: int = 1) -> int:
    """Host memory to request: the measured peak of a stage (a network stage, or a CPU one), the dataset held
    twice at this config's size, the CUDA libraries for GPU rules and, for jobs that run on a cluster node, the
    job step's own snakemake process beside it; times the headroom, doubled on a retry."""
    rates = load_rates()
    m = rates["memory"]
    s = sizes(config)
    dataset_mb = (s.n_train + s.n_test) * 3 * 32 * 32 * s.pixels / 1e6
    peak = (m["base_mb"] if rule in GPU_RULES else m["cpu_stage_mb"]) + m["dataset_copies"] * dataset_mb
    if rule in GPU_RULES:
        peak += m["cuda_host_mb"]
    if rule == "defend":
        peak += m["pbe_extra_mb"]
    if rule not in LOCAL_RULES:
        peak += rates["overhead"]["snakemake_rss_mb"]
    return int(math.ceil(peak * m["headroom"] / 100) * 100 * attempt)


def runtime_min(rule: str, wc: dict, config: dict, attempt: int = 1) -> int:
    """Minutes to request: the projected time (start-up, GPU work, checkpoints every epoch) times 3 for a GPU
    slower than the estimate's, plus 10 minutes, at least 15; doubled on a retry. CPU-only rules: 15 (30 for
    prepare_data, which may download)."""
    if rule not in GPU_RULES:
        return (30 if rule == "prepare_data" else 15) * attempt
    b = busy_seconds(rule, wc, config, cadence=False)
    est = startup_seconds() + b["compute"] + b["checkpoint"]
    return int(max(15, math.ceil(3 * est / 60) + 10) * attempt)


# ---- the plan ----------------------------------------------------------------------------------------------------
JOB_RE = re.compile(r"^\s*(local)?rule (\w+):$")
GROUP_RE = re.compile(r"Group job (\S+) \(")


@dataclass
class Job:
    rule: str
    local: bool
    wildcards: dict
    resources: dict
    group: str | None = None


def parse_dryrun(text: str) -> list[Job]:
    """The jobs of ``snakemake -n`` output: rule, local or not, wildcards, resources and group job of each
    (a group job's members are printed indented under its ``Group job <id>`` line)."""
    jobs, cur, group = [], None, None
    for line in text.splitlines():
        g = GROUP_RE.search(line)
        if g:
            group = g.group(1)
            continue
        m = JOB_RE.match(line)
        if m:
            cur = Job(m.group(2), bool(m.group(1)) or m.group(2) in LOCAL_RULES, {}, {},
                      group if line.startswith(" ") else None)
            jobs.append(cur)
            continue
        if cur is None or not line.startswith("    "):
            continue
        key, _, val = line.strip().partition(": ")
        if key in ("wildcards", "resources"):
            d = cur.wildcards if key == "wildcards" else cur.resources
            for item in val.split(", "):
                k, _, v = item.partition("=")
                d[k] = int(v) if v.isdigit() else v
    return jobs


def dag_jobs(configfiles: list[str], profile: str | None = None, snakemake: str | None = None) -> list[Job]:
    """Every job of the config's full plan (``--forceall``), as Snakemake schedules it."""
    exe = snakemake or str(Path(sys.executable).with_name("snakemake"))
    cmd = [exe, "-n", "--forceall", "--directory", str(REPO), "--snakefile", str(REPO / "Snakefile")]
    if profile:
        cmd += ["--profile", profile]
    if configfiles:
        cmd += ["--configfile", *configfiles, "--replace-workflow-config"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"error: snakemake -n failed ({' '.join(cmd)}):\n{r.stderr[-2000:]}{r.stdout[-2000:]}")
    return [j for j in parse_dryrun(r.stdout + r.stderr) if j.rule != "all"]


def read_config(configfiles: list[str]) -> dict:
    """The config as Snakemake builds it here: params.yaml, or the --configfile files merged in order, each read
    as strictly as the workflow reads it (:func:`dormant.config.read_file`: a clear error naming the file)."""
    from dormant.config import read_file

    files = configfiles or [str(REPO / "params.yaml")]
    cfg: dict = {}
    for f in files:
        _merge(cfg, read_file(f))
    return cfg


def _merge(a: dict, b: dict) -> None:
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            _merge(a[k], v)
        else:
            a[k] = v


def project(jobs: list[Job], config: dict, rates: dict | None = None, *, grouped: bool, cadence: bool) -> dict:
    """GPU-hours of a layout: ``busy`` (compute + checkpoints), ``held`` (busy plus the start-up every
    submission and process pays while it holds its GPU) and ``requested`` (the runtime each SLURM submission
    asks for, from the dry run's resources, times its GPUs), and the number of SLURM submissions."""
    rates = rates or load_rates()
    per_rule: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "compute_h": 0.0, "checkpoint_h": 0.0})
    submissions, held, requested = 0, 0.0, 0.0
    groups: dict[str, list] = defaultdict(list)
    for j in jobs:
        b = busy_seconds(j.rule, j.wildcards, config, rates, cadence=cadence) if j.rule in GPU_RULES else None
        r = per_rule[j.rule]
        r["jobs"] += 1
        if b:
            r["compute_h"] += b["compute"] / 3600
            r["checkpoint_h"] += b["checkpoint"] / 3600
        if j.local and grouped:  # before issue 16 every job, prepare_data and reports included, was submitted
            continue
        gpus = int(j.resources.get("gpu", 0) or 0) or (1 if "gpu" in str(j.resources.get("gres", "")) else 0)
        runtime = int(j.resources.get("runtime", 0) or 0)
        if grouped and j.group is not None:
            groups[j.group].append((j, b, runtime, gpus))
            continue
        submissions += 1
        if gpus and b:
            held += startup_seconds(rates) + b["compute"] + b["checkpoint"]
            requested += gpus * runtime * 60
    for members in groups.values():
        submissions += 1
        # One job step parse per group; its members' processes start side by side (their start-ups overlap) and
        # share one GPU, so their GPU work adds up. The requested runtime is Snakemake's for a group job: the
        # longest job of the first layer plus the longest of the second (evidence runs after reactivate).
        first = [m for m in members if m[0].rule not in AFTER]
        second = [m for m in members if m[0].rule in AFTER]
        layers = [layer for layer in (first, second) if any(m[1] for m in layer)]
        held += rates["overhead"]["snakemake_parse_s"] + sum(
            startup_seconds(rates, step=False) + sum(m[1]["compute"] + m[1]["checkpoint"] for m in layer if m[1])
            for layer in layers)
        gpus = max(m[3] for m in members)
        requested += gpus * 60 * (max((m[2] for m in first), default=0) + max((m[2] for m in second), default=0))
    busy = sum(r["compute_h"] + r["checkpoint_h"] for r in per_rule.values())
    return {"per_rule": dict(per_rule), "submissions": submissions, "busy_h": busy, "held_h": held / 3600,
            "requested_h": requested / 3600}


def render(config_desc: str, jobs: list[Job], before: dict, after: dict, rates: dict,
           recorded: dict | None = None) -> str:
    g = rates["gpu"]
    lines = [f"plan of {config_desc}: {len(jobs)} jobs (and the target rule `all`)",
             "",
             "| rule | jobs | GPU compute h | checkpoint h (before -> after) |",
             "|---|---|---|---|"]
    for rule in sorted(after["per_rule"], key=lambda r: -after["per_rule"][r]["compute_h"]):
        a, b = after["per_rule"][rule], before["per_rule"][rule]
        lines.append(f"| {rule} | {a['jobs']} | {a['compute_h']:.2f} | {b['checkpoint_h']:.2f} -> "
                     f"{a['checkpoint_h']:.2f} |")
    lines += ["",
              "| layout | SLURM submissions | GPU-h busy | GPU-h held | GPU-h requested |",
              "|---|---|---|---|---|"]
    for name, p in (("before: one SLURM job per job, checkpoint every epoch", before),
                    ("after: local rules, grouped analysis jobs, config's checkpoint cadence", after)):
        lines.append(f"| {name} | {p['submissions']} | {p['busy_h']:.1f} | {p['held_h']:.1f} | "
                     f"{p['requested_h']:.1f} |")
    if recorded:
        lines.append(f"| recorded dry run at commit {recorded['commit']} (rules before issue 16) | "
                     f"{recorded['submissions']} | - | - | {recorded['requested_h']:.1f} |")
    f_held = before["held_h"] / after["held_h"] if after["held_h"] else float("nan")
    f_req = before["requested_h"] / after["requested_h"] if after["requested_h"] else float("nan")
    lines += ["",
              f"held GPU-hours: {f_held:.2f}x fewer; submissions: {before['submissions']} -> {after['submissions']}; "
              f"requested GPU-hours (this dry run's runtimes): {f_req:.2f}x fewer"
              + (f"; against the recorded dry run: {recorded['requested_h'] / after['requested_h']:.1f}x fewer"
                 if recorded and after["requested_h"] else ""),
              "",
              "GPU figures are estimates, not measurements: " + " ".join(g["source"].split()),
              "Start-up: " + " ".join(rates["overhead"]["source"].split()),
              "Checkpoints: " + " ".join(rates["checkpoint"]["source"].split())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dormant plan", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configfile", nargs="+", default=[], metavar="FILE",
                   help="config file(s), as for snakemake (replacing params.yaml); default: params.yaml")
    p.add_argument("--profile", default="profiles/slurm",
                   help="Snakemake profile whose resources the dry run shows (default: profiles/slurm)")
    p.add_argument("--rates", default=None, help=f"rates file (default: {RATES_FILE.name} of the package)")
    p.add_argument("--recorded", default=None, metavar="FILE",
                   help="a recorded dry-run summary to compare with (docs/benchmarks/plan-paper-before.json)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args(argv)
    rates = load_rates(args.rates)
    config = read_config(args.configfile)
    jobs = dag_jobs(args.configfile, args.profile or None)
    before = project(jobs, config, rates, grouped=False, cadence=False)
    after = project(jobs, config, rates, grouped=True, cadence=True)
    recorded = None
    if args.recorded:
        import json

        recorded = json.loads(Path(args.recorded).read_text(encoding="utf-8"))
    print(render(" + ".join(args.configfile) or "params.yaml", jobs, before, after, rates, recorded))
    if args.json:
        import json

        Path(args.json).write_text(json.dumps({"jobs": len(jobs), "before": before, "after": after}, indent=2,
                                              sort_keys=True) + "\n")
    return 0
