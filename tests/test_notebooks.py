"""Params files and notebook execution (mmstudy.study.notebooks), and the contract between params/ and notebooks/:
every params file names only parameters its notebook declares, notebooks are committed without outputs, and the
data-review notebook executes into a run directory."""

import ast
import os
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from mmstudy import io
from mmstudy.study import notebooks as nbs
from mmstudy.study.pipeline import STAGES

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PARAMS = sorted(p for p in (ROOT / "params").rglob("*.yaml") if not p.name.endswith(".sweep.yaml"))
SWEEPS = sorted((ROOT / "params").rglob("*.sweep.yaml"))


def test_read_params_is_strict(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("a: 1\nb: [1, x]\nc: null\n")
    assert nbs.read_params(path) == {"a": 1, "b": [1, "x"], "c": None}
    for text, message in (("a: 1\na: 2\n", "duplicate key 'a'"), ("a: {b: 1}\n", "key 'a': params are flat"),
                          ("a: [[1]]\n", "params are flat"), ("- 1\n", "must be a mapping"),
                          ("a: [1\n", "not valid params YAML")):
        path.write_text(text)
        with pytest.raises(io.DataError, match=message):
            nbs.read_params(path)
    with pytest.raises(io.DataError, match="params file not found"):
        nbs.read_params(tmp_path / "missing.yaml")


def test_load_params_merges_in_order(tmp_path):
    (tmp_path / "a.yaml").write_text("x: 1\ny: 2\n")
    (tmp_path / "b.yaml").write_text("y: 3\n")
    assert nbs.load_params(tmp_path / "a.yaml", tmp_path / "b.yaml", z=[4]) == {"x": 1, "y": 3, "z": [4]}
    with pytest.raises(io.DataError, match="override 'z'"):
        nbs.load_params(z={"nested": 1})


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_committed_thin_and_without_outputs(notebook):
    nb = nbformat.read(notebook, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "run_dir" in nbs.notebook_parameters(notebook)
    assigned = {t.id for node in ast.parse(tagged[0].source).body for t in node.targets}
    assert assigned == set(nbs.notebook_parameters(notebook))     # papermill parsed every line
    assert all(len(c.source.splitlines()) <= 15 for c in code if c not in tagged)     # logic lives in mmstudy


def _library_names(tree: ast.AST) -> set[str]:
    """Names a notebook binds by importing from mmstudy."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mmstudy"):
            names |= {a.asname or a.name for a in node.names}
    return names


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_read_as_the_study(notebook):
    """A title with the notebook's number and the question it answers, a markdown cell before each step, and
    library calls that pass at most two arguments by position."""
    nb = nbformat.read(notebook, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith(f"# {notebook.name[:2]} · ")
    assert "**Question.**" in first.source
    steps = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"][2:]      # after imports and parameters
    assert all(nb.cells[i - 1].cell_type == "markdown" or nb.cells[i - 1].cell_type == "code" and
               i - 2 >= 0 and nb.cells[i - 2].cell_type == "markdown" for i in steps)
    tree = ast.parse("\n".join(c.source for c in nb.cells if c.cell_type == "code"))
    library = _library_names(tree)
    crowded = [ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call) and len(node.args) > 2
               and (isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
                    and node.func.value.id in library or isinstance(node.func, ast.Name) and node.func.id in library)]
    assert not crowded, crowded


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: str(p.relative_to(ROOT / "params")))
def test_every_params_file_matches_its_notebook(params):
    notebook = ROOT / "notebooks" / f"{params.stem}.ipynb"
    assert notebook.is_file(), f"{params} has no notebook"
    nbs.check_params(notebook, nbs.read_params(params))


@pytest.mark.parametrize("notebook", [n for n in NOTEBOOKS if (ROOT / "params" / f"{n.stem}.yaml").is_file()],
                         ids=lambda p: p.name)
def test_a_notebook_run_bare_runs_the_default_profile(notebook):
    """The defaults of a notebook's parameters cell are params/<notebook>.yaml's values (the default profile)."""
    defaults = {name: ast.literal_eval(p["default"]) for name, p in nbs.notebook_parameters(notebook).items()}
    profile = nbs.read_params(ROOT / "params" / f"{notebook.stem}.yaml")
    assert {k: defaults[k] for k in profile} == profile


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: str(p.relative_to(ROOT / "params")))
def test_every_sweep_point_matches_its_notebook(sweep):
    notebook = ROOT / "notebooks" / f"{sweep.name.removesuffix('.sweep.yaml')}.ipynb"
    points = nbs.read_sweep(sweep)
    assert points
    for axis, named in points.items():
        for point, overrides in named.items():
            nbs.check_params(notebook, overrides)


@pytest.mark.parametrize("profile", ["smoke", "default", "paper"])
def test_every_sweep_point_builds_valid_configs(profile, tmp_path):
    """Each point's merged params make valid BDHS, training and online configs and name known data, so a typo
    fails here and not hours into a sweep."""
    from mmstudy.data.bdhs import BDHSConfig
    from mmstudy.editions.sampled import EDITIONS
    from mmstudy.models.decoding import parse_decoding
    from mmstudy.study import stages
    from mmstudy.study.pipeline import plan
    from mmstudy.training.dpo import DPOTrainConfig
    from mmstudy.training.online import OnlineConfig

    jobs = plan(profile, [0], tmp_path, only=["07_ablations"])
    assert jobs
    for _, run_dir, p, _ in jobs:
        assert p["data"] in ("povid", "bdhs", "povid+bdhs", *EDITIONS), run_dir
        BDHSConfig(variant=p["bdhs_variant"], rho_th=p["rho_th"], iterations=p["iterations"], epsilon=p["epsilon"],
                   noise_steps=p["noise_steps"])
        DPOTrainConfig(loss=p["loss"], beta=p["beta"], lora_r=p["lora_r"], lora_alpha=p["lora_alpha"], lr=p["lr"],
                       epochs=p["epochs"], batch_size=p["batch_size"], train_projector=p["train_projector"])
        if p["mode"] in stages.RL_MODES:                    # RL: its trainer's config, the reward model's data
            stages.rl_config(p["mode"], k=p["k"], temperature=p["temperature"], max_new_tokens=p["max_new_tokens"],
                             lora_r=p["lora_r"], lora_alpha=p["lora_alpha"], lr=p["lr"], beta=p["beta"],
                             steps=p["epochs"] * p["size"] // p["batch_size"], batch_size=p["batch_size"], seed=0)
            assert p["mode"] == "grpo" or p["reward_data"] in ("povid", *EDITIONS), run_dir
        elif p["mode"] == "decode":                          # no training: a decoding method of the base model
            assert parse_decoding(p["decoding"]).method != "greedy", run_dir
        elif p["mode"] != "offline":
            online = OnlineConfig(mode=p["mode"], k=p["k"], temperature=p["temperature"],
                                  max_new_tokens=p["max_new_tokens"], p_offline=p["p_offline"])
            assert (p["loss"] == "avg_dpo") == online.needs_second_rejected, run_dir
        else:
            assert (p["loss"] == "avg_dpo") == (p["data"] == "povid+bdhs"), run_dir


def test_read_sweep_is_strict(tmp_path):
    path = tmp_path / "s.sweep.yaml"
    path.write_text("loss:\n  ipo: {loss: ipo}\n  slic: {loss: slic, beta: 0.2}\n")
    assert nbs.read_sweep(path) == {"loss": {"ipo": {"loss": "ipo"}, "slic": {"loss": "slic", "beta": 0.2}}}
    for text, message in (("loss:\n  ipo: {loss: ipo}\n  ipo: {loss: dpo}\n", "duplicate key 'ipo'"),
                          ("loss: [ipo]\n", "axis 'loss' must map point names"),
                          ("loss:\n  ipo: 3\n", "loss/ipo: a point is a name"),
                          ("loss:\n  ipo: {a: {b: 1}}\n", "params are flat")):
        path.write_text(text)
        with pytest.raises(io.DataError, match=message):
            nbs.read_sweep(path)


def test_check_params_names_unknown_keys():
    with pytest.raises(io.DataError, match=r"does not declare the parameter\(s\) \['bogus'\]"):
        nbs.check_params(ROOT / "notebooks" / "04_data_review.ipynb", {"top": 3, "bogus": 1})


def test_execute_cli_refuses_unknown_parameters(tmp_path):
    from mmstudy.cli import main

    args = ["-q", "execute", str(ROOT / "notebooks" / "04_data_review.ipynb"), "--params",
            str(ROOT / "params" / "04_data_review.yaml"), "--run-dir", str(tmp_path / "run")]
    assert main(args + ["--set", "bogus=1"]) == 2
    assert main(args + ["--set", "prefs"]) == 2
    assert not (tmp_path / "run").exists()          # nothing ran, nothing was written


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_jupyterlab_lists_and_opens_the_notebooks(tmp_path):
    """How users explore the study: JupyterLab, headless on 127.0.0.1, driven through its REST API."""
    import json
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    port, token = _free_port(), "mmstudy-test"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--ServerApp.root_dir={ROOT}", f"--IdentityProvider.token={token}", "--ServerApp.port_retries=0"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")         # CI containers run as root
    log = (tmp_path / "lab.log").open("w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
                                   "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")})

    def api(path, method="GET", body=None):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/{path}", method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Authorization": f"token {token}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read() or b"null")

    try:
        for _ in range(120):
            try:
                api("status")
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "lab.log").read_text()
                time.sleep(0.5)
        listed = {item["name"] for item in api("contents/notebooks")["content"]}
        assert {p.name for p in NOTEBOOKS} <= listed and NOTEBOOKS
        for path in NOTEBOOKS:
            opened = api(f"contents/notebooks/{path.name}?content=1")
            assert opened["type"] == "notebook"
            assert any("parameters" in c["metadata"].get("tags", []) for c in opened["content"]["cells"])
        session = api("sessions", "POST", {"path": f"notebooks/{NOTEBOOKS[0].name}", "type": "notebook",
                                           "kernel": {"name": "python3"}})
        assert session["kernel"]["name"] == "python3"
        api(f"sessions/{session['id']}", "DELETE")
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_pipeline_plan_wires_stages_and_profiles(tmp_path):
    from mmstudy.study.pipeline import plan, run_pipeline

    jobs = plan("smoke", [0, 1], tmp_path, shared_data=False)             # data drawn per seed
    dirs = [str(d.relative_to(tmp_path / "smoke")) for _, d, _, _ in jobs]
    assert dirs == ["01_world_base", "02_preference_data/s0", "02_preference_data/s1", "03_bdhs/s0", "03_bdhs/s1",
                    "04_data_review", "05_offline/oracle/s0", "05_offline/bdhs/s0", "05_offline/povid/s0",
                    "05_offline/oracle/s1", "05_offline/bdhs/s1", "05_offline/povid/s1", "06_online/online_dpo/s0",
                    "06_online/mixed/s0", "06_online/online_dpo/s1", "06_online/mixed/s1", "08_evaluation/s0",
                    "08_evaluation/s1", "09_report"]
    assert [always for *_, always in jobs] == [False] * 18 + [True]     # the report runs again on every call
    params = {d: p for d, (_, _, p, _) in zip(dirs, jobs)}
    assert params["02_preference_data/s1"]["editions"] == [] and params["02_preference_data/s0"]["editions"]
    assert params["08_evaluation/s1"]["names"][:2] == ["base", "dpo_oracle"]
    assert params["08_evaluation/s1"]["runs"][1:4] == [str(tmp_path / "smoke" / "05_offline" / v / "s1")
                                                        for v in ("oracle", "bdhs", "povid")]
    assert params["05_offline/oracle/s1"]["prefs"] == str(tmp_path / "smoke" / "02_preference_data" / "s1" /
                                                           "oracle.jsonl")
    paper = [str(d) for _, d, _, _ in plan("paper", [0], tmp_path)]   # converted releases: no oracle, no control
    assert not any("oracle" in d for d in paper)
    assert "dpo_oracle" not in plan("paper", [0], tmp_path, only=["08_evaluation"])[0][2]["names"]
    assert params["09_report"]["runs_root"] == str(tmp_path / "smoke")
    base = str(tmp_path / "smoke" / "01_world_base")
    assert params["01_world_base"]["world_profile"] == "smoke" and params["01_world_base"]["seed"] == 0
    assert params["02_preference_data/s1"]["seed"] == 1 and params["02_preference_data/s1"]["base_run"] == base
    assert params["04_data_review"]["names"] == ["povid", "ranking", "correction", "bdhs"]
    assert params["05_offline/bdhs/s1"]["prefs"] == str(tmp_path / "smoke" / "03_bdhs" / "s1" / "bdhs.jsonl")
    assert params["05_offline/povid/s0"]["dataset"] == "povid" and params["05_offline/povid/s0"]["max_pairs"] == 16
    assert params["06_online/mixed/s1"]["mode"] == "mixed"
    assert params["06_online/mixed/s1"]["prefs"] == str(tmp_path / "smoke" / "02_preference_data" / "s1" /
                                                         "povid.jsonl")
    assert plan("default", [0], tmp_path)[0][2]["world_profile"] == "default"
    assert [d.name for _, d, _, _ in plan("smoke", [0], tmp_path, only=["05_offline"])] == ["s0"] * 3
    sweep = plan("default", [0, 1, 2], tmp_path, only=["07_ablations"], ablation_seeds=[1],
                 shared_data=False)
    rel = [str(d.relative_to(tmp_path / "default")) for _, d, _, _ in sweep]
    assert "07_ablations/loss/ipo/s1" in rel and all(r.endswith("/s1") for r in rel)
    ipo = sweep[rel.index("07_ablations/loss/ipo/s1")][2]
    assert ipo["loss"] == "ipo" and ipo["axis"] == "loss" and ipo["point"] == "ipo" and ipo["size"] == 768
    assert ipo["data_run"] == str(tmp_path / "default" / "02_preference_data" / "s1")
    assert ipo["shared_dir"] == str(tmp_path / "default" / "07_ablations" / "data" / "s1")
    rho = sweep[rel.index("07_ablations/rho_th/rho0.98/s1")][2]
    assert (rho["data"], rho["rho_th"], rho["loss"]) == ("bdhs", 0.98, "dpo")
    some = plan("default", [0], tmp_path, only=["05_offline", "07_ablations"], points=["loss", "data/ranking"])
    assert [str(d.relative_to(tmp_path / "default")) for _, d, _, _ in some][3:] == [
        "07_ablations/loss/ipo/s0", "07_ablations/loss/slic/s0", "07_ablations/data/ranking/s0"]
    with pytest.raises(ValueError, match=r"no sweep point or axis \['los'\]"):
        plan("default", [0], tmp_path, only=["07_ablations"], points=["los"])
    with pytest.raises(ValueError, match="name it in --only"):
        plan("default", [0], tmp_path, points=["loss"])
    shared = plan("smoke", [0, 1], tmp_path)        # the default: one data draw, trained on by every seed
    shared_dirs = [str(d.relative_to(tmp_path / "smoke")) for _, d, _, _ in shared]
    assert shared_dirs == [d for d in dirs if d not in ("02_preference_data/s1", "03_bdhs/s1")]
    shared_params = {d: p for d, (_, _, p, _) in zip(shared_dirs, shared)}
    first = tmp_path / "smoke" / "02_preference_data" / "s0"
    assert shared_params["05_offline/oracle/s1"]["prefs"] == str(first / "oracle.jsonl")
    assert shared_params["05_offline/oracle/s1"]["seed"] == 1
    assert shared_params["05_offline/bdhs/s1"]["prefs"] == str(tmp_path / "smoke" / "03_bdhs" / "s0" / "bdhs.jsonl")
    assert shared_params["06_online/mixed/s1"]["prefs"] == str(first / "povid.jsonl")
    sweep = {str(d.relative_to(tmp_path / "default")): p for _, d, p, _ in
             plan("default", [0, 1], tmp_path, only=["07_ablations"], ablation_seeds=[0, 1], points=["rl/grpo"])}
    first, second = sweep["07_ablations/rl/grpo/s0"], sweep["07_ablations/rl/grpo/s1"]
    assert "data_seed" not in first and (first["seed"], second["seed"], second["data_seed"]) == (0, 1, 0)
    assert first["shared_dir"] == second["shared_dir"] == str(tmp_path / "default" / "07_ablations" / "data" / "s0")
    assert second["data_run"] == str(tmp_path / "default" / "02_preference_data" / "s0")
    io.write_json(tmp_path / "smoke" / "pipeline.json", {"shared_data": False, "stages": {}})
    with pytest.raises(ValueError, match="made with --data-draws per-seed"):   # before anything executes
        run_pipeline("smoke", [0], tmp_path, only=["09_report"])
    with pytest.raises(ValueError, match="unknown stage"):
        plan("smoke", [0], tmp_path, only=["09_nope"])
    with pytest.raises(ValueError, match="unknown profile"):
        plan("tiny", [0], tmp_path)


SMOKE_METRICS = ROOT / "tests" / "fixtures" / "smoke_metrics.json"


def _stored_form(root: Path, leave_out: tuple[str, ...] = ()) -> dict:
    """The smoke chain's metrics.json files under `root` as `SMOKE_METRICS` stores them: per stage (but for those
    starting with one of `leave_out`), wall-clock times left out, paths relative to the run."""
    found = {}
    for p in sorted(root.rglob("metrics.json")):
        stage = p.parent.relative_to(root).as_posix()
        if "07_ablations/data" in stage or stage.startswith(leave_out or "\0"):
            continue
        found[stage] = {k: v for k, v in io.read_json(p).items() if "seconds" not in k}
        if isinstance(found[stage].get("prefs"), str):
            found[stage]["prefs"] = Path(found[stage]["prefs"]).relative_to(root).as_posix()
    return found


# Metrics that follow a path from the same start amplify the last bits in which CPUs' float sums differ (docs/
# reliability.md). Seen on two x86-64 machines, both on AVX2 kernels, that trained the same smoke models to the
# digit: the headroom probes (L-BFGS on a non-convex loss, a few hundred smoke scenes, the best source chosen on a
# held-out set) gave probe accuracies up to 9 of 60 items apart, and the KL of two nearly equal models (about 1e-7
# per token) 2 % apart. So a probe metric must be there and finite (tests/test_headroom.py checks the probes
# themselves), a KL within 5 %, and everything else the same to the last digit.
PATH_SENSITIVE = {"eval/headroom/": None, "eval/shift/kl_per_token": dict(rel_tol=0.05)}


def _agree(key: str, a, b) -> bool:
    import math

    if a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
        return True
    prefix = next((p for p in PATH_SENSITIVE if key.startswith(p)), None)
    if prefix is None or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (a, b)):
        return False
    return PATH_SENSITIVE[prefix] is None or math.isclose(a, b, **PATH_SENSITIVE[prefix])


def _same_metrics(root: Path, leave_out: tuple[str, ...] = ()) -> list[str]:
    """Where the smoke chain's metrics differ from the stored copy (`SMOKE_METRICS`, written by this chain and its
    sweep): exactly, but for `PATH_SENSITIVE` ones, within their tolerance. A change that moves the numbers on
    purpose (float sums in another order count) rewrites the copy with the slow sweep test:
    `MMSTUDY_WRITE_SMOKE_METRICS=1 python -m pytest -q -m slow tests/test_notebooks.py -k sweep`, then the default
    tier checks the chain against it."""
    found = _stored_form(root, leave_out)
    if not leave_out and os.environ.get("MMSTUDY_WRITE_SMOKE_METRICS") == "1":
        io.write_json(SMOKE_METRICS, found)
    stored = {k: v for k, v in io.read_json(SMOKE_METRICS).items() if not k.startswith(leave_out or "\0")}
    differ = sorted(set(stored) ^ set(found))
    for stage in set(stored) & set(found):
        for key in set(stored[stage]) | set(found[stage]):
            a, b = stored[stage].get(key), found[stage].get(key)
            if not _agree(key, a, b):
                differ.append(f"{stage}: {key} {a!r} -> {b!r}")
    return differ


@pytest.fixture
def two_threads(monkeypatch):
    """The stored smoke metrics were made with 2 torch threads, as CI has (another count can change float sums):
    the chain's kernels get 2, and this process's setting comes back afterwards."""
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    yield
    torch.set_num_threads(before)


def test_smoke_chain_runs_and_resumes(tmp_path, two_threads):
    """`mmstudy run --profile smoke` (about 5 minutes here, most of it kernel starts): every stage executes and
    writes the stored metrics; a rerun skips them all (the report, which always reruns, is left out of it). Its
    ablation sweep is in the slow tier."""
    from mmstudy.cli import main

    args = ["-q", "run", "--profile", "smoke", "--seeds", "0", "--runs", str(tmp_path)]
    assert main(args) == 0
    root = tmp_path / "smoke"
    stages = ("01_world_base", "02_preference_data/s0", "03_bdhs/s0", "04_data_review", "05_offline/oracle/s0",
              "05_offline/bdhs/s0",
              "05_offline/povid/s0", "06_online/online_dpo/s0", "06_online/mixed/s0", "08_evaluation/s0",
              "09_report")
    metrics = {d: io.read_json(root / d / "metrics.json") for d in stages}
    assert "eval/mmhal/score" in metrics["05_offline/povid/s0"] and "eval/llava_w/relative_score" in metrics[
        "06_online/mixed/s0"]
    comparisons = io.read_json(root / "08_evaluation/s0/comparisons.json")
    assert comparisons["reference"] == "base" and set(comparisons["comparisons"]) == {
        "dpo_oracle", "dpo_bdhs", "dpo_povid", "online_dpo", "mixed"}
    assert metrics["02_preference_data/s0"]["pairs/oracle"] > 0
    assert any(k.startswith("pope") for k in comparisons["comparisons"]["mixed"])
    assert any(k.startswith("mmhal") for k in comparisons["comparisons"]["mixed"])
    assert metrics["09_report"]["models"] == 6 and metrics["09_report"]["coverage/Table 12"] == "2 of 4 rows"
    assert metrics["09_report"]["control"] in ("moves", "does not move", "not run")   # the smoke model: any
    power = (root / "09_report" / "power.csv").read_text().splitlines()
    assert power[0] == "column,comparisons,n_seeds,n_items,se,mde,mde_max,se_items,mde_items"
    assert power[1].startswith("POPE F1,5,1,")    # 5 models against the base, with 1 seed
    base_samples = io.read_jsonl(root / "01_world_base" / "eval" / "samples.jsonl")   # 08: the base's yes/no margins
    assert len(io.read_jsonl(root / "01_world_base" / "eval" / "yes_margins.jsonl")) == sum(
        s["benchmark"] == "pope" for s in base_samples)
    assert (root / "09_report" / "yes_ratio.csv").read_text().startswith("model,yes %,POPE F1,POPE F1 matched,")
    assert (root / "09_report" / "training_needed.csv").read_text().startswith("model,POPE F1,CHAIR_i,")
    assert {"eval/shift/kl_per_token", "eval/shift/changed_share", "eval/headroom/recoverable_pope"} <= set(
        metrics["05_offline/oracle/s0"])
    assert (root / "09_report" / "09_report.html").stat().st_size > 10_000
    assert "eval/pope/adversarial/accuracy" in metrics["01_world_base"]
    assert metrics["02_preference_data/s0"]["pairs/ranking"] > 0
    assert metrics["03_bdhs/s0"]["bdhs/pairs"] == 8
    assert metrics["04_data_review"]["ranking/pairs"] == metrics["02_preference_data/s0"]["pairs/ranking"]
    assert metrics["04_data_review"]["bdhs/pairs"] == 8
    _data_review_checks(root / "04_data_review", metrics["04_data_review"])
    for stage in stages[4:8]:
        assert metrics[stage]["train/steps"] > 0 and "eval/chair/chair_i" in metrics[stage], stage
    assert metrics["06_online/online_dpo/s0"]["mode"] == "online_dpo"
    assert "online/pairs" in metrics["06_online/online_dpo/s0"] or "online/identical" in metrics[
        "06_online/online_dpo/s0"]
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*.ipynb") if "09_report" not in str(p)}
    chain = [s.name for s in STAGES if s.name not in ("07_ablations", "09_report")]   # the report always reruns
    assert main(args + ["--only", *chain]) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in root.rglob("*.ipynb") if "09_report" not in str(p)}
    assert _same_metrics(root, leave_out=("07_ablations", "09_report")) == []   # the report: after the sweep
    _every_notebook_shows_a_figure(root)
    _report_rebuilds_from_the_archive(tmp_path, main)


def _report_rebuilds_from_the_archive(runs: Path, main) -> None:
    """`mmstudy archive` keeps what the report reads: the report executed on the archive alone (no world, no
    weights) writes the same tables, verdicts and power."""
    results = runs / "archive"
    assert main(["-q", "archive", "--runs", str(runs), "--run-id", "smoke", "--to", str(results)]) == 0
    assert not list(results.rglob("*.safetensors")) and not (results / "smoke" / "01_world_base" / "world").exists()
    assert main(["-q", "run", "--profile", "smoke", "--seeds", "0", "--runs", str(results), "--only",
                 "09_report"]) == 0
    for name in ("tables.md", "verdicts.csv", "power.csv", "diagnostics.csv", "yes_ratio.csv"):
        rebuilt, original = (root / "smoke" / "09_report" / name for root in (results, runs))
        assert rebuilt.read_text() == original.read_text(), name


def _data_review_checks(run: Path, metrics: dict) -> None:
    """The chain's data review: its files, its metrics per dataset, and what `execute` refuses for it."""
    params = io.read_json(run / "params.json")
    for name in ("04_data_review.ipynb", "params.yaml", "manifest.json", "review.json", "table1.md",
                 "differences.png", "complete.json", *(f"{n}.md" for n in params["names"])):
        assert (run / name).is_file(), name
    for name in params["names"]:
        assert 0 < metrics[f"{name}/word_similarity_median"] < 1, name
        assert sum(v for k, v in metrics.items() if k.startswith(f"{name}/kind/")) == pytest.approx(1.0), name
    notebook = ROOT / "notebooks" / "04_data_review.ipynb"
    with pytest.raises(io.DataError, match="complete run with other params"):
        nbs.execute(notebook, {**params, "top": 3}, run, progress=False)
    with pytest.raises(io.DataError, match="run_dir is set by execute"):
        nbs.execute(notebook, {**params, "run_dir": "x"}, run, progress=False)


