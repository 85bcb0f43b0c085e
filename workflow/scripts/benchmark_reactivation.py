"""Print the re-activation benchmark of a finished run: per defended model the white-box, query-based and
transfer-based re-activated ASR, the queries spent and the queries needed to reach 90% of the white-box
ASR, plus the wall time of the query and transfer jobs (from Snakemake's benchmark files).

    python workflow/scripts/benchmark_reactivation.py [--name default]

Reads results/<name>/report/blackbox.csv (written by `snakemake`, rule report_blackbox) and
benchmarks/<name>/*.tsv; computes nothing itself.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd


def fmt(v, digits=1):
    if isinstance(v, float) and math.isnan(v):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="default", help="run name (results/<name>/)")
    ap.add_argument("--root", default=".", help="repository root")
    args = ap.parse_args(argv)
    root = Path(args.root)
    csv = root / "results" / args.name / "report" / "blackbox.csv"
    if not csv.exists():
        raise SystemExit(f"no {csv}: run the workflow first (`snakemake --cores all`)")
    df = pd.read_csv(csv)
    transfer = [c for c in df.columns if c.startswith("asr_transfer_")]
    cols = ["attack", "model", "asr_trigger", "asr_whitebox", "asr_query", "queries", "queries_to_90",
            "asr_query_guaa", *transfer]
    print("| " + " | ".join(c.removeprefix("asr_") for c in cols) + " |")
    print("|" + "---|" * len(cols))
    for _, r in df[cols].iterrows():
        print("| " + " | ".join(fmt(r[c], 0 if c.startswith("queries") else 1) for c in cols) + " |")
    defended = df[~df["model"].isin(["clean", "backdoor"])]
    print()
    for c in ["asr_trigger", "asr_whitebox", "asr_query", "asr_query_guaa", *transfer]:
        print(f"mean over {len(defended)} defended models, {c}: {defended[c].mean():.1f}")
    reached = defended["queries_to_90"].dropna()
    print(f"queries to 90% of white-box ASR: reached for {len(reached)}/{len(defended)} defended models; "
          f"median {reached.median() if len(reached) else float('nan'):.0f}")
    bench = root / "benchmarks" / args.name
    for rule in ("reactivate", "query", "transfer_optimise", "transfer_evaluate", "evidence", "train_surrogate",
                 "defend_surrogate"):
        files = sorted(bench.glob(f"{rule}_*.tsv"))
        if files:
            secs = [float(pd.read_csv(f, sep="\t")["s"].iloc[-1]) for f in files]
            print(f"{rule}: {len(files)} jobs, {sum(secs):.0f} s in all, {max(secs):.0f} s the longest")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
