"""End-to-end: the Snakemake workflow on tests/tiny.yaml (synthetic data, toy model), every artifact checked."""

import json
import os
import re

import pandas as pd
import pytest
import torch
import yaml

from .workflow_helpers import REPO, copy_workflow, job_blocks, job_counts, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.slow
TINY_DEFENSES = sorted(yaml.safe_load((REPO / "tests" / "tiny.yaml").read_text())["defenses"])
TINY_MODELS = ["clean", "backdoor", *TINY_DEFENSES]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, repo):
    wd = copy_workflow(tmp_path_factory.mktemp("wf"))
    snakemake(wd)
    return wd


def test_every_artifact_exists_with_sidecar(workdir):
    r = workdir / "results" / "tiny"
    cfg = yaml.safe_load((workdir / "tiny.yaml").read_text())
    for rel in ["data/dataset.safetensors", "data/dataset.json", "data/clean_subset.json",
                "models/clean/model.safetensors", "models/clean/model.json"]:
        assert (r / rel).is_file(), rel
    for a in cfg["attacks"]:
        assert (r / f"attacks/{a}/trigger.safetensors").is_file()
        trained = json.loads((r / f"models/{a}/backdoor/trigger.json").read_text())
        assert trained["metrics"]["learned_in_training"] is False
        for m in ["backdoor", *TINY_DEFENSES]:
            side = json.loads((r / f"models/{a}/{m}/model.json").read_text())
            assert side["seed"] == 0 and side["code_version"]["source_sha256"] and "config" in side
        for m in TINY_MODELS:
            for f in ["metrics.json", "bec.json", "reactivation.json", "delta.safetensors"]:
                assert (r / f"analysis/{a}/{m}/{f}").is_file(), (a, m, f)
        for m in TINY_DEFENSES:  # the budget ablation: one CSV per budget point, and its sidecar
            assert len(pd.read_csv(r / f"analysis/{a}/{m}/budget.csv")) == 2, (a, m)
            assert json.loads((r / f"analysis/{a}/{m}/budget.json").read_text())["metrics"]["points"] == 2
    subset = json.loads((r / "data/clean_subset.json").read_text())
    assert len(subset["indices"]) == round(0.2 * 50) * 4
    metrics = json.loads((r / "report/metrics.json").read_text())
    assert set(metrics) == {"badnets", "blended"} and metrics["badnets"]["backdoor"]["der"] == 50
    for f in ["table.csv", "table.md", "bec_vs_asr.png", "reactivation.png", "triggers.png", "budget.csv", "budget.md",
              "budget.png"]:
        p = r / "report" / f
        assert p.is_file() and p.stat().st_size > 100, f
    assert (r / "report/bec_vs_asr.png").read_bytes()[:4] == b"\x89PNG"
    # for the paper: every table of the report also as LaTeX, every figure also as PDF (tests/test_report_paper.py)
    rep = r / "report"
    assert sorted(p.stem for p in rep.glob("*.tex")) == sorted(p.stem for p in rep.glob("*.csv"))
    assert sorted(p.stem for p in rep.glob("*.pdf")) == sorted(p.stem for p in rep.glob("*.png"))
    assert {"table", "blackbox", "defense_grid"} <= {p.stem for p in rep.glob("*.tex")}
    assert "\\toprule" in (rep / "table.tex").read_text() and (rep / "query.pdf").read_bytes()[:5] == b"%PDF-"
    assert (workdir / "logs/tiny/train_clean.log").is_file()
    assert (workdir / "benchmarks/tiny/train_clean.tsv").is_file()