def _every_notebook_shows_a_figure(root: Path) -> None:
    for notebook in root.rglob("*.ipynb"):
        cells = nbformat.read(notebook, as_version=4).cells
        assert any("image/png" in out.get("data", {}) for c in cells if c.cell_type == "code" for out in c.outputs), \
            notebook


@pytest.mark.slow
def test_smoke_sweep_runs_its_points_and_reports_them(tmp_path, two_threads):
    """The smoke chain, then its ablation sweep (one point of each kind of work) and the report again with the
    points' rows (about 10 minutes here; the chain alone is in the default tier)."""
    from mmstudy.cli import main

    args = ["-q", "run", "--profile", "smoke", "--seeds", "0", "--runs", str(tmp_path)]
    assert main(args) == 0
    root = tmp_path / "smoke"
    assert main(args + ["--only", "07_ablations", "09_report"]) == 0
    points = {p.parent.parent.relative_to(root / "07_ablations").as_posix(): io.read_json(p)
              for p in root.glob("07_ablations/*/*/s0/metrics.json")}
    assert set(points) == {"loss/ipo", "rho_th/rho0.98", "povid_plus/attn", "online/online_bdhs_avg",
                           "data/ranked_corrupted", "size/n24", "rl/rloo_povid"}
    for name, m in points.items():
        assert m["train/steps"] > 0 and "eval/pope/adversarial/accuracy" in m, name
    assert io.read_json(root / "07_ablations/loss/ipo/s0/train_summary.json")["config"]["loss"] == "ipo"
    assert points["size/n24"]["train/pairs"] == 24
    rloo = root / "07_ablations/rl/rloo_povid/s0"
    held = io.read_json(rloo / "rm_accuracy.json")                      # Table 7: every source's held-out pairs
    assert set(held["accuracy"]) == {"povid", "ranking", "correction"} and held["held_out"] == 8
    assert points["rl/rloo_povid"]["rm/pairs"] == held["pairs"] <= 16
    assert len(io.read_jsonl(rloo / "rl_curve.jsonl")) == points["rl/rloo_povid"]["train/steps"] == 2
    assert isinstance(io.read_json(rloo / "collapse.json")["collapsed"], bool)
    plus = io.read_jsonl(points["povid_plus/attn"]["prefs"])
    assert len(plus) == 16 and all(r["rejected_2"] and r["rejected"] for r in plus)
    assert io.read_json(Path(points["rho_th/rho0.98"]["prefs"]).with_suffix(".stats.json"))["stats"]["config"][
        "rho_th"] == 0.98
    recorded = io.read_json(root / "pipeline.json")["stages"]            # merged over both calls
    assert any(k.endswith("01_world_base") for k in recorded) and any("07_ablations" in k for k in recorded)
    report = io.read_json(root / "09_report" / "metrics.json")
    assert report["models"] == 13 and report["coverage/Table 12"] == "3 of 4 rows"   # 6 chain models, 7 points
    assert "| IPO | –" not in (root / "09_report" / "tables.md").read_text()
    verdicts = pd.read_csv(root / "09_report" / "verdicts.csv")
    assert len(verdicts) == 7 and "(1 of 7 claims assessed)" in verdicts["verdict"].iloc[5]   # no ranked RM run
    assert "(1 of 5 claims assessed)" in verdicts["verdict"].iloc[6]     # IPO ran; SLiC is not in the smoke sweep
    assert (root / "09_report" / "table7.csv").read_text().splitlines()[1].startswith("povid,")
    assert _same_metrics(root) == []
    _every_notebook_shows_a_figure(root)


