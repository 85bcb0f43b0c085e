"""Print the attack x defense grid of a finished run: C-ACC / ASR / RA / DER of every defended model next
to the backdoored one, NC's flagged labels, the level each pruning defense chose on its held-out split, and
the wall time of each defense job (Snakemake's benchmark files).

    make grid      # or: snakemake --cores 2 --configfile config/grid.yaml -- results/grid/report/defense_grid.csv
    python workflow/scripts/benchmark_defenses.py [--name grid]

Reads results/<name>/report/defense_grid.csv (rule report_defenses) and benchmarks/<name>/defend_*.tsv;
computes nothing itself.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd


def fmt(v, digits=1):
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="grid", help="run name (results/<name>/)")
    ap.add_argument("--root", default=".", help="repository root")
    args = ap.parse_args(argv)
    root = Path(args.root)
    csv = root / "results" / args.name / "report" / "defense_grid.csv"
    if not csv.exists():
        raise SystemExit(f"no {csv}: build it first (`make grid`)")
    df = pd.read_csv(csv, keep_default_na=False, na_values=[""])
    seconds = []
    for _, r in df.iterrows():
        tsv = root / "benchmarks" / args.name / f"defend_{r['attack']}_{r['defense']}.tsv"
        seconds.append(float(pd.read_csv(tsv, sep="\t")["s"].iloc[-1]) if tsv.exists() else float("nan"))
    df["seconds"] = seconds
    cols = ["attack", "defense", "c_acc", "asr", "ra", "der", "flagged", "decision", "seconds"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for _, r in df.iterrows():
        print("| " + " | ".join(fmt(r[c], 0 if c == "seconds" else 1) if not isinstance(r[c], str) else r[c]
                                for c in cols) + " |")
    d = df[df.defense != "backdoor"]
    for a, g in d.groupby("attack", sort=False):
        print(f"{a}: ASR below 20% after {int((g['asr'] < 20).sum())} of {len(g)} defenses; "
              f"C-ACC within 5 points of the backdoored model after "
              f"{int((g['c_acc'] >= df[(df.attack == a) & (df.defense == 'backdoor')]['c_acc'].iloc[0] - 5).sum())}")
    print(f"defense jobs: {int(d['seconds'].notna().sum())}, {d['seconds'].sum():.0f} s in all, "
          f"at most {d['seconds'].max():.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