def test_job_logs_show_heartbeat_lines(workdir):
    """Long loops write progress lines to their job logs (stderr is a file there, so tqdm is silent)."""
    logs = workdir / "logs/tiny"
    line = r"\[heartbeat\] {} (\d+)/(\d+) \(\d+\.\d%\) \S+ {}/s elapsed \d+:\d\d:\d\d (eta \d+:\d\d:\d\d|done)"
    cases = {  # log -> (label, unit, a field every line of it shows)
        "train_clean": ("clean", "img", "loss="), "train_backdoor_badnets": ("backdoor", "img", "loss="),
        "defend_badnets_ft": ("ft", "img", "loss="), "defend_badnets_nc": ("nc-reverse", "img", "loss="),
        "defend_badnets_pbe": ("pbe", "round", "score_mean="),
        "reactivate_badnets_backdoor": ("RA", "img", "loss="),
        "query_badnets_backdoor": (re.escape("QRA+gUAA"), "query", "asr="),
        "transfer_optimise_badnets_same_arch": ("TRA-mom", "img", "loss="),
    }
    for name, (label, unit, field) in cases.items():
        text = (logs / f"{name}.log").read_text()
        found = [(m, ln) for ln in text.splitlines() if (m := re.match(line.format(label, unit), ln))]
        assert found, (name, text[-2000:])
        assert any(" eta " in ln for _, ln in found), name
        assert all(field in ln for _, ln in found), (name, found[0][1])
        done = [int(m.group(1)) for m, _ in found]
        assert done == sorted(done) and int(found[0][0].group(2)) >= done[-1] > 0, (name, done)
        assert " done" in found[-1][1], (name, found[-1][1])  # the final line


def test_table_rows_and_invariants(workdir):
    df = pd.read_csv(workdir / "results/tiny/report/table.csv")
    assert len(df) == 2 * len(TINY_MODELS) and set(df["attack"]) == {"badnets", "blended"}
    assert set(df["model"]) == set(TINY_MODELS)
    assert {"c_acc", "asr", "ra", "der", "bec", "bec_5", "bec_20", "bec_minmax", "asr_reactivated",
            "asr_guaa"} <= set(df.columns)
    bd = df[df.model == "backdoor"]
    assert (bd["bec"] - 1).abs().max() < 1e-6 and (bd["der"] == 50).all()
    assert df[df.model == "clean"]["bec"].abs().max() < 1e-9
    assert df[df.model == "clean"]["der"].isna().all()
    assert df[["c_acc", "asr", "ra", "asr_reactivated", "asr_guaa"]].stack().between(0, 100).all()
    md = (workdir / "results/tiny/report/table.md").read_text()
    table, _, notes = md.partition("\n\nMethod variants:\n\n")
    assert table.count("\n") == 1 + 2 * len(TINY_MODELS) and "| badnets | backdoor |" in md
    assert "- BEC: floor of q x C channels" in notes and "transfer columns: the 'mom' variant" in notes
    # min-max BEC over each attack's clean model and defenses: the lowest is 0 and the highest 1 by construction;
    # the backdoored row has none
    mm = df[df.model.isin(["clean", *TINY_DEFENSES])].groupby("attack")["bec_minmax"].agg(["min", "max"])
    assert (mm["min"].abs() < 1e-9).all() and ((mm["max"] - 1).abs() < 1e-9).all()
    assert df[df.model == "backdoor"]["bec_minmax"].isna().all()


def test_defense_grid_table_shows_each_defense_and_what_nc_flagged(workdir):
    df = pd.read_csv(workdir / "results/tiny/report/defense_grid.csv", keep_default_na=False)
    assert len(df) == 2 * (1 + len(TINY_DEFENSES))
    for a in ("badnets", "blended"):
        rows = df[df.attack == a]
        assert list(rows["defense"])[0] == "backdoor" and set(rows["defense"]) == {"backdoor", *TINY_DEFENSES}
        metrics = json.loads((workdir / f"results/tiny/analysis/{a}/nc/metrics.json").read_text())["metrics"]
        nc = rows[rows.defense == "nc"].iloc[0]
        assert float(nc["asr"]) == pytest.approx(metrics["asr"], abs=1e-4)
        side = json.loads((workdir / f"results/tiny/models/{a}/nc/model.json").read_text())
        assert nc["flagged"] == (" ".join(map(str, side["flagged"])) or "none")
        assert str(nc["changed"]) == str(side["changed"]) and str(side["changed"]) == str(bool(side["flagged"]))
        assert str(rows[rows.defense == "ft"].iloc[0]["changed"]) == "True"
    assert "| badnets | nc | nc |" in (workdir / "results/tiny/report/defense_grid.md").read_text()
    assert (workdir / "results/tiny/report/defense_grid.png").read_bytes()[:4] == b"\x89PNG"


