"""The report's numbers from run directories (mmstudy.study.report): collection, intervals over seeds, the paper's
tables and the verdicts, on small run directories written here."""

import subprocess
import sys

import numpy as np
import pytest

from mmstudy import io
from mmstudy.benchmarks.stats import seed_interval
from mmstudy.study import report

_U = np.random.default_rng(1234).random((3, 200))   # per POPE item: how hard it is (shared by every model)
_W = np.random.default_rng(5678).random((100, 4))   # per caption mention: how tempting a hallucination it is


def _samples(f1: float, chair: float, llava: float) -> list[dict]:
    """Per-item samples whose rates follow the run's metrics: a model gets a POPE item right when the item's
    difficulty is below its level, so better models are right on supersets (paired items, as in a real study)."""
    out = []
    for k, split in enumerate(report.POPE_SPLITS):
        for q in range(200):
            label = "yes" if q % 2 == 0 else "no"
            right = _U[k, q] < f1
            out.append({"benchmark": "pope", "split": split, "question_id": q, "label": label,
                        "pred": label if right else ("no" if label == "yes" else "yes")})
    for i in range(100):
        hall = [["x", "x"]] * int((_W[i] < chair).sum())
        out.append({"benchmark": "chair", "image_id": i, "reference": {
            "hallucinated": hall, "mentioned": [["y", "y"]] * 4, "covered": [1, 2], "gt": [1, 2, 3]}})
    out += [{"benchmark": "llava_w", "question_id": q, "scores": [8.0, 8.0 * llava / 100]} for q in range(20)]
    return out


def _run(root, rel, seed, f1, chair=0.07, llava=60.0, params=None, item_ci=True):
    run = root / rel
    metrics = {"eval/pope/macro/f1": f1, "eval/chair/chair_i": chair, "eval/llava_w/relative_score": llava,
               "train/pairs": (params or {}).get("max_pairs", 0)}
    if item_ci:
        metrics |= {"eval/pope/macro/f1_ci95_low": f1 - 0.01, "eval/pope/macro/f1_ci95_high": f1 + 0.01}
    io.write_json(run / "metrics.json", metrics)
    io.write_json(run / "params.json", {"seed": seed, **(params or {})})
    io.write_jsonl(run / "eval" / "samples.jsonl", _samples(f1, chair, llava))
    io.write_json(run / "complete.json", {"params_hash": "x"})


@pytest.fixture
def runs_root(tmp_path):
    _run(tmp_path, "01_world_base", 0, 0.80, chair=0.08)
    for seed, (povid, online, ipo, slic) in enumerate([(0.850, 0.810, 0.830, 0.860), (0.852, 0.812, 0.832, 0.862),
                                                        (0.848, 0.808, 0.828, 0.858)]):
        _run(tmp_path, f"05_offline/povid/s{seed}", seed, povid, chair=0.06, llava=55.0, params={"max_pairs": 768})
        _run(tmp_path, f"06_online/online_dpo/s{seed}", seed, online, chair=0.075, llava=65.0)
        _run(tmp_path, f"07_ablations/loss/ipo/s{seed}", seed, ipo, llava=70.0)
        _run(tmp_path, f"07_ablations/loss/slic/s{seed}", seed, slic, llava=50.0)
    _run(tmp_path, "07_ablations/size/n100/s0", 0, 0.81, params={"size": 100})
    _run(tmp_path, "07_ablations/size/n3000/s0", 0, 0.90, params={"size": 3000})
    _run(tmp_path, "07_ablations/beta/beta0.5/s0", 0, 0.82, params={"beta": 0.5}, item_ci=False)
    io.write_json(tmp_path / "02_preference_data/s0/metrics.json", {"pairs/povid": 3})      # a data stage
    io.write_json(tmp_path / "02_preference_data/s0/complete.json", {})
    io.write_json(tmp_path / "05_offline/bdhs/s0/metrics.json", {"eval/pope/macro/f1": 0.9})  # not complete
    return tmp_path


