"""The attack zoo benchmark: per attack, the clean accuracy and ASR of its backdoored model next to the clean
model and to BackdoorBench's numbers, what its resource stage measured, its job times, and the trigger
gallery (clean image, poisoned image, amplified difference).

    make attacks   # = python workflow/scripts/benchmark_attacks.py --run
    python workflow/scripts/benchmark_attacks.py [--name attacks] [--config config/attacks.yaml]

``--run`` first builds the backdoored models and their metrics with Snakemake (config/attacks.yaml merged
over params.yaml); without it, only reads the finished run (and measures the clean model under each
trigger). Writes results/<name>/report/attacks.{csv,md}
and triggers.png and prints the table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

# BackdoorBench leaderboard, CIFAR-10, PreAct-ResNet18, 10% poisoning: C-ACC / ASR of the backdoored model
# (Wu et al., BackdoorBench, NeurIPS 2022 Datasets and Benchmarks; SIG is a v1-era value).
BACKDOORBENCH = {"badnets": (91.32, 95.03), "blended": (93.47, 99.92), "sig": (84.48, 98.27), "lf": (93.19, 99.28),
                 "ssba": (92.88, 97.86), "wanet": (91.25, 89.73), "input_aware": (90.67, 98.26),
                 "trojannn": (93.42, 100.00)}
# what each resource stage reports in its sidecar, shown in the table
RESOURCE_KEYS = {"lf": ["success_on_clean_model", "low_frequency_share"], "ssba": ["fixed_bits_accuracy", "psnr"],
                 "trojannn": ["activation_clean", "activation_trigger"],
                 "input_aware": ["mask_density_max", "mask_pixels"]}


def seconds(path: Path) -> float:
    return float(pd.read_csv(path, sep="\t")["s"].iloc[-1]) if path.exists() else float("nan")


def metrics(path: Path) -> dict:
    return json.loads(path.read_text())["metrics"]


def table(root: Path, name: str, attacks: dict) -> pd.DataFrame:
    res, bench = root / "results" / name, root / "benchmarks" / name
    first = sorted(attacks)[0]
    clean = metrics(res / "analysis" / first / "clean" / "metrics.json")
    rows = []
    for a in attacks:
        m = metrics(res / "analysis" / a / "backdoor" / "metrics.json")
        extra = {}
        rj = res / "attacks" / a / "resource.json"
        if rj.exists():
            r = metrics(rj)
            extra = "; ".join(f"{k} {r[k]:.3g}" if isinstance(r[k], float) else f"{k} {r[k]}"
                              for k in RESOURCE_KEYS.get(attacks[a]["type"], []) if k in r)
        bb = BACKDOORBENCH.get(attacks[a]["type"], (float("nan"), float("nan")))
        rows.append({"attack": a, "type": attacks[a]["type"], "c_acc": m["c_acc"], "asr": m["asr"], "ra": m["ra"],
                     "clean_c_acc": clean["c_acc"],
                     "acc_drop": clean["c_acc"] - m["c_acc"], "bb_c_acc": bb[0], "bb_asr": bb[1],
                     "resource_s": seconds(bench / f"attack_resource_{a}.tsv"),
                     "train_s": seconds(bench / f"train_backdoor_{a}.tsv"), "resource": extra or ""})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="attacks", help="run name (results/<name>/)")
    ap.add_argument("--config", default="config/attacks.yaml", help="the overlay that defines the run")
    ap.add_argument("--root", default=".", help="repository root")
    ap.add_argument("--run", action="store_true", help="build the models and metrics first (Snakemake)")
    ap.add_argument("--cores", default="2")
    ap.add_argument("--snakemake-args", nargs="*", default=[], help="more Snakemake options for --run")
    args = ap.parse_args(argv)
    root = Path(args.root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    attacks = {**params["attacks"], **yaml.safe_load((root / args.config).read_text()).get("attacks", {})}
    res = f"results/{args.name}/analysis"
    targets = [f"{res}/{a}/backdoor/metrics.json" for a in attacks] + [f"{res}/{sorted(attacks)[0]}/clean/metrics.json"]
    if args.run:
        cmd = [str(Path(sys.executable).parent / "snakemake"), "--cores", args.cores, "--rerun-incomplete",
               *args.snakemake_args, "--configfile", args.config, "--", *targets]
        subprocess.run(cmd, cwd=root, check=True)
    missing = [t for t in targets if not (root / t).exists()]
    if missing:
        raise SystemExit(f"missing {missing[0]} (and {len(missing) - 1} more): run with --run first")

    sys.path.insert(0, str(root / "workflow" / "lib"))
    from dormant.analysis.metrics import evaluate
    from dormant.attacks import load_attack
    from dormant.data.imageset import load_dataset
    from dormant.nets.checkpoint import load_model
    from dormant.report import table as report
    from dormant.report.latex import write_latex

    df = table(root, args.name, attacks)
    data = load_dataset(root / "results" / args.name / "data" / "dataset.safetensors")
    triggers = {a: load_attack(root / "results" / args.name / "models" / a / "backdoor" / "trigger.safetensors")
                for a in attacks}
    clean = load_model(root / "results" / args.name / "models" / "clean" / "model.safetensors")
    # the clean model under each trigger: how often the trigger alone makes it say "target"
    df["clean_asr"] = [evaluate(clean, data["test"], triggers[a])["asr"] for a in df.attack]
    out = root / "results" / args.name / "report"
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "attacks.csv", index=False, float_format="%.2f")
    cols = ["attack", "c_acc", "asr", "ra", "clean_c_acc", "clean_asr", "bb_c_acc", "bb_asr", "resource_s", "train_s",
            "resource"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(f"{r[c]:.0f}" if c.endswith("_s") else f"{r[c]:.1f}"
                                        if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    (out / "attacks.md").write_text("\n".join(lines) + "\n")
    write_latex(df[cols], out / "attacks.tex", label="tab:attacks", best={}, digits=1,
                caption="The attack zoo: C-ACC, ASR and RA of each backdoored model, the clean model under each "
                        "trigger, and the cost of training it (seconds)")
    print("\n".join(lines))
    report.figure_trigger_gallery(data["test"], triggers, out / "triggers.png", n=2, seed=params["seed"])
    ok = df[(df.asr >= 80) & (df.acc_drop <= 5)]
    print(f"{len(ok)} of {len(df)} attacks implant a backdoor (ASR >= 80%, C-ACC within 5 points of the clean "
          f"model {df.clean_c_acc.iloc[0]:.1f}%): {', '.join(ok.attack)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