def test_training_histories_are_written_per_model(workdir):
    h = workdir / "results/tiny/report/history"
    assert sorted(p.name for p in h.iterdir()) == sorted(
        ["clean.csv"] + [f"{a}_{m}.csv" for a in ("badnets", "blended") for m in ("backdoor", *TINY_DEFENSES)])
    bd = pd.read_csv(h / "badnets_backdoor.csv")
    assert list(bd["epoch"]) == [1, 2, 3] and bd[["loss", "c_acc", "asr"]].notna().all().all()
    ft = pd.read_csv(h / "badnets_ft_short.csv")
    assert list(ft["epoch"]) == [1] and ft["c_acc"].isna().all()  # defenses see no test data


def test_html_report_is_self_contained_with_captions(workdir):
    out = workdir / "report.html"
    snakemake(workdir, "--report", str(out))
    html = out.read_text(errors="replace")
    start = re.search(r'<script id="results">\s*var results = ', html).end()
    results, _ = json.JSONDecoder().raw_decode(html[start:])
    r = "results/tiny/report"
    expected = {f"{r}/table.csv", f"{r}/bec_vs_asr.png", f"{r}/reactivation.png", f"{r}/triggers.png",
                f"{r}/history/clean.csv", f"{r}/history/blended_ft_short.csv", f"{r}/blackbox.csv",
                f"{r}/evidence_cka.png", f"{r}/evidence_noise.png",
                f"{r}/query_checkpoints.png", f"{r}/transfer.png", f"{r}/query.png", f"{r}/budget.png"}
    assert expected <= set(results), sorted(results)
    for path, entry in results.items():
        assert len(entry["caption"]) > 80, path  # every item carries its caption
        assert entry["data_uri"].startswith("data:") and ";base64," in entry["data_uri"], path  # embedded
    assert "against ASR after defense" in results[f"{r}/bec_vs_asr.png"]["caption"]


def _dry_run_with(workdir, name, edit) -> set:
    """(rule, wildcards) that a dry run plans after ``edit(config)`` of tiny.yaml; ``all`` left out."""
    cfg = yaml.safe_load((workdir / "tiny.yaml").read_text())
    edit(cfg)
    write_config(workdir / name, cfg)
    r = snakemake(workdir, "-n", configfile=name)
    return {j for j in planned_jobs(r.stdout + r.stderr) if j[0] != "all"}


TINY_SURROGATES = yaml.safe_load((REPO / "tests" / "tiny.yaml").read_text())["transfer"]["surrogates"]


def _downstream(attack, model):
    rules = ["metrics", "bec", "reactivate", "query", "transfer_evaluate"] + (["evidence"] if model != "clean" else [])
    rules += ["budget"] if model in TINY_DEFENSES else []  # the budget ablation runs on defended models
    return {(rule, f"attack={attack}, model={model}") for rule in rules}


def _transfer(attack, surrogate):
    """A surrogate set's delta changes: it is re-optimised and re-evaluated on every target model."""
    return ({("transfer_optimise", f"attack={attack}, surrogate={surrogate}")}
            | {("transfer_evaluate", f"attack={attack}, model={m}") for m in TINY_MODELS})