def test_the_report_imports_without_torch():
    """The report notebook reads run files only: its imports leave torch and transformers out (seconds per run)."""
    code = ("import sys; from mmstudy import io, plots; from mmstudy.study import report; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_collect_names_model_runs_and_skips_data_stages_and_unfinished_runs(runs_root):
    runs = report.collect(runs_root)
    assert sorted(runs["model"].unique()) == ["base", "beta/beta0.5", "dpo_povid", "loss/ipo", "loss/slic",
                                              "online_dpo", "size/n100", "size/n3000"]
    row = runs[(runs["model"] == "dpo_povid") & (runs["seed"] == 1)].iloc[0]
    assert row["POPE F1"] == pytest.approx(85.2) and row["CHAIR_i"] == pytest.approx(6.0)
    assert row["POPE F1 lo"] == pytest.approx(84.2) and np.isnan(row["MMHal"])
    with pytest.raises(io.DataError, match="no complete model runs"):
        report.collect(runs_root / "02_preference_data")


def test_summary_uses_seed_intervals_and_item_intervals_for_one_seed(runs_root):
    summary = report.summarize(report.collect(runs_root))
    ci = seed_interval([85.0, 85.2, 84.8])
    r = summary.loc[("dpo_povid", "POPE F1")]
    assert (r["mean"], r["low"], r["high"]) == pytest.approx((ci["mean"], ci["low"], ci["high"]))
    assert r["mean"] == pytest.approx(85.0) and r["n"] == 3
    assert r["interval"] == "seeds"
    base = summary.loc[("base", "POPE F1")]
    assert (base["low"], base["high"], base["interval"]) == (pytest.approx(79.0), pytest.approx(81.0), "items")
    assert summary.loc[("beta/beta0.5", "POPE F1")]["interval"] == "none"
    assert report.cell(summary, "base", "POPE F1") == "80.0 [79.0, 81.0]i"
    assert report.cell(summary, "beta/beta0.5", "POPE F1") == "82.0"
    assert report.cell(summary, "mixed", "POPE F1") == "–"


def test_paper_table_keeps_the_papers_rows_and_marks_missing_ones(runs_root):
    summary = report.summarize(report.collect(runs_root))
    table = report.paper_table(summary, "Table 12", columns=["POPE F1", "LLaVA-W"])
    assert list(table.index) == ["base", "DPO", "IPO", "SLiC"]
    assert table.loc["SLiC", "POPE F1"] == "86.0 [85.5, 86.5]"
    assert table.loc["base", "LLaVA-W"] == "60.0"
    assert report.paper_table(summary, "Table 9").loc["Mixed-DPO · POVID-like", "POPE F1"] == "–"
    assert report.table_coverage(summary)["Table 12"] == "4 of 4 rows"
    text = report.markdown_table(table)
    assert text.splitlines()[0] == "| Table 12: Offline objectives on POVID-like pairs | POPE F1 | LLaVA-W |"
    assert text.count("\n") == 5


def test_axis_tables_list_every_point_after_the_base(runs_root):
    tables = report.axis_tables(report.summarize(report.collect(runs_root)), columns=["POPE F1"])
    assert list(tables) == ["beta", "loss", "size"]
    assert list(tables["size"].index) == ["base", "size/n100", "size/n3000"]
    assert tables["size"].loc["size/n3000", "POPE F1"] == "90.0 [89.0, 91.0]i"


def test_verdicts_follow_the_claims(runs_root):
    runs = report.collect(runs_root)
    verdicts = report.verdicts(runs)
    assert len(verdicts) == len(report.FINDINGS) == 7
    objectives = verdicts.iloc[6]
    assert objectives["verdict"] == "reproduced"       # IPO, SLiC > base; SLiC > DPO, > IPO; IPO best LLaVA-W
    assert objectives["evidence"].count("✓ ") == 5
    first = verdicts.iloc[0]        # offline beats online on POPE and CHAIR, online wins LLaVA-W; no mixed run
    assert first["verdict"] == "reproduced (3 of 5 claims assessed)"
    assert "? POPE F1: mixed not run" in first["evidence"]
    assert verdicts.iloc[2]["verdict"] == "reproduced"      # the 3000-pair point leaves the base on POPE F1 too
    assert "100 pairs 1, 3000 pairs 2" in verdicts.iloc[2]["evidence"]  # + CHAIR_i, 8 -> 7
    assert verdicts.iloc[1]["verdict"] == "not assessed"
    # flip the objectives: SLiC worse than everything
    for seed in range(3):
        _run(runs_root, f"07_ablations/loss/slic/s{seed}", seed, 0.70, llava=80.0)
    runs = report.collect(runs_root)
    objectives = report.verdicts(runs).iloc[6]
    assert objectives["verdict"] == "mixed" and objectives["evidence"].count("✗ ") == 4


def test_claims_pair_seeds_and_read_a_one_seed_point_against_its_seed(runs_root):
    runs = report.collect(runs_root)
    claims = report.Claims(runs)
    mark, text = claims.better("size/n3000", "dpo_povid", "POPE F1")       # seed 0 only
    assert mark == "✓" and text.endswith("(1 seed, 600 items)")
    d = claims.paired("dpo_povid", "size/n3000", "POPE F1")
    assert d["n_seeds"] == 1 and d["low"] > 0 and d["value"] == pytest.approx(float(text.split()[5]), abs=0.01)
    mark, text = claims.better("base", "dpo_povid", "POPE F1")              # the base is one run: all 3 seeds
    assert mark == "✗" and text.endswith("(3 seeds, 1800 items)")
    assert claims.better("dpo_povid", "online_dpo", "CHAIR_i")[0] == "✓"     # lower is better: 6 % vs 7.5 %
    assert claims.paired("online_dpo", "dpo_povid", "CHAIR_i")["high"] < 0
    assert claims.not_worse("loss/ipo", "dpo_povid", "POPE F1")[0] == "✗"  # 83 vs 85 on the same items
    assert claims.better("mixed", "base", "POPE F1") == (None, "POPE F1: mixed not run")
    same = claims.paired("dpo_povid", "dpo_povid", "POPE F1")
    assert same["value"] == same["low"] == same["high"] == 0
    assert claims.better("dpo_povid", "dpo_povid", "POPE F1")[0] == "≈"


def test_item_rows_give_the_metrics_of_the_samples():
    samples = _samples(0.8, 0.1, 60.0)
    pope = np.array(list(report.item_rows(samples, "POPE F1").values())).sum(0)
    f1 = report._macro_ratio(pope)
    tp = [sum(s["pred"] == s["label"] == "yes" for s in samples if s.get("split") == k) for k in report.POPE_SPLITS]
    yes = [sum(s["pred"] == "yes" for s in samples if s.get("split") == k) for k in report.POPE_SPLITS]
    assert f1 == pytest.approx(np.mean([2 * t / (y + 100) for t, y in zip(tp, yes)]))
    assert len(report.item_rows(samples, "POPE adv")) == 200
    chair = np.array(list(report.item_rows(samples, "CHAIR_i").values())).sum(0)
    assert chair[0] / chair[1] == pytest.approx((_W < 0.1).mean())
    llava = np.array(list(report.item_rows(samples, "LLaVA-W").values())).sum(0)
    assert llava[0] / llava[1] == pytest.approx(60.0)


def test_power_table_and_positive_control(runs_root):
    runs = report.collect(runs_root)
    power = report.power_table(runs).set_index("column")
    assert set(power.index) == set(report.COLUMNS) - {"MMHal"}   # the samples hold no MMHal items
    assert (power["mde"] >= 0).all() and (power["mde_max"] >= power["mde"]).all()
    assert (power["mde_items"] >= 0).all() and (power["mde_items"] <= 2 * power["mde"]).all()
    claims = report.Claims(runs)
    items = [claims.paired("base", m, "POPE F1", resample_seeds=False)["se"]
             for m in ("dpo_povid", "online_dpo", "loss/ipo", "loss/slic")]
    assert power.loc["POPE F1", "se_items"] == pytest.approx(np.median(items))
    assert power.loc["POPE F1", "se_items"] < power.loc["POPE F1", "se"]   # the seeds' models differ
    assert power.loc["POPE F1", "comparisons"] == 4 and power.loc["POPE F1", "n_items"] == 1800
    assert report.control_status(runs)["status"] == "not run"
    for seed in range(3):   # CHAIR_i 8 % -> 4 %, recall unchanged: the control moves the base
        _run(runs_root, f"05_offline/oracle/s{seed}", seed, 0.85, chair=0.04)
    status = report.control_status(report.collect(runs_root))
    assert status["status"] == "moves" and "3 seed(s)" in status["text"]
    for seed in range(3):   # 8 % -> 7 %: beyond the noise maybe, but short of the 25 % bar
        _run(runs_root, f"05_offline/oracle/s{seed}", seed, 0.85, chair=0.07)
    assert report.control_status(report.collect(runs_root))["status"] == "does not move"


def test_a_claim_within_the_noise_is_not_shown():
    assert report._verdict([("~", "a"), ("≈", "b")])[0] == "not reproduced (no difference beyond the noise)"
    assert report._verdict([("✓", "a"), ("✗", "b"), (None, "c")])[0] == "mixed (2 of 3 claims assessed)"
    assert report._verdict([("✓", "a")]) == ("reproduced", "✓ a")
    assert report._verdict([(None, "a")])[0] == "not assessed"


def test_sweep_frame_adds_the_chains_reference_point(runs_root):
    runs = report.collect(runs_root)
    frame = report.sweep_frame(runs, "size", "p:size", ("dpo_povid", "pairs"))
    f1 = frame[frame["column"] == "POPE F1"]
    assert sorted(f1["value"].unique()) == [100, 768, 3000]
    assert len(f1[f1["value"] == 768]) == 3
    fig = report.sweep_figure(frame, "pairs", log_x=True)
    assert len(fig.axes) == 4
    assert report.sweep_frame(runs, "rho_th", "p:rho_th").empty


def test_a_column_one_run_lacks_takes_the_interval_of_the_run_that_has_it(runs_root):
    _run(runs_root, "06_online/mixed/s1", 1, 0.84)
    io.write_json(runs_root / "06_online/mixed/s0/metrics.json", {"eval/chair/chair_i": 0.07})
    io.write_json(runs_root / "06_online/mixed/s0/params.json", {"seed": 0})
    io.write_json(runs_root / "06_online/mixed/s0/complete.json", {})
    summary = report.summarize(report.collect(runs_root))
    row = summary.loc[("mixed", "POPE F1")]
    assert (row["mean"], row["low"], row["high"], row["n"], row["interval"]) == (
        pytest.approx(84.0), pytest.approx(83.0), pytest.approx(85.0), 1, "items")
    assert summary.loc[("mixed", "CHAIR_i")]["n"] == 2


def test_paired_frame_and_figure_show_each_model_against_the_base(runs_root):
    claims = report.Claims(report.collect(runs_root))
    frame = report.paired_frame(claims, ["base", "dpo_povid", "online_dpo", "mixed"], ["POPE F1", "CHAIR_i"])
    assert list(frame["model"]) == ["dpo_povid", "online_dpo"] * 2    # the base and models not run are left out
    povid = frame.set_index(["model", "column"]).loc[("dpo_povid", "POPE F1")]
    assert povid["value"] == pytest.approx(claims.paired("base", "dpo_povid", "POPE F1")["value"])
    assert povid["low"] > 0 and povid["n_seeds"] == 3                 # 80 % -> 85 % on the same questions
    fig = report.paired_figure(frame)
    assert [ax.get_title() for ax in fig.axes] == ["POPE F1 − base", "CHAIR_i − base"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["online_dpo", "dpo_povid"]


def test_data_draws_read_from_the_prefs_each_seed_trained_on(tmp_path):
    assert report.data_draws(tmp_path) == "one seed" and set(report.DATA_NOTES) == {"one seed", "shared", "per-seed"}
    for seed in (0, 1):
        _run(tmp_path, f"05_offline/povid/s{seed}", seed, 0.85, params={"prefs": "02_preference_data/s0/povid.jsonl"})
    assert report.data_draws(tmp_path) == "shared"
    _run(tmp_path, "05_offline/bdhs/s0", 0, 0.85, params={"prefs": "03_bdhs/s0/bdhs.jsonl"})
    _run(tmp_path, "05_offline/bdhs/s1", 1, 0.85, params={"prefs": "03_bdhs/s1/bdhs.jsonl"})
    assert report.data_draws(tmp_path) == "per-seed"


def _rl_run(root, point, seed, f1, chair, collapsed, accuracy):
    rel = f"07_ablations/rl/{point}/s{seed}"
    _run(root, rel, seed, f1, chair=chair, params={"reward_data": point.removeprefix("rloo_"), "mode": "rloo"})
    io.write_json(root / rel / "collapse.json", {"collapsed": collapsed, "reward_hacking": collapsed,
                                                 "degenerate": False, "reward/first": 0.0, "reward/last": 1.0,
                                                 "oracle/hallucination_rate/first": 0.1,
                                                 "oracle/hallucination_rate/last": 0.3 if collapsed else 0.1})
    io.write_json(root / rel / "rm_accuracy.json", {"trained_on": "x.jsonl", "pairs": 768, "held_out": 100,
                                                    "accuracy": {k: {"accuracy": v} for k, v in accuracy.items()}})
    io.write_jsonl(root / rel / "rl_curve.jsonl", [{"step": s, "reward": s / 2, "kl": 0.1, "length": 10.0,
                                                    "oracle/hallucination_rate": 0.1, "oracle/recall": 0.8}
                                                   for s in (1, 2)])


def test_finding_6_table_7_and_the_collapse_flags(runs_root):
    for seed in range(3):
        _rl_run(runs_root, "rloo_povid", seed, 0.70, 0.12, True, {"povid": 0.9 + 0.01 * seed, "ranking": 0.5})
        _rl_run(runs_root, "rloo_ranking", seed, 0.84, 0.065, False, {"povid": 0.55, "ranking": 0.7})
        metrics = runs_root / f"07_ablations/rl/rloo_ranking/s{seed}/metrics.json"   # says no at greedy decoding
        io.write_json(metrics, {**io.read_json(metrics), "eval/pope/macro/yes_ratio": 0.01 * seed,
                                "eval/chair/recall": 0.9})
    runs = report.collect(runs_root)
    sixth = report.verdicts(runs).iloc[5]
    # collapse as claimed; povid-RM RLOO worse than the base and than the ranking one on POPE F1 and CHAIR_i; the
    # ranking one no better than DPO on POPE F1 (85 > 84) and CHAIR_i (6.0 < 6.5)
    assert sixth["evidence"].startswith("✓ collapse flagged: rl/rloo_povid 3 of 3 seeds, rl/rloo_ranking 0 of 3")
    assert sixth["verdict"] == "reproduced" and sixth["evidence"].count("✓ ") == 7
    table7 = report.reward_model_table(runs)
    assert list(table7.index) == ["povid", "ranking"] and table7.loc["povid", "povid"] == pytest.approx(0.91)
    assert table7.loc["ranking", "seeds"] == 3
    flags = report.collapse_table(runs)
    assert flags.loc["rl/rloo_povid", "collapsed"] == 3 and flags.loc["rl/rloo_ranking", "collapsed"] == 0
    assert flags.loc["rl/rloo_povid", "oracle/hallucination_rate last"] == pytest.approx(0.3)
    ranking = flags.loc["rl/rloo_ranking"]                              # the evaluation beside the flags
    assert (ranking["collapsed"], ranking["eval yes %"], ranking["eval Recall"]) == (0, 1.0, 90.0)
    assert np.isnan(flags.loc["rl/rloo_povid", "eval yes %"])           # not recorded
    curves = report.rl_curves(runs)
    assert len(curves) == 12 and set(curves["model"]) == {"rl/rloo_povid", "rl/rloo_ranking"}
    assert report.rl_curves_figure(curves) is not None
    assert "RLOO · RM on POVID-like pairs" in report.paper_table(report.summarize(runs), "Table 8").index
    for seed in range(3):                                 # the ranked-RM run collapses too: not as claimed
        io.write_json(runs_root / f"07_ablations/rl/rloo_ranking/s{seed}/collapse.json", {"collapsed": True})
    assert report.verdicts(report.collect(runs_root)).iloc[5]["evidence"].startswith("~ collapse flagged")


def test_matched_samples_move_the_bases_threshold_to_each_splits_yes_ratio():
    samples = [{"benchmark": "pope", "split": "random", "question_id": q, "label": "yes", "pred": p}
               for q, p in enumerate(["yes", "yes", "no", "no"])]
    samples += [{"benchmark": "pope", "split": "adversarial", "question_id": 0, "label": "no", "pred": "no"},
                {"benchmark": "chair", "image_id": 1}]
    margins = {("random", 0): -1.0, ("random", 1): 0.5, ("random", 2): 2.0, ("random", 3): -3.0,
               ("adversarial", 0): 4.0}
    matched = report.matched_samples(samples, margins)
    assert [(s["split"], s["question_id"], s["pred"]) for s in matched] == [
        ("random", 0, "no"), ("random", 1, "yes"), ("random", 2, "yes"), ("random", 3, "no"),   # 2 of 4 yes
        ("adversarial", 0, "no")]                                                              # 0 of 1 yes
    assert report.matched_samples(samples, {}) == []


def test_a_models_pope_gain_is_read_beyond_the_base_at_its_yes_ratio(runs_root):
    """With the base's margins, each model's POPE F1 against the base's answers at the model's yes-ratio, paired per
    item; a model that answers as the base's moved threshold does gains nothing."""
    from mmstudy.benchmarks.pope import pope_metrics

    base = io.read_jsonl(runs_root / "01_world_base" / "eval" / "samples.jsonl")
    rng = np.random.default_rng(0)
    margins = [{"split": s["split"], "question_id": s["question_id"], "margin": float(rng.normal())}
               for s in base if s["benchmark"] == "pope"]
    claims = report.Claims(report.collect(runs_root), n_boot=200)
    assert claims.beyond_matched("size/n3000") is None                       # no margins yet
    io.write_jsonl(runs_root / "01_world_base" / "eval" / "yes_margins.jsonl", margins)
    claims = report.Claims(report.collect(runs_root), n_boot=200)
    by_item = {(m["split"], m["question_id"]): m["margin"] for m in margins}
    own = [s for s in io.read_jsonl(runs_root / "07_ablations/size/n3000/s0/eval/samples.jsonl")
           if s["benchmark"] == "pope"]
    matched = report.matched_samples(own, by_item)

    def macro_f1(samples):
        return 100 * np.mean([pope_metrics([s["pred"] for s in samples if s["split"] == k],
                                           [s["label"] for s in samples if s["split"] == k])["f1"]
                              for k in report.POPE_SPLITS])

    d = claims.beyond_matched("size/n3000")
    assert d["value"] == pytest.approx(macro_f1(own) - macro_f1(matched)) and d["value"] > 5   # random margins
    assert d["reference"] == pytest.approx(macro_f1(matched)) and d["low"] > 0
    io.write_jsonl(runs_root / "01_world_base" / "eval" / "yes_margins.jsonl",    # margins that rank as it answers
                   [{**m, "margin": 1.0 if s["pred"] == "yes" else -1.0} for m, s in zip(margins, own)])
    same = report.Claims(report.collect(runs_root), n_boot=200).beyond_matched("size/n3000")
    assert same["value"] == pytest.approx(0.0) and same["low"] == pytest.approx(0.0)
    table = report.yes_ratio_table(claims, ["base", "dpo_povid", "size/n3000", "not_run"])
    assert list(table.index) == ["base", "dpo_povid", "size/n3000"]
    assert table.loc["size/n3000", "POPE F1 beyond matched"].startswith(f"{d['value']:+.2f} [")
    assert claims.beyond_matched("dpo_povid", "CHAIR_i") is None


def test_training_needed_puts_decoding_points_beside_the_aligned_models_with_their_costs(runs_root):
    _run(runs_root, "07_ablations/decoding/vcd/s0", 0, 0.83, chair=0.04)
    vcd = runs_root / "07_ablations/decoding/vcd/s0" / "metrics.json"
    io.write_json(vcd, {**io.read_json(vcd), "train/seconds": 0.0, "eval/seconds_per_item": 0.25})
    povid = runs_root / "05_offline/povid/s1" / "metrics.json"
    io.write_json(povid, {**io.read_json(povid), "train/seconds": 600.0})
    claims = report.Claims(report.collect(runs_root), n_boot=200)
    table = report.training_needed_table(claims)
    assert list(table.index) == ["VCD, no training", "DPO · POVID-like", "Online-DPO · POVID-like"]   # what ran
    d = claims.paired("base", "decoding/vcd", "CHAIR_i")
    assert table.loc["VCD, no training", "CHAIR_i"] == f"{d['value']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"
    assert d["high"] < 0 and table.loc["VCD, no training", "POPE F1 beyond yes-matched"] == "–"   # no margins
    assert table.loc["VCD, no training", "train min"] == 0 and table.loc["VCD, no training", "eval s/item"] == 0.25
    assert table.loc["DPO · POVID-like", "train min"] == 10.0                  # the one seed that recorded it
    assert np.isnan(table.loc["DPO · POVID-like", "eval s/item"])          # not recorded


def test_pope_claims_are_read_net_of_the_yes_ratio_once_the_base_has_margins(runs_root):
    """A model that is the base with its yes/no threshold moved differs from the base on POPE F1, but not net of
    the yes-ratio: `better` reads POPE claims net of it when the base's margins exist, other columns as before."""
    samples_of = lambda rel: io.read_jsonl(runs_root / rel / "eval" / "samples.jsonl")   # noqa: E731
    base = samples_of("01_world_base")
    pope = [s for s in base if s["benchmark"] == "pope"]
    rng = np.random.default_rng(1)
    margins = {(s["split"], s["question_id"]): (1.0 if s["label"] == "yes" else -1.0) + rng.normal(0, 1.2)
               for s in pope}
    io.write_jsonl(runs_root / "01_world_base" / "eval" / "yes_margins.jsonl",
                   [{"split": k[0], "question_id": k[1], "margin": v} for k, v in margins.items()])
    others = [s for s in base if s["benchmark"] != "pope"]
    half = report.matched_samples([{**s, "pred": "yes" if i % 2 else "no"} for i, s in enumerate(pope)], margins)
    io.write_jsonl(runs_root / "01_world_base" / "eval" / "samples.jsonl", half + others)  # answers by its margins
    _run(runs_root, "07_ablations/shift/yes/s0", 0, 0.8)
    more_yes = report.matched_samples([{**s, "pred": "yes" if i % 4 else "no"} for i, s in enumerate(pope)], margins)
    io.write_jsonl(runs_root / "07_ablations/shift/yes/s0/eval/samples.jsonl", more_yes + others)
    claims = report.Claims(report.collect(runs_root), n_boot=300)
    raw = claims.paired("base", "shift/yes", "POPE F1")
    net = claims.paired("base", "shift/yes", "POPE F1", net=True)
    assert report.excludes_zero(raw) and (net["value"], net["low"], net["high"]) == (0.0, 0.0, 0.0)
    mark, text = claims.better("shift/yes", "base", "POPE F1")
    assert mark == "≈" and "POPE F1 net of yes-ratio shift/yes − base +0.00" in text
    assert "net of yes-ratio" not in claims.better("dpo_povid", "base", "CHAIR_i")[1]
