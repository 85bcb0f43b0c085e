"""Stage of ``workflow/rules/seeds.smk``: the tables and figures over the seeds of a ``seeds: [...]`` run."""

from __future__ import annotations

from dormant.stages import stage


@stage(sections=("seeds",), outputs=("table_seeds_csv", "table_csv", "table_md", "blackbox_seeds_csv",
                                     "blackbox_csv", "fig_asr", "fig_bec"))
def report_seeds(params: dict, *, tables: dict, blackbox: dict, table_seeds_csv: str, table_csv: str,
                 table_md: str, blackbox_seeds_csv: str, blackbox_csv: str, fig_asr: str, fig_bec: str) -> None:
    """Writes per-seed and aggregated (mean, std, n over seeds) main and black-box tables, and their figures.

    ``tables`` / ``blackbox``: seed -> that seed's report/table.csv / report/blackbox.csv."""
    from dormant.report import seeds as rep

    if sorted(int(s) for s in tables) != sorted(params["seeds"]):
        raise ValueError(f"tables of seeds {sorted(tables)} do not match params seeds {params['seeds']}")
    agg = rep.write_seed_tables(rep.read_tables(tables), table_seeds_csv, table_csv, table_md,
                                caption="the main table's metrics")
    rep.write_seed_tables(rep.read_tables(blackbox), blackbox_seeds_csv, blackbox_csv,
                          caption="black-box re-activation")
    rep.figure_asr(agg, fig_asr)
    rep.figure_bec_vs_asr(agg, fig_bec)