def test_changing_one_defense_reruns_only_that_defense(workdir):
    """A hyper-parameter of ft: ft of every attack and its analyses rerun; the other defenses, the models,
    the other analyses and the attacker's surrogates (its own defense settings) do not."""
    jobs = _dry_run_with(workdir, "edit_defense.yaml", lambda c: c["defenses"]["ft"].update(lr=0.02))
    expected = {("report", ""), ("report_blackbox", ""), ("report_defenses", ""), ("report_budget", ""),
                ("leaderboard", "")}
    for a in ("badnets", "blended"):
        expected |= {("defend", f"attack={a}, defense=ft")} | _downstream(a, "ft")
    assert jobs == expected


def test_changing_the_budget_list_reruns_only_the_budget_ablation(workdir):
    """reactivation.budgets is read by the budget jobs alone: the single-budget reactivate jobs and everything
    else stay."""
    jobs = _dry_run_with(workdir, "edit_budgets.yaml",
                         lambda c: c["reactivation"]["budgets"].update(linf=[0.05, 0.1]))
    expected = {("report_budget", "")} | {("budget", f"attack={a}, model={d}") for a in ("badnets", "blended")
                                          for d in TINY_DEFENSES}
    assert jobs == expected


def test_changing_an_attacker_defense_reruns_only_the_transfer_attack(workdir):
    """The attacker's own ft settings: its surrogates that use ft, their transfer deltas and the evaluations
    of those deltas rerun; no victim model and no other analysis does."""
    jobs = _dry_run_with(workdir, "edit_attacker.yaml", lambda c: c["transfer"]["defenses"]["ft"].update(lr=0.02))
    expected = {("report", ""), ("report_blackbox", ""), ("leaderboard", "")}
    for a in ("badnets", "blended"):
        for s, sur in TINY_SURROGATES.items():
            if "ft" in sur["defenses"]:
                expected |= {("defend_surrogate", f"attack={a}, arch={sur['arch']}, sdefense=ft")} | _transfer(a, s)
    assert jobs == expected


def test_changing_an_attack_reruns_its_whole_subtree_only(workdir):
    jobs = _dry_run_with(workdir, "edit_attack.yaml", lambda c: c["attacks"]["blended"].update(alpha=0.3))
    expected = {("trigger", "attack=blended"), ("train_backdoor", "attack=blended"), ("report", ""),
                ("report_blackbox", ""), ("report_defenses", ""), ("report_budget", ""), ("leaderboard", "")}
    expected |= {("defend", f"attack=blended, defense={d}") for d in TINY_DEFENSES}
    for s, sur in TINY_SURROGATES.items():
        if sur["arch"] != "cnn_tiny":  # the victim's architecture: the attacker reuses its backdoored model
            expected.add(("train_surrogate", f"attack=blended, arch={sur['arch']}"))
        expected |= {("defend_surrogate", f"attack=blended, arch={sur['arch']}, sdefense={d}")
                     for d in sur["defenses"]}
        expected |= _transfer("blended", s)
    expected |= {("observe", f"attack=blended, model={m}") for m in ("clean", "backdoor")}
    for m in TINY_MODELS:  # the clean model is re-measured under the new trigger
        expected |= _downstream("blended", m)
    assert jobs == expected


def _dry_run_after_editing(workdir, rel):
    """The jobs ``snakemake -n`` plans after a comment is appended to the library file ``rel`` (then restored)."""
    src = workdir / "workflow/lib/dormant" / rel
    original, st = src.read_text(), src.stat()
    try:
        src.write_text(original + "\n# an edit\n")
        r = snakemake(workdir, "-n")
        return {j for j in planned_jobs(r.stdout + r.stderr) if j[0] != "all"}
    finally:
        src.write_text(original)
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_changing_library_code_reruns_what_depends_on_it(workdir):
    """Code inputs follow the imports: editing analysis/bec.py reruns BEC, the report (its min-max column)
    and the leaderboard (BEC's columns) only."""
    jobs = _dry_run_after_editing(workdir, "analysis/bec.py")
    expected = {("report", ""), ("leaderboard", "")} | {("bec", f"attack={a}, model={m}")
                                                        for a in ("badnets", "blended") for m in TINY_MODELS}
    assert jobs == expected


