"""Stages of ``workflow/rules/report.smk``: the paper-style tables and figures of a run."""

from __future__ import annotations

from dormant.stages import stage


@stage(sections=("report", "seed"), outputs=("table_csv", "table_md", "table_json", "fig_bec", "fig_reactivation",
                                             "fig_triggers", "observation_csv", "fig_observation", "rounds_csv",
                                             "fig_rounds"))
def report(params: dict, *, rows: list[dict], dataset: str, triggers: dict, table_csv: str, table_md: str,
           table_json: str, fig_bec: str, fig_reactivation: str, fig_triggers: str,
           histories: dict | None = None, observations: dict | None = None, observation_csv: str | None = None,
           fig_observation: str | None = None, defenses: dict | None = None, rounds_csv: str | None = None,
           fig_rounds: str | None = None) -> None:
    """Writes the main table, BEC-vs-ASR and re-activation figures, trigger gallery, histories, observation, rounds.

    ``histories``: CSV path -> model sidecar; ``observations``: JSON path -> attack/model; ``defenses``: model
    sidecar -> attack/defense (per-round records of progressive defenses such as PBE)."""
    from dormant.attacks import load_attack
    from dormant.data.imageset import load_dataset
    from dormant.report import table as rep

    df = rep.build_table(rows, params)
    rep.write_table(df, table_csv, table_md, table_json, notes=rep.method_variants(rows, defenses, params))
    if observations is not None and observation_csv:
        obs = rep.observation_table(observations)
        rep.write_csv_tex(obs[rep.OBSERVATION_COLUMNS], observation_csv, caption=rep.OBSERVATION_CAPTION, best={})
        if fig_observation:
            rep.figure_observation(obs, fig_observation)
    if defenses is not None and rounds_csv:
        rounds = rep.rounds_table(defenses)
        rep.write_csv_tex(rounds, rounds_csv, caption=rep.ROUNDS_CAPTION, best={}, group="attack")
        if fig_rounds:
            rep.figure_rounds(rounds, fig_rounds)
    for csv_path, model_json in (histories or {}).items():
        rep.write_history(model_json, csv_path)
    rep.figure_bec_vs_asr(df, fig_bec)
    rep.figure_reactivation(df, fig_reactivation)
    sets = load_dataset(dataset)
    rep.figure_trigger_gallery(sets["test"], {k: load_attack(v) for k, v in triggers.items()}, fig_triggers,
                               n=params["report"]["gallery_images"], seed=params["seed"])


@stage(sections=("surrogates", "model_types", "models"),
       outputs=("summary_csv", "checkpoints_csv", "transfer_csv", "cka_csv", "noise_csv", "fig_query",
                "fig_transfer", "fig_cka", "fig_checkpoints", "fig_noise"))
def report_blackbox(params: dict, *, rows: list, summary_csv: str, checkpoints_csv: str, transfer_csv: str,
                    cka_csv: str, noise_csv: str, fig_query: str, fig_transfer: str, fig_cka: str,
                    fig_checkpoints: str, fig_noise: str) -> None:
    """Writes the tables and figures of the black-box attacks and the evidence analyses.

    ``rows``: per (attack, model) the paths of its reactivation/query/transfer/evidence JSONs."""
    from dormant.report.blackbox import write_all

    write_all(rows, params["surrogates"], params["model_types"], params["models"],
              {"summary": summary_csv, "checkpoints": checkpoints_csv, "transfer": transfer_csv, "cka": cka_csv,
               "noise": noise_csv, "fig_query": fig_query, "fig_transfer": fig_transfer, "fig_cka": fig_cka,
               "fig_checkpoints": fig_checkpoints, "fig_noise": fig_noise})


@stage(sections=(), outputs=("csv", "md", "fig"))
def report_defenses(params: dict, *, rows: list, csv: str, md: str, fig: str) -> None:
    """Writes the attack x defense grid table and figure.

    ``rows``: per (attack, defense) its metrics JSON and the defended model's sidecar."""
    from dormant.report.defenses import write_grid

    write_grid(rows, csv, md, fig)


@stage(sections=(), outputs=("csv", "md", "fig"))
def report_budget(params: dict, *, rows: list, csv: str, md: str, fig: str) -> None:
    """Writes the budget ablation: re-activated and gUAA ASR against the budget eps, per defense and norm.

    ``rows``: per (attack, defense) the path of its budget CSV."""
    from dormant.report.budget import write_budget

    write_budget(rows, csv, md, fig)


@stage(sections=("report", "data", "model"), outputs=("csv", "md", "tex", "png", "pdf", "html"))
def leaderboard(params: dict, *, rows: list, csv: str, md: str, tex: str, png: str, html: str) -> None:
    """Writes the dormancy leaderboard: per attack x defense, C-ACC, ASR, BEC per channel fraction, the three
    re-activated ASRs, gUAA and the queries to 90 percent of the white-box ASR; table, figure and a self-contained
    page.

    ``rows``: per (attack, defense) the paths of its metrics/bec/reactivation/query/transfer JSONs. The PDF of the
    figure is written next to ``png`` (same stem), as by every report stage."""
    from dormant.report.leaderboard import build_leaderboard, write_all

    write_all(build_leaderboard(rows, params), {"csv": csv, "md": md, "tex": tex, "png": png, "html": html})
