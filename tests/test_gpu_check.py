"""workflow/scripts/gpu_check.py: its budget scaling and its report (the whole --smoke run is in .ci/run)."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "workflow/scripts/gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_smoke_budget_scales_epochs_and_iterations_but_not_pgd_steps():
    nc = {"type": "nc", "epochs_reverse": 50, "epochs": 20, "steps": 7}
    assert gpu_check.scaled(nc, 0.02) == {"type": "nc", "epochs_reverse": 1, "epochs": 1, "steps": 7}
    anp = gpu_check.scaled({"type": "anp", "iterations": 2000}, 0.02)
    assert anp["iterations"] == 40
    troj = gpu_check.scaled({"type": "trojannn", "steps": 1000, "n_images": 2048, "batch_size": 128}, 0.02)
    assert troj["steps"] == 20 and troj["n_images"] == 128  # at least one batch


def test_report_is_written_after_every_phase(tmp_path):
    r = gpu_check.Report(tmp_path / "g", "smoke")
    r.set("models", epochs=3, backdoor={"c_acc": 90.5}, expected={"backdoor": {"c_acc": 91.3}})
    d = json.loads((tmp_path / "g.json").read_text())
    assert d["phases"]["models"]["backdoor"] == {"c_acc": 90.5}
    assert "| backdoor.c_acc | 90.5 | 91.3 |" in (tmp_path / "g.md").read_text()