def test_editing_a_defense_module_reruns_only_the_jobs_of_that_defense(workdir):
    """defenses/nc.py: the defend jobs of NC's entry and what reads their models; ft, the attacker's ft
    surrogates and every other stage stay."""
    jobs = _dry_run_after_editing(workdir, "defenses/nc.py")
    expected = {("report", ""), ("report_blackbox", ""), ("report_defenses", ""), ("report_budget", ""),
                ("leaderboard", "")}
    for a in ("badnets", "blended"):
        expected |= {("defend", f"attack={a}, defense=nc")} | _downstream(a, "nc")
    assert jobs == expected


def test_editing_a_helper_reruns_the_stages_that_import_it(workdir):
    """analysis/cka.py is imported by BEC and by the evidence analyses (and the report, through BEC's min-max)."""
    jobs = _dry_run_after_editing(workdir, "analysis/cka.py")
    # the report and the leaderboard through BEC, the black-box one via evidence
    expected = {("report", ""), ("report_blackbox", ""), ("leaderboard", "")}
    for a in ("badnets", "blended"):
        expected |= {("bec", f"attack={a}, model={m}") for m in TINY_MODELS}
        expected |= {("evidence", f"attack={a}, model={m}") for m in TINY_MODELS if m != "clean"}
    assert jobs == expected


def _trace_stages(workdir, tmp_path, *targets, configfile="tiny.yaml"):
    """Runs one job of each (rule, attack and defense modules) of a dry run under an import tracer, in a fresh
    interpreter, with its outputs redirected to ``tmp_path``; returns the rules traced and, per rule, the
    dormant modules it loaded that are not among its code inputs."""
    import concurrent.futures
    import json as _json
    import shlex
    import subprocess
    import sys

    from dormant.codedeps import module_file
    from dormant.stages import STAGES, load_all

    load_all()
    r = snakemake(workdir, "-n", "-p", "--forceall", *targets, configfile=configfile)
    chosen = {}
    for rule, text in job_blocks(r.stdout + r.stderr):
        if rule == "all":
            continue
        inputs = re.search(r"^\s+input: (.*)$", text, re.M).group(1).split(", ")
        plugins = tuple(sorted(i for i in inputs if re.search(r"dormant/(attacks|defenses)/\w+\.py$", i)))
        cmd = re.search(r"^Shell command: (.*)$", text, re.M).group(1)
        chosen.setdefault((rule, plugins), (inputs, cmd))

    def trace(key):
        rule, _ = key
        inputs, cmd = chosen[key]
        tokens = shlex.split(cmd.split(" > ")[0])[2:]
        args = dict(zip(tokens[0::2], tokens[1::2]))
        args.pop("--threads", None)
        out = tmp_path / f"{rule}_{abs(hash(key))}"
        out.mkdir()
        kwargs = {}
        for flag, value in args.items():
            name = flag[2:].replace("-", "_")
            if name in STAGES[rule].outputs or name == "checkpoint":
                value = str(out / f"{name}{os.path.splitext(value)[1]}")
            kwargs[name] = value
        stem = STAGES[rule].module.rsplit(".", 1)[1]
        p = subprocess.run([sys.executable, str(REPO / "tests" / "trace_stage.py"), stem, rule, _json.dumps(kwargs)],
                           cwd=workdir, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, (rule, p.stderr[-3000:])
        loaded = _json.loads(p.stdout.split("LOADED ", 1)[1])
        files = {"workflow/lib/dormant/" + str(module_file(m).relative_to(module_file("dormant").parent))
                 for m in loaded}
        return rule, files - set(inputs)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(trace, sorted(chosen)))
    return chosen, {rule: extra for rule, extra in results if extra}