def test_stages_keep_a_complete_world_and_refuse_another(tmp_path):
    from mmstudy.study.stages import ensure_world

    first = ensure_world(tmp_path / "world", "smoke", 0, progress=False)
    stamp = (tmp_path / "world" / "world.json").stat().st_mtime_ns
    assert ensure_world(tmp_path / "world", "smoke", 0, progress=False) == first          # kept, not rewritten
    assert (tmp_path / "world" / "world.json").stat().st_mtime_ns == stamp
    with pytest.raises(io.DataError, match="another profile or seed"):
        ensure_world(tmp_path / "world", "smoke", 1, progress=False)
    with pytest.raises(io.DataError, match="another profile or seed"):
        ensure_world(tmp_path / "world", "default", 0, progress=False)


def test_stages_keep_a_finished_base_model_of_the_same_recipe_only(tmp_path):
    from mmstudy.runs import build_manifest
    from mmstudy.study.stages import ensure_base_model

    model = tmp_path / "model"
    report = {"manifest": build_manifest(0, "train_base", {"world": "w", "profile": "smoke"}), "seconds": 1.0}
    io.write_json(model / "mmstudy_train.json", report)
    assert ensure_base_model(tmp_path / "world", model, "smoke", 0, progress=False)["seconds"] == 1.0
    for profile, seed in (("default", 0), ("smoke", 1)):
        with pytest.raises(io.DataError, match="another profile, seed or settings"):
            ensure_base_model(tmp_path / "world", model, profile, seed, progress=False)
    with pytest.raises(io.DataError, match="another profile, seed or settings"):
        ensure_base_model(tmp_path / "world", model, "smoke", 0, progress=False, overrides=["p_blind=0.2"])
