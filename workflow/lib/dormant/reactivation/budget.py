"""Re-activated ASR as the perturbation budget varies (docs/methods.md section 7.6; the budget ablation of
Zhu, Liang & Wu 2024, arXiv 2405.16134): for one defended model and each (norm, eps) of
``reactivation.budgets``, the white-box re-activation delta and the gUAA delta are optimised at that budget
with the re-activation attack's own optimiser and settings (:func:`dormant.reactivation.whitebox.run_reactivation`,
only norm and eps replaced), and their ASR on the whole non-target test set is recorded.

A curve that stays near gUAA at every budget says the defense removed the backdoor; re-activation rising
well above gUAA at small budgets says it is dormant. At eps = 0 both deltas are zero, so the curve starts at
the model's own ASR (``asr_trigger``) and gUAA at its clean-image rate of the target class (``asr_clean``).
"""

from __future__ import annotations

from dormant.reactivation.whitebox import run_reactivation

NORMS = ("linf", "l2")
COLUMNS = ["norm", "eps", "asr_reactivated", "asr_guaa", "asr_trigger", "asr_clean", "size_reactivated",
           "size_guaa"]


def budget_points(budgets: dict | None) -> list[tuple[str, float]]:
    """The (norm, eps) pairs of ``reactivation.budgets`` ({linf: [...], l2: [...]}), L-inf first, eps ascending."""
    budgets = budgets or {}
    unknown = sorted(set(budgets) - set(NORMS))
    if unknown:
        raise ValueError(f"reactivation.budgets: unknown norm(s) {unknown} (linf, l2)")
    return [(norm, float(eps)) for norm in NORMS for eps in sorted(budgets.get(norm) or [])]


def budget_curve(model, train, test, attack, cfg: dict, budgets: dict | None, seed: int,
                 keep_deltas: bool = False):
    """One row per (norm, eps): re-activated and gUAA ASR (percent), the model's ASR without delta and its
    clean-image target rate, and each delta's size in its own norm. ``cfg``: the ``reactivation`` section
    (lr, epochs, steps, batch_size, n_images; its norm and eps are replaced by each budget's).

    Returns the rows, and with ``keep_deltas`` also {(norm, eps): {"delta_reactivated", "delta_guaa"}}."""
    rows, deltas = [], {}
    for norm, eps in budget_points(budgets):
        res, d = run_reactivation(model, train, test, attack, {**cfg, "norm": norm, "eps": eps}, seed)
        sizes = res["delta_norms"]
        rows.append({"norm": norm, "eps": eps, "asr_reactivated": res["asr_reactivated"], "asr_guaa": res["asr_guaa"],
                     "asr_trigger": res["asr_trigger"], "asr_clean": res["asr_clean"],
                     "size_reactivated": sizes["reactivated"][norm], "size_guaa": sizes["guaa"][norm]})
        if keep_deltas:
            deltas[(norm, eps)] = d
    return (rows, deltas) if keep_deltas else rows