def test_every_module_a_stage_loads_is_among_its_rule_s_code_inputs(workdir, tmp_path):
    """Each rule of the tiny config (every defense and attack type once) runs its stage under an import tracer;
    every dormant module it loads must be an input of its job (attack_resource: in the resource test below; the
    import_* stages: in tests/test_import_workflow.py)."""
    from dormant.stages import STAGES

    chosen, missing = _trace_stages(workdir, tmp_path)
    # report_seeds needs a `seeds:` run and the imports files made elsewhere, which the tiny config has not:
    # tests/test_seeds.py and tests/test_import_workflow.py trace them
    imports = {"import_clean", "import_backdoor", "import_defense"}
    assert {rule for rule, _ in chosen} == set(STAGES) - {"attack_resource", "report_seeds"} - imports
    assert len(chosen) >= len(STAGES) + 6  # every defense type of the tiny config, both attack types
    assert not missing

def test_rerun_has_nothing_to_do(workdir):
    r = snakemake(workdir, "-n")
    assert "Nothing to be done" in r.stdout + r.stderr


def test_bad_config_fails_early_and_deletes_nothing(workdir):
    before = sorted(p for p in (workdir / "results").rglob("*") if p.is_file())
    bad = yaml.safe_load((workdir / "tiny.yaml").read_text())
    bad["attacks"]["badnets"]["ratio"] = 1.5
    (workdir / "bad.yaml").write_text(yaml.safe_dump(bad))
    r = snakemake(workdir, configfile="bad.yaml", check=False)
    assert r.returncode != 0
    assert "attacks.badnets.ratio" in r.stdout + r.stderr
    after = sorted(p for p in (workdir / "results").rglob("*") if p.is_file())
    assert before == after


def test_missing_dataset_path_fails_before_any_job(workdir):
    bad = yaml.safe_load((workdir / "tiny.yaml").read_text())
    bad["data"].update(dataset="cifar10", source="path", path="/nonexistent/cifar.tar.gz")
    (workdir / "bad2.yaml").write_text(yaml.safe_dump(bad))
    r = snakemake(workdir, "-n", configfile="bad2.yaml", check=False)
    assert r.returncode != 0 and "/nonexistent/cifar.tar.gz" in r.stdout + r.stderr
    assert (workdir / "results/tiny/data/dataset.safetensors").is_file()


def test_paper_preset_replaces_params_and_expands_the_grid(repo, tmp_path):
    """The paper grid: 1 clean + 8 backdoored models, 12 defenses x 8 attacks, 14 models x 8 attacks analysed,
    the resource stages of LF, SSBA, Input-Aware and TrojanNN, PBE's observation for 2 models x 8 attacks, the
    transfer attack's surrogates (three other architectures trained per attack; 4 sets x 2 defenses x 8
    attacks defended); params.yaml's entries must not leak in (here an extra attack is added to params.yaml)."""
    copy_workflow(tmp_path)
    p = yaml.safe_load((tmp_path / "params.yaml").read_text())
    p["attacks"]["extra"] = {"type": "badnets", "ratio": 0.1, "target": 0}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    r = snakemake(tmp_path, "-n", "--replace-workflow-config", configfile="config/paper.yaml")
    c = job_counts(r.stdout + r.stderr)
    assert c["train_clean"] == 1 and c["train_backdoor"] == 8 and c["defend"] == 96, c  # 8 attacks x 12 defenses
    assert c["attack_resource"] == 4 and c["trigger"] == 8, c
    assert c["metrics"] == c["bec"] == c["reactivate"] == 112 and c["observe"] == 16 and c["report"] == 1, c
    assert c["query"] == c["transfer_evaluate"] == 112 and c["evidence"] == 104 and c["report_blackbox"] == 1, c
    assert c["report_defenses"] == 1 and c["leaderboard"] == 1, c
    assert c["budget"] == 96 and c["report_budget"] == 1, c  # the budget ablation: 8 attacks x 12 defenses
    assert c["train_surrogate"] == 24 and c["defend_surrogate"] == 64 and c["transfer_optimise"] == 32, c
    assert c["attacker_subset"] == 1, c
    assert "results/paper/models/badnets/pbe/model.safetensors" in r.stdout + r.stderr


def test_full_archive_overlay_dry_run(repo, tmp_path):
    from .conftest import SHARED_ARCHIVE

    if not SHARED_ARCHIVE.exists():
        pytest.skip(f"no archive at {SHARED_ARCHIVE}")
    overlay = yaml.safe_load((repo / "config" / "full-archive.yaml").read_text())
    overlay["data"]["path"] = str(SHARED_ARCHIVE)  # the overlay with the user's copy of the archive
    r = snakemake(repo, "-n", "--quiet", "rules", configfile=str(write_config(tmp_path / "full.yaml", overlay)))
    assert "train_backdoor" in r.stdout + r.stderr


def test_slurm_profile_asks_a_gpu_for_network_rules_only(repo):
    """Jobs that run a network go to the GPU partition with one GPU (gpu=1; the grouped analysis jobs as gres
    gpu:1, which a group job takes once); a model's analysis jobs form one group job; memory and runtime are
    the rule's (dormant.plan), right-sized. Checked on the paper preset's dry run, without a cluster."""
    r = snakemake(repo, "-n", "--profile", "profiles/slurm", "--replace-workflow-config",
                  configfile="config/paper.yaml")
    out = r.stdout + r.stderr
    resources = {}
    for rule, block in job_blocks(out):
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        if res and rule != "all":
            resources.setdefault(rule, set()).add(res.group(1))
    grouped = {"metrics", "bec", "reactivate", "observe", "transfer_evaluate", "evidence", "budget"}
    network = grouped | {"train_clean", "attack_resource", "train_backdoor", "defend", "query", "train_surrogate",
                         "defend_surrogate", "transfer_optimise"}
    assert set(resources) == network | {"prepare_data", "clean_subset", "trigger", "report", "attacker_subset",
                                        "report_blackbox", "report_defenses", "report_budget", "leaderboard"}
    for rule, values in resources.items():
        for v in values:
            gpu = "gres=gpu:1" in v and "gpu=0" in v if rule in grouped else "gpu=1" in v
            assert gpu == (rule in network), (rule, v)
            assert ("slurm_partition=gpu" in v) == (rule in network), (rule, v)
    runtimes = {int(m) for v in resources["train_backdoor"] for m in re.findall(r"runtime=(\d+)", v)}
    assert runtimes and max(runtimes) <= 120, runtimes  # 100 epochs on a GPU: not the 720 minutes asked before
    # one group job per (attack, model), each with all its analysis jobs: 8 attacks x 14 models
    headers = re.findall(r"Group job (model_\w+) ", out)
    assert len(headers) == len(set(headers)) == 112


def test_transfer_optimisation_never_reads_a_target_model(workdir):
    """The transfer delta is optimised by a job whose inputs are the attacker's own surrogates only; the
    target defended models reach the transfer attack only in the evaluation job."""
    r = snakemake(workdir, "-n", "--forceall")
    seen = {"transfer_optimise": 0, "transfer_evaluate": 0}
    for rule, b in job_blocks(r.stdout + r.stderr):
        if rule not in seen:
            continue
        inputs = re.search(r"^\s+input: (.*)$", b, re.M).group(1).split(", ")
        # models only: the trigger as trained (models/<attack>/backdoor/trigger.safetensors) is the attacker's own
        targets = [p for p in inputs if p.startswith("results/tiny/models/") and p.endswith("/model.safetensors")]
        seen[rule] += 1
        if rule == "transfer_optimise":
            assert not targets, b
            assert any(p.startswith("results/tiny/attacker/") for p in inputs), b
        else:
            attack, model = re.search(r"wildcards: attack=(\w+), model=(\w+)", b).groups()
            want = ("results/tiny/models/clean/model.safetensors" if model == "clean"
                    else f"results/tiny/models/{attack}/{model}/model.safetensors")
            assert targets == [want], b
    assert seen == {"transfer_optimise": 2 * len(TINY_SURROGATES), "transfer_evaluate": 2 * len(TINY_MODELS)}


def test_l2_overlay_switches_every_reactivation_budget(repo):
    """config/l2.yaml: the three re-activation stages run with L2 budgets, under results/default-l2."""
    r = snakemake(repo, "-n", "-p", configfile="config/l2.yaml")
    out = r.stdout + r.stderr
    blocks = job_blocks(out)
    for rule in ("reactivate", "query", "transfer_optimise"):
        shells = [b for name, b in blocks if name == rule]
        assert shells and all('\\"norm\\": \\"l2\\"' in b or '"norm": "l2"' in b for b in shells), rule
        assert not any('"linf"' in b for b in shells), rule
    assert "results/default-l2/analysis/badnets/ft/query.json" in out


def test_resource_stages_feed_the_trigger_and_training_saves_what_the_attack_learned(workdir, tmp_path):
    """LF's pattern is found against the clean model (rule attack_resource), Input-Aware's mask network is
    pretrained there; training saves Input-Aware's learned generator as the trigger later stages use."""
    cfg = yaml.safe_load((workdir / "tiny.yaml").read_text())
    cfg["name"] = "tinyzoo"
    cfg["attacks"] = {
        "lf": {"type": "lf", "ratio": 0.1, "target": 0, "epochs": 1, "n_images": 64, "batch_size": 32},
        "input_aware": {"type": "input_aware", "ratio": 0.1, "target": 0, "mask_epochs": 1, "batch_size": 32,
                        "width": 4},
    }
    write_config(workdir / "zoo.yaml", cfg)
    r = snakemake(workdir, "results/tinyzoo/analysis/lf/backdoor/metrics.json",
                  "results/tinyzoo/analysis/input_aware/backdoor/metrics.json", configfile="zoo.yaml")
    log = r.stdout + r.stderr
    assert {j for j in planned_jobs(log) if j[0] == "attack_resource"} == {
        ("attack_resource", "attack=lf"), ("attack_resource", "attack=input_aware")}
    res = workdir / "results/tinyzoo/attacks"
    assert json.loads((res / "lf/resource.json").read_text())["metrics"]["max"] <= 51 / 255 + 1e-6
    from dormant.attacks import load_attack
    from dormant.io import load_tensors

    initial = load_attack(res / "input_aware/trigger.safetensors")
    trained = load_attack(workdir / "results/tinyzoo/models/input_aware/backdoor/trigger.safetensors")
    g0, g1 = initial.G.state_dict(), trained.G.state_dict()
    assert any(not torch.equal(g0[k], g1[k]) for k in g0)  # the generator learned during training
    assert all(torch.equal(initial.M.state_dict()[k], v) for k, v in trained.M.state_dict().items())
    assert torch.equal(initial.poison_index, trained.poison_index)
    lf_initial, _ = load_tensors(res / "lf/trigger.safetensors")
    lf_trained, _ = load_tensors(workdir / "results/tinyzoo/models/lf/backdoor/trigger.safetensors")
    assert lf_initial.keys() == lf_trained.keys() and all(torch.equal(lf_initial[k], lf_trained[k]) for k in lf_initial)
    m = json.loads((workdir / "results/tinyzoo/analysis/input_aware/backdoor/metrics.json").read_text())["metrics"]
    assert {"c_acc", "asr", "ra"} <= m.keys()
    # the resource stages (LF against the clean model, Input-Aware's mask net) load only their code inputs
    chosen, missing = _trace_stages(workdir, tmp_path, "results/tinyzoo/models/lf/backdoor/model.safetensors",
                                    "results/tinyzoo/models/input_aware/backdoor/model.safetensors",
                                    configfile="zoo.yaml")
    assert {("attack_resource", "lf"), ("attack_resource", "input_aware"), ("train_backdoor", "input_aware")} <= {
        (rule, name) for rule, p in chosen for name in re.findall(r"attacks/(\w+)\.py", " ".join(p))}
    assert not missing
