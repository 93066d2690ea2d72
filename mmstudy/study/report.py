"""The study's report from run directories: every model's benchmarks over seeds, the paper's tables rebuilt on the
world, figures and a verdict per finding of the paper (§5). Pure functions of what the runs wrote; the report
notebook (`09_report`) decides what to show and where it goes.

    >>> runs = collect("runs/default")
    >>> summary = summarize(runs)
    >>> paper_table(summary, "Table 2")
    >>> verdicts(runs)

A model is named by where it was trained: `base` (01_world_base), `dpo_<dataset>` (05_offline), `<mode>`
(06_online) and `<axis>/<point>` (07_ablations). A cell is the mean over seeds with a 95 % t-interval over seeds
(`seed_interval`); a model with one seed shows the interval over items of its benchmark (bootstrap, marked "i").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mmstudy import io
from mmstudy.benchmarks.pope import MARGINS_FILE, answers_at_yes_ratio
from mmstudy.benchmarks.pope import SPLITS as POPE_SPLITS
from mmstudy.benchmarks.stats import hierarchical_paired_difference, minimal_detectable_effect, seed_interval
from mmstudy.data.review import markdown_table as rows_table
from mmstudy.training.rl_curves import CURVE_KEYS

logger = logging.getLogger(__name__)

# column -> (metric key in a run's eval metrics, scale, direction: +1 higher is better, -1 lower, 0 neither)
COLUMNS = {
    "POPE F1": ("pope/macro/f1", 100, 1),
    "POPE adv": ("pope/adversarial/accuracy", 100, 1),
    "yes %": ("pope/macro/yes_ratio", 100, 0),
    "CHAIR_i": ("chair/chair_i", 100, -1),
    "Recall": ("chair/recall", 100, 1),
    "MMHal": ("mmhal/score", 1, 1),
    "LLaVA-W": ("llava_w/relative_score", 1, 1),
}


# diagnostic -> metric key in a run's eval metrics: how much room the model leaves to alignment (`headroom`) and
# how far alignment moved it from the base on the evaluation prompts (`shift`)
DIAGNOSTICS = {
    "probe POPE acc": ("headroom/probe_pope_accuracy", 100),
    "recoverable POPE": ("headroom/recoverable_pope", 100),
    "recoverable CHAIR": ("headroom/recoverable_chair", 100),
    "KL to base": ("shift/kl_per_token", 1),
    "changed %": ("shift/changed_share", 100),
}


# cost -> metric key (train/... as it is, others under eval/) and scale: minutes of training, and the evaluation's
# wall time per sample (recorded since decoding methods were added; "–" for older evaluations)
COSTS = {"train min": ("train/seconds", 1 / 60), "eval s/item": ("seconds_per_item", 1)}


def _model_name(rel: Path) -> tuple[str, int | None] | None:
    """(model name, seed) of a run directory relative to the runs root, None for a data stage's."""
    parts = rel.parts
    seed = int(parts[-1][1:]) if parts[-1].startswith("s") and parts[-1][1:].isdigit() else None
    if parts[0] == "01_world_base":
        return "base", seed
    if parts[0] == "05_offline" and len(parts) == 3:
        return f"dpo_{parts[1]}", seed
    if parts[0] == "06_online" and len(parts) == 3:
        return parts[1], seed
    if parts[0] == "07_ablations" and len(parts) == 4:
        return f"{parts[1]}/{parts[2]}", seed
    return None


def collect(runs_root: str | Path) -> pd.DataFrame:
    """One row per complete model run under `runs_root`: model, seed, run_dir, pairs (trained on), its params
    (`p:<name>`) and its eval metrics (the keys of `COLUMNS` and their item intervals, `<column> lo` /
    `<column> hi`)."""
    root = Path(runs_root)
    rows = []
    for marker in sorted(root.glob("**/complete.json")):
        run = marker.parent
        named = _model_name(run.relative_to(root))
        if named is None:
            continue
        metrics = io.read_json(run / "metrics.json")
        params = io.read_json(run / "params.json")
        name, seed = named
        row = {"model": name, "seed": seed if seed is not None else params.get("seed"), "run_dir": str(run),
               "pairs": metrics.get("train/pairs")}
        row |= {f"p:{k}": v for k, v in params.items() if not isinstance(v, list)}
        for column, (key, scale, _) in COLUMNS.items():
            value = metrics.get(f"eval/{key}")
            row[column] = np.nan if value is None else scale * value
            for side, suffix in (("lo", "low"), ("hi", "high")):
                bound = metrics.get(f"eval/{key}_ci95_{suffix}")
                row[f"{column} {side}"] = np.nan if bound is None else scale * bound
        for column, (key, scale) in {**DIAGNOSTICS, **COSTS}.items():
            value = metrics.get(key if key.startswith("train/") else f"eval/{key}")
            row[column] = np.nan if value is None else scale * value
        rows.append(row)
    if not rows:
        raise io.DataError(f"{root}: no complete model runs (01_world_base, 05_offline, 06_online, 07_ablations)")
    return pd.DataFrame(rows)


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per model and column: mean, low, high (95 % over seeds; with one seed, over items), n (seeds) and the kind
    of interval ("seeds" or "items"). Indexed by (model, column)."""
    out = []
    for model, group in runs.groupby("model", sort=False):
        for column in COLUMNS:
            values = group[column].dropna().to_numpy()
            if not len(values):
                continue
            if len(values) > 1:
                ci = seed_interval(values)
                low, high, kind = ci["low"], ci["high"], "seeds"
            else:
                row = group[group[column].notna()].iloc[0]
                low, high = row[f"{column} lo"], row[f"{column} hi"]
                kind = "items" if np.isfinite(low) else "none"
            out.append({"model": model, "column": column, "mean": float(values.mean()), "low": low, "high": high,
                        "n": len(values), "interval": kind})
    return pd.DataFrame(out).set_index(["model", "column"])


def resolve(summary: pd.DataFrame, model: str) -> str:
    """A table's model name; "<axis>/*" is the first point of that axis that ran (each profile's sweep names its
    own, e.g. the weak annotator), or the name itself when none did."""
    if not model.endswith("/*"):
        return model
    ran = [m for m in dict.fromkeys(summary.index.get_level_values("model")) if m.startswith(model[:-1])]
    return ran[0] if ran else model


def cell(summary: pd.DataFrame, model: str, column: str, digits: int = 1) -> str:
    """The cell text: "mean [low, high]" ("i" after an interval over items), "–" when the model or the column is
    missing."""
    if (model, column) not in summary.index:
        return "–"
    r = summary.loc[(model, column)]
    text = f"{r['mean']:.{digits}f}"
    if r["interval"] != "none" and np.isfinite(r["low"]):
        text += f" [{r['low']:.{digits}f}, {r['high']:.{digits}f}]" + ("i" if r["interval"] == "items" else "")
    return text


CONTROL = "dpo_oracle"   # the positive control: DPO on the base's own samples ranked by the world's oracle


@dataclass(frozen=True)
class TableSpec:
    title: str
    rows: tuple[tuple[str, str], ...]    # (row label, model name)
    note: str = ""


# The paper's tables on the world. Row labels name the world's counterpart of the paper's data: POVID-like
# (targeted corruptions of y+), ranking (VLFeedback-like), correction (RLHF-V-like), ranked + corrupted
# (VLFeedbackCorrupted-like); the annotator is the world's oracle with an error rate.
TABLES = {
    "Table 2": TableSpec("Main results", (
        ("base", "base"),
        ("positive control: DPO · oracle-ranked own samples", CONTROL),
        ("DPO · POVID-like", "dpo_povid"),
        ("Online-DPO · POVID-like", "online_dpo"),
        ("Mixed-DPO · POVID-like", "mixed"),
        ("DPO · BDHS", "dpo_bdhs"),
        ("DPO · Online-BDHS", "online/online_bdhs"),
        ("DPO · Online-BDHS ∪ POVID-like (Avg-DPO)", "online/online_bdhs_avg"),
        ("DPO · ranking (VLFeedback-like)", "data/ranking"),
        ("DPO · ranked + corrupted (VLFeedbackCorrupted-like)", "data/ranked_corrupted"),
    )),
    "Table 6": TableSpec("BDHS ablations (prompts, images and y+ of the POVID-like pairs; Avg-DPO with two "
                         "rejected)", (
        ("base", "base"),
        ("ỹ− BDHS_noise (offline)", "bdhs/noise"),
        ("ỹ− BDHS_attn (offline)", "dpo_bdhs"),
        ("ỹ− BDHS_attn (online)", "online/online_bdhs"),
        ("y− POVID-like, plain DPO", "dpo_povid"),
        ("y− POVID-like + POVID-style distortion", "povid_plus/povid"),
        ("y− POVID-like + BDHS_noise (offline)", "povid_plus/noise"),
        ("y− POVID-like + BDHS_attn (offline)", "povid_plus/attn"),
        ("y− POVID-like + BDHS_attn (online)", "online/online_bdhs_avg"),
    ), "The offline BDHS rows use LLaVA-Instruct first turns of the world (the chain's BDHS data); the paper "
       "applies BDHS to POVID's prompts."),
    "Table 8": TableSpec("RL-based alignment on the POVID-like prompts (the sweep's `rl` axis)", (
        ("base", "base"),
        ("DPO · POVID-like", "dpo_povid"),
        ("RLOO · RM on POVID-like pairs", "rl/rloo_povid"),
        ("RLOO · RM on ranking (VLFeedback-like)", "rl/rloo_ranking"),
        ("GRPO · the world's exact reward (beyond the paper)", "rl/grpo"),
    ), "The paper marks RLOO with a POVID reward model 'collapse' instead of numbers; here every run is "
       "evaluated, and `collapse.json` and the RL curves below say whether it collapsed."),
    "Table 9": TableSpec("Online-DPO and Mixed-DPO (oracle annotator, 5 % errors)", (
        ("base", "base"),
        ("DPO · POVID-like", "dpo_povid"),
        ("Online-DPO · POVID-like", "online_dpo"),
        ("Mixed-DPO · POVID-like", "mixed"),
        ("DPO · correction (RLHF-V-like)", "data/correction"),
        ("Online-DPO · correction", "correction/online_dpo"),
        ("Mixed-DPO · correction", "correction/mixed"),
    )),
    "Table 11": TableSpec("Online-DPO on POVID-like prompts: strong vs weak annotator", (
        ("base", "base"),
        ("oracle, 5 % errors", "online_dpo"),
        ("weaker annotator (the sweep's `annotator` point: oracle with 20 % errors)", "annotator/*"),
    )),
    "Table 12": TableSpec("Offline objectives on POVID-like pairs", (
        ("base", "base"),
        ("DPO", "dpo_povid"),
        ("IPO", "loss/ipo"),
        ("SLiC", "loss/slic"),
    )),
    "Table 15": TableSpec("More offline-BDHS ablations", (
        ("base", "base"),
        ("plain DPO · POVID-like", "dpo_povid"),
        ("masking only (no guidance), ρ = 0.98", "unguided/rho0.98"),
        ("masking only (no guidance), ρ = 0.99", "bdhs/unguided"),
        ("BDHS_attn ρ = 0 (nothing masked)", "rho_th/rho0"),
        ("BDHS_attn ρ = 0.98", "rho_th/rho0.98"),
        ("BDHS_attn ρ = 0.99", "dpo_bdhs"),
        ("BDHS_attn ρ = 1.0", "rho_th/rho1"),
        ("BDHS_noise N = 100", "noise_steps/n100"),
        ("BDHS_noise N = 500", "bdhs/noise"),
        ("BDHS_attn N_BDHS = 1", "n_bdhs/n1"),
    )),
}


def paper_table(summary: pd.DataFrame, name: str, columns: Sequence[str] = tuple(COLUMNS)) -> pd.DataFrame:
    """One of `TABLES` as strings (`cell`), rows in the paper's order; a row whose model did not run shows "–"."""
    spec = TABLES[name]
    frame = pd.DataFrame([[cell(summary, resolve(summary, model), c) for c in columns] for _, model in spec.rows],
                         index=[label for label, _ in spec.rows], columns=list(columns))
    frame.index.name = f"{name}: {spec.title}"
    return frame


def axis_tables(summary: pd.DataFrame, columns: Sequence[str] = tuple(COLUMNS)) -> dict[str, pd.DataFrame]:
    """Every ablation axis that ran as a table of its points (`cell` strings), the base first: the axes the paper's
    tables leave out (beta, dataset size) included."""
    models = list(dict.fromkeys(summary.index.get_level_values("model")))
    axes = sorted({m.split("/")[0] for m in models if "/" in m})
    tables = {}
    for axis in axes:
        rows = ["base"] + [m for m in models if m.startswith(f"{axis}/")]
        frame = pd.DataFrame([[cell(summary, m, c) for c in columns] for m in rows], index=rows,
                             columns=list(columns))
        frame.index.name = f"axis {axis}"
        tables[axis] = frame
    return tables


def diagnostics_table(runs: pd.DataFrame, models: Sequence[str]) -> pd.DataFrame:
    """Per model (those of `models` that ran): the mean over its seeds of every `DIAGNOSTICS` column ("–" where no
    run has it): the headroom probes and the shift from the base."""
    rows = {}
    for model in models:
        part = runs[runs["model"] == model]
        if not part.empty:
            rows[model] = [f"{part[c].mean():.{3 if c == 'KL to base' else 1}f}" if part[c].notna().any() else "–"
                           for c in DIAGNOSTICS]
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=list(DIAGNOSTICS))
    frame.index.name = "model"
    return frame


def table_coverage(summary: pd.DataFrame) -> dict[str, str]:
    """Per table: "k of n rows" with results."""
    models = set(summary.index.get_level_values("model"))
    return {name: f"{sum(resolve(summary, m) in models for _, m in spec.rows)} of {len(spec.rows)} rows"
            for name, spec in TABLES.items()}


# ------------------------------------------------------------------------------------------- findings and verdicts


def _mean(summary: pd.DataFrame, model: str, column: str) -> float | None:
    return float(summary.loc[(model, column), "mean"]) if (model, column) in summary.index else None


# ---------------------------------------------------------------------------------- paired per-item comparisons


def _by_split(sample: dict, num: float, den: float) -> list[float]:
    """A POPE row with one (numerator, denominator) slot per split, so sums give every split's ratio."""
    row = [0.0] * (2 * len(POPE_SPLITS))
    k = POPE_SPLITS.index(sample["split"])
    row[2 * k], row[2 * k + 1] = num, den
    return row


def _ratio_of_sums(sums: np.ndarray) -> np.ndarray:
    return sums[..., 0] / sums[..., 1]


def _macro_ratio(sums: np.ndarray) -> np.ndarray:
    """The mean over splits of each split's ratio of sums (POPE's macro F1 and yes-ratio)."""
    return np.nanmean(sums[..., 0::2] / sums[..., 1::2], axis=-1)


def _yes(sample: dict) -> float:
    return float(sample["pred"] == "yes")


# column -> (benchmark, sample -> (item key, row) or None, statistic of summed rows): every column of `COLUMNS`
# as a function of sums of per-item rows, so seeds and items can be resampled jointly (`Claims.paired`).
ITEM_ROWS = {
    "POPE F1": ("pope", lambda s: ((s["split"], s["question_id"]), _by_split(
        s, 2 * _yes(s) * (s["label"] == "yes"), _yes(s) + (s["label"] == "yes"))), _macro_ratio),
    "POPE adv": ("pope", lambda s: ((s["split"], s["question_id"]), [float(s["pred"] == s["label"]), 1.0])
                 if s["split"] == "adversarial" else None, _ratio_of_sums),
    "yes %": ("pope", lambda s: ((s["split"], s["question_id"]), _by_split(s, _yes(s), 1.0)), _macro_ratio),
    "CHAIR_i": ("chair", lambda s: (s["image_id"], [len(s["reference"]["hallucinated"]),
                                                    len(s["reference"]["mentioned"])]), _ratio_of_sums),
    "Recall": ("chair", lambda s: (s["image_id"], [len(s["reference"]["covered"]), len(s["reference"]["gt"])]),
               _ratio_of_sums),
    "MMHal": ("mmhal", lambda s: (s["index"], [float(s["rating"]), 1.0]) if s.get("rating") is not None else None,
              _ratio_of_sums),
    "LLaVA-W": ("llava_w", lambda s: (s["question_id"], [100.0 * s["scores"][1], s["scores"][0]])
                if s.get("scores") else None, _ratio_of_sums),
}


def item_rows(samples: Sequence[dict], column: str) -> dict:
    """{item key: row} of one run's samples for `column` (`ITEM_ROWS`)."""
    benchmark, row_of, _ = ITEM_ROWS[column]
    rows = (row_of(s) for s in samples if s.get("benchmark") == benchmark)
    return dict(r for r in rows if r is not None)


def _read_samples(run_dir: str) -> list[dict]:
    path = io.stored(Path(run_dir) / "eval" / "samples.jsonl")
    return io.read_jsonl(path) if path else []


def _net(statistic):
    """A statistic of rows that hold a model's row and, after it, the base's at the model's yes-ratio (`Claims._rows`
    with net): the model's value minus the base's."""
    def net(sums: np.ndarray) -> np.ndarray:
        half = sums.shape[-1] // 2
        return statistic(sums[..., :half]) - statistic(sums[..., half:])
    return net


def matched_samples(samples: Sequence[dict], margins: dict) -> list[dict]:
    """The base model's POPE answers at the per-split yes-ratio of a model's `samples`: its yes/no threshold moved
    (`answers_at_yes_ratio` over `margins`, {(split, question_id): log-odds}), as samples of the same questions
    (the yes-ratio control of docs/decoding.md); questions without a margin are left out."""
    out = []
    for split in POPE_SPLITS:
        rows = [s for s in samples if s.get("benchmark") == "pope" and s["split"] == split
                and (split, s["question_id"]) in margins]
        if rows:
            ratio = sum(s["pred"] == "yes" for s in rows) / len(rows)
            answers = answers_at_yes_ratio([margins[(split, s["question_id"])] for s in rows], ratio)
            out += [{**s, "pred": a} for s, a in zip(rows, answers)]
    return out


def yes_ratio_table(claims: "Claims", models: Sequence[str], columns: Sequence[str] = ("POPE F1", "POPE adv")
                    ) -> pd.DataFrame:
    """Per model that ran: its yes %, and per POPE column its value, the base's at the same yes-ratio ("matched")
    and the difference with its paired 95 % interval (`Claims.beyond_matched`); empty without the base's
    margins."""
    rows = []
    for model in models:
        found = {c: claims.beyond_matched(model, c) for c in columns}
        if any(found.values()):
            row = {"model": model, "yes %": _mean(claims.summary, model, "yes %")}
            for column, d in found.items():
                if d is not None:
                    row |= {column: _mean(claims.summary, model, column), f"{column} matched": d["reference"],
                            f"{column} beyond matched": _interval(d)}
            rows.append(row)
    return pd.DataFrame(rows).set_index("model") if rows else pd.DataFrame()


# "Is training needed?": decoding without training beside the aligned models (row label, model name)
TRAINING_NEEDED = (
    ("VCD, no training", "decoding/vcd"),
    ("PAI, no training", "decoding/pai"),
    ("positive control: DPO · oracle-ranked own samples", CONTROL),
    ("DPO · POVID-like", "dpo_povid"),
    ("DPO · BDHS", "dpo_bdhs"),
    ("mDPO · POVID-like", "mdpo/povid"),
    ("mDPO · BDHS", "mdpo/bdhs"),
    ("Online-DPO · POVID-like", "online_dpo"),
    ("Mixed-DPO · POVID-like", "mixed"),
)


def _interval(d: dict | None) -> str:
    return "–" if d is None else f"{d['value']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"


def training_needed_table(claims: "Claims", rows: Sequence[tuple[str, str]] = TRAINING_NEEDED,
                          columns: Sequence[str] = ("POPE F1", "CHAIR_i", "Recall", "MMHal", "LLaVA-W")
                          ) -> pd.DataFrame:
    """Each row's model minus the base per column, paired per item with its 95 % interval (`Claims.paired`), its
    POPE F1 beyond the base at the same yes-ratio (`Claims.beyond_matched`), and its costs (`COSTS`, means over
    its seeds, to 3 significant digits); models that did not run are left out."""
    out = []
    for label, model in rows:
        if model not in claims.dirs:
            continue
        row = {"model": label, **{c: _interval(claims.paired("base", model, c)) for c in columns},
               "POPE F1 beyond yes-matched": _interval(claims.beyond_matched(model))}
        runs = claims.runs[claims.runs["model"] == model]
        row |= {cost: float(f"{runs[cost].mean():.3g}") if runs[cost].notna().any() else None for cost in COSTS}
        out.append(row)
    return pd.DataFrame(out).set_index("model") if out else pd.DataFrame()


def excludes_zero(d: dict | None) -> bool:
    """Whether a paired difference (`Claims.paired`) is beyond the noise: its 95 % interval excludes zero."""
    return d is not None and (d["low"] > 0 or d["high"] < 0)


class Claims:
    """Claims about pairs of models, each decided on per-item differences: the same POPE questions, caption images
    and judged items (those every seed of both models answered), pooled over the seeds both models ran (the base
    model is one run whatever the seed), with a bootstrap over seeds and, crossed with them, items
    (`hierarchical_paired_difference`) for the 95 % interval."""

    def __init__(self, runs: pd.DataFrame, n_boot: int = 2000):
        self.runs, self.summary, self.n_boot = runs, summarize(runs), n_boot
        self.dirs = {m: dict(zip(g["seed"], g["run_dir"])) for m, g in runs.groupby("model")}
        self._samples: dict[str, list[dict]] = {}
        self._paired: dict[tuple, dict | None] = {}
        self._margins: dict | None = None

    def samples(self, run_dir: str) -> list[dict]:
        if run_dir not in self._samples:
            self._samples[run_dir] = _read_samples(run_dir)
        return self._samples[run_dir]

    def _runs_by_seed(self, a: str, b: str) -> list[tuple[str, str]]:
        """(run of a, run of b) per seed both ran; the base's single run pairs with every seed of the other."""
        da, db = self.dirs[a], self.dirs[b]
        if a == "base" or b == "base":
            base, other = (da, db) if a == "base" else (db, da)
            only = next(iter(base.values()))
            pairs = [(only, run) for _, run in sorted(other.items())]
            return pairs if a == "base" else [(x, y) for y, x in pairs]
        return [(da[s], db[s]) for s in sorted(set(da) & set(db))]

    def paired(self, a: str, b: str, column: str, resample_seeds: bool = True, net: bool = False) -> dict | None:
        """`column` of b minus a in the column's units (points for percentages), with its hierarchical-bootstrap
        interval; None when either model did not run or they share no paired item. resample_seeds=False holds the
        seeds' runs fixed and resamples the items only (`power_table`'s item share). net=True (POPE columns, with
        the base's margins): each model's value net of the base's at that model's yes-ratio (`matched_samples`),
        so that a difference in how often the two say "yes" does not count."""
        key = (a, b, column, resample_seeds, net)
        if key not in self._paired:
            self._paired[key] = None
            if a in self.dirs and b in self.dirs:
                rows = [(self._rows(run_a, column, net), self._rows(run_b, column, net))
                        for run_a, run_b in self._runs_by_seed(a, b)]
                statistic = _net(ITEM_ROWS[column][2]) if net else ITEM_ROWS[column][2]
                self._paired[key] = self._difference(rows, column, resample_seeds, statistic)
        return self._paired[key]

    def _rows(self, run: str, column: str, net: bool) -> dict:
        """{item: row} of a run for `column`; with `net`, each row followed by the base's row at the run's
        yes-ratio (`_net` reads the difference)."""
        own = item_rows(self.samples(run), column)
        if not net:
            return own
        matched = self._matched_rows(run, column)
        return {k: np.concatenate([own[k], matched[k]]) for k in own if k in matched}

    def _matched_rows(self, run: str, column: str) -> dict:
        """{item: row} for `column` of the base's answers at the run's per-split yes-ratio (`matched_samples`)."""
        return item_rows(matched_samples(self.samples(run), self.margins()), column)

    def nets(self, column: str) -> bool:
        """Whether claims on `column` are read net of the yes-ratio: a POPE column, with the base's margins."""
        return ITEM_ROWS[column][0] == "pope" and bool(self.margins())

    def _difference(self, rows: list[tuple[dict, dict]], column: str, resample_seeds: bool = True,
                    statistic=None) -> dict | None:
        """b - a over (item rows of a, item rows of b) per seed, on the items every seed of both answered (items
        are crossed with seeds in the bootstrap), in the column's units, with a's own value ("reference", the mean
        over seeds); None without a common item. `statistic`: of summed rows (the column's by default)."""
        statistic = statistic or ITEM_ROWS[column][2]
        common = sorted(set.intersection(*(set(ra) & set(rb) for ra, rb in rows)), key=repr) if rows else []
        if not common:
            return None
        xs = [np.array([ra[k] for k in common]) for ra, _ in rows]
        ys = [np.array([rb[k] for k in common]) for _, rb in rows]
        d = hierarchical_paired_difference(xs, ys, statistic, n_boot=self.n_boot, resample_seeds=resample_seeds)
        if not np.isfinite(d["low"]):   # undefined: e.g. CHAIR_i with no mention
            return None
        scale = COLUMNS[column][1]
        return {**d, **{k: scale * d[k] for k in ("value", "low", "high", "se")},
                "reference": scale * float(np.mean([statistic(x.sum(axis=0)) for x in xs]))}

    def margins(self) -> dict:
        """The base model's yes/no log-odds per POPE question, {(split, question_id): margin}, from the base run's
        eval/yes_margins.jsonl (`stages.yes_margins`); {} when there is none."""
        if self._margins is None:
            base = self.dirs.get("base")
            path = io.stored(Path(next(iter(base.values()))) / "eval" / MARGINS_FILE) if base else None
            rows = io.read_jsonl(path, required=("split", "question_id", "margin")) if path else []
            self._margins = {(r["split"], r["question_id"]): r["margin"] for r in rows}
        return self._margins

    def beyond_matched(self, model: str, column: str = "POPE F1") -> dict | None:
        """`column` (a POPE column) of `model` minus the base model's at the same yes-ratio (`matched_samples`: the
        base's threshold moved to the model's per-split yes-ratio, seed by seed), paired per item with the
        hierarchical bootstrap; "reference" holds the baseline's value. None without the base's margins."""
        if not self.nets(column) or model not in self.dirs:
            return None
        rows = [(self._matched_rows(run, column), self._rows(run, column, net=False))
                for _, run in sorted(self.dirs[model].items())]
        return self._difference(rows, column)

    def better(self, a: str, b: str, column: str) -> tuple[str | None, str]:
        """Whether model a is better than model b on `column`, in the column's direction: "✓" when the paired 95 %
        interval of a - b excludes zero in that direction, "✗" when it excludes zero against it, "~" better and "≈"
        worse within the noise; None when either did not run or they share no item. With the evidence."""
        a, b = resolve(self.summary, a), resolve(self.summary, b)
        for m in (a, b):
            if m not in self.dirs or _mean(self.summary, m, column) is None:
                return None, f"{column}: {m} not run"
        net = self.nets(column)
        d = self.paired(b, a, column, net=net)
        if d is None:
            return None, f"{column}: {a} and {b} share no seed with per-item samples"
        sign = COLUMNS[column][2] or 1
        low, high = sorted((sign * d["low"], sign * d["high"]))
        mark = "✓" if low > 0 else "✗" if high < 0 else "~" if sign * d["value"] > 0 else "≈"
        return mark, (f"{column}{' net of yes-ratio' * net} {a} − {b} {d['value']:+.2f} [{d['low']:+.2f}, "
                      f"{d['high']:+.2f}] ({d['n_seeds']} seed{'s' * (d['n_seeds'] > 1)}, {d['n_items']} items)")

    def not_worse(self, a: str, b: str, column: str) -> tuple[str | None, str]:
        """Model a is not worse than model b: "✓" when a's estimate is at least b's, "~" when it is worse within the
        noise, "✗" beyond it."""
        mark, text = self.better(a, b, column)
        return {None: None, "✓": "✓", "~": "✓", "≈": "~", "✗": "✗"}[mark], f"{text} ({a} not worse)"

    def moved(self, model: str) -> int:
        """Columns on which `model` differs from the base beyond the noise (paired interval excludes zero)."""
        return sum(excludes_zero(self.paired("base", model, c)) for c in COLUMNS)

    def collapse(self, constructed: str, ranked: str) -> tuple[str | None, str]:
        """RLOO with the constructed-data reward model collapses (`mmstudy.training.rl_curves`) and the one with
        the ranked-data reward model does not: "✓" when every seed of the first collapsed and none of the second,
        "✗" when no seed of the first collapsed, "~" otherwise."""
        flags = {m: collapse_seeds(self.runs, m) for m in (constructed, ranked)}
        if not all(flags.values()):
            return None, f"collapse: {' or '.join(m for m, f in flags.items() if not f)} not run"
        (a, n), (b, m) = ((sum(f), len(f)) for f in flags.values())
        mark = "✓" if a == n and b == 0 else "✗" if a == 0 else "~"
        return mark, f"collapse flagged: {constructed} {a} of {n} seeds, {ranked} {b} of {m}"

    def size(self) -> tuple[str | None, str]:
        """The largest preference set moves more columns away from the base (beyond the noise) than the smallest;
        with as many, "~" / "≈" by the mean relative change (`_drift`)."""
        points = _sweep_points(self.runs, "size", "p:size")
        if len(points) < 2:
            return None, "size sweep: fewer than two sizes run"
        (x0, m0), (x1, m1) = points[0], points[-1]
        k0, k1 = self.moved(m0), self.moved(m1)
        d0, d1 = _drift(self.summary, m0), _drift(self.summary, m1)
        mark = "✓" if k1 > k0 else "✗" if k1 < k0 else "~" if d1 > d0 else "≈"
        return mark, f"columns moved from the base beyond the noise: {x0:g} pairs {k0}, {x1:g} pairs {k1}; mean " \
                     f"relative change {d0:.3f} vs {d1:.3f}"


def _verdict(claims: Sequence[tuple[str | None, str]]) -> tuple[str, str]:
    """reproduced: every claim holds beyond the noise; not reproduced: none does; mixed: some do. A claim that
    holds only within the noise counts as not shown."""
    known = [mark for mark, _ in claims if mark is not None]
    evidence = "; ".join(f"{mark or '?'} {text}" for mark, text in claims)
    if not known:
        return "not assessed", evidence
    shown = sum(mark == "✓" for mark in known)
    verdict = "reproduced" if shown == len(known) else "not reproduced" if shown == 0 else "mixed"
    if verdict == "not reproduced" and "✗" not in known:
        verdict += " (no difference beyond the noise)"
    if len(known) < len(claims):
        verdict += f" ({len(known)} of {len(claims)} claims assessed)"
    return verdict, evidence


def _drift(summary: pd.DataFrame, model: str) -> float:
    """Mean absolute change from the base over the columns both have, each in units of the base's value."""
    changes = [abs(_mean(summary, model, c) - _mean(summary, "base", c)) / max(abs(_mean(summary, "base", c)), 1e-9)
               for c in COLUMNS if _mean(summary, model, c) is not None and _mean(summary, "base", c) is not None]
    return float(np.mean(changes)) if changes else float("nan")


FINDINGS = (
    "1. Offline vs online: offline DPO helps the hallucination metrics most, online DPO open-ended quality "
    "(LLaVA-W), and Mixed-DPO combines both",
    "2. Annotator strength matters: a stronger annotator gives better online DPO",
    "3. Dataset size confounds comparisons: larger preference sets drift further from the base",
    "4. Data desiderata: model-written chosen responses work as well as the strongest model's; targeted, minimal "
    "corruptions are very effective; novel prompts are unnecessary (SFT prompts work as well)",
    "5. BDHS: from SFT data alone, offline BDHS beats DPO on POVID; masking beats noise; guidance matters",
    "6. RL: RMs trained on constructed data make RLOO/PPO collapse; RMs on ranked data are stable but no better "
    "than DPO",
    "7. Objectives: IPO and SLiC also work, SLiC best on the hallucination metrics, IPO on LLaVA-W",
)


CONTROL_BAR = {"chair_drop": 0.25, "recall_loss": 1.0}   # the control must cut CHAIR_i by >= 25 % of the base's
# value (paired interval below zero) and lose at most 1 point of recall


def control_status(runs: pd.DataFrame, claims: "Claims | None" = None) -> dict:
    """Does the positive control (`CONTROL`) move the base? {"status": "moves" | "does not move" | "not run",
    "text"}: it moves when its CHAIR_i falls by at least 25 % of the base's value with the paired 95 % interval
    below zero, losing at most 1 point of recall. A study whose control does not move cannot decide its claims."""
    c = claims or Claims(runs)
    chair, recall = c.paired("base", CONTROL, "CHAIR_i"), c.paired("base", CONTROL, "Recall")
    base = _mean(c.summary, "base", "CHAIR_i")
    if chair is None or recall is None or base is None:
        return {"status": "not run", "text": f"the positive control ({CONTROL}) did not run: the study's "
                                             "sensitivity is unknown"}
    cut = -chair["value"] / base if base else float("nan")
    moves = chair["high"] < 0 and cut >= CONTROL_BAR["chair_drop"] and recall["value"] >= -CONTROL_BAR["recall_loss"]
    text = (f"CHAIR_i {chair['value']:+.2f} [{chair['low']:+.2f}, {chair['high']:+.2f}] points ({100 * cut:.0f} % of "
            f"the base's {base:.2f}; bar ≥ {100 * CONTROL_BAR['chair_drop']:.0f} %), recall {recall['value']:+.2f} "
            f"[{recall['low']:+.2f}, {recall['high']:+.2f}] (bar ≥ −{CONTROL_BAR['recall_loss']:g}); "
            f"{chair['n_seeds']} seed(s)")
    return {"status": "moves" if moves else "does not move", "text": text}


def power_table(runs: pd.DataFrame, claims: "Claims | None" = None, seeds: int | None = None) -> pd.DataFrame:
    """Per column: the minimal detectable effect (80 % power, 95 % level) of a paired comparison with the base,
    from the bootstrap standard errors of the models run with `seeds` seeds (default: the most any model ran; the
    median over them, and the largest), in the column's units.

    The standard error has two parts: the items (which questions and images the benchmark asks) and the seeds (the
    trained models differ from seed to seed). `se_items` and `mde_items` hold the seeds' runs fixed and resample
    the items only: the part a larger evaluation set reduces. When the seeds' models do not differ the two agree;
    the gap is the seeds' part, which only more seeds, one data draw shared by the seeds or steadier training
    reduce. Columns: column, comparisons, n_seeds, n_items, se, mde, mde_max, se_items, mde_items."""
    c = claims or Claims(runs)
    seeds = seeds or max((len(d) for m, d in c.dirs.items() if m != "base"), default=0)
    models = [m for m, d in c.dirs.items() if m != "base" and len(d) == seeds]
    rows = []
    for column in COLUMNS:
        pairs = [(d, c.paired("base", m, column, resample_seeds=False))
                 for m in models if (d := c.paired("base", m, column)) is not None]
        if not pairs:
            continue
        se = np.array([d["se"] for d, _ in pairs])
        se_items = float(np.median([d["se"] for _, d in pairs]))
        rows.append({"column": column, "comparisons": len(pairs), "n_seeds": seeds,
                     "n_items": int(np.median([d["n_items"] for d, _ in pairs])), "se": float(np.median(se)),
                     "mde": minimal_detectable_effect(float(np.median(se))),
                     "mde_max": minimal_detectable_effect(float(se.max())), "se_items": se_items,
                     "mde_items": minimal_detectable_effect(se_items)})
    return pd.DataFrame(rows, columns=["column", "comparisons", "n_seeds", "n_items", "se", "mde", "mde_max",
                                       "se_items", "mde_items"])


def verdicts(runs: pd.DataFrame, claims: "Claims | None" = None) -> pd.DataFrame:
    """One row per finding of the paper (`FINDINGS`): verdict (reproduced, not reproduced, mixed, not assessed;
    `_verdict`) and the evidence, each claim marked as `Claims.better` marks it, or ? (not run)."""
    c = claims or Claims(runs)
    found = [
        [c.better("dpo_povid", "online_dpo", "POPE F1"), c.better("dpo_povid", "online_dpo", "CHAIR_i"),
         c.better("online_dpo", "dpo_povid", "LLaVA-W"), c.better("mixed", "online_dpo", "POPE F1"),
         c.better("mixed", "dpo_povid", "LLaVA-W")],
        [c.better("online_dpo", "annotator/*", col) for col in ("POPE F1", "MMHal", "LLaVA-W")],
        [c.size()],
        [c.not_worse("data/model_chosen", "data/reference_chosen", "POPE F1"),
         c.better("data/ranked_corrupted", "data/ranking", "POPE F1"),
         c.better("data/ranked_corrupted", "data/ranking", "CHAIR_i"),
         c.not_worse("data/sft_prompts", "data/ranked_corrupted", "POPE F1")],
        [c.better("dpo_bdhs", "dpo_povid", "POPE F1"), c.better("dpo_bdhs", "dpo_povid", "Recall"),
         c.better("dpo_bdhs", "bdhs/noise", "POPE F1"), c.better("dpo_bdhs", "bdhs/unguided", "MMHal")],
        [c.collapse("rl/rloo_povid", "rl/rloo_ranking"),
         *[c.better(better, "rl/rloo_povid", col) for better in ("base", "rl/rloo_ranking")
           for col in ("POPE F1", "CHAIR_i")],
         c.not_worse("dpo_povid", "rl/rloo_ranking", "POPE F1"),
         c.not_worse("dpo_povid", "rl/rloo_ranking", "CHAIR_i")],
        [c.better("loss/ipo", "base", "POPE F1"), c.better("loss/slic", "base", "POPE F1"),
         c.better("loss/slic", "dpo_povid", "POPE F1"), c.better("loss/slic", "loss/ipo", "POPE F1"),
         c.better("loss/ipo", "loss/slic", "LLaVA-W")],
    ]
    rows = []
    for finding, claims in zip(FINDINGS, found):
        verdict, evidence = _verdict(claims)
        rows.append({"finding": finding, "verdict": verdict, "evidence": evidence})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------------- figures


def _sweep_points(runs: pd.DataFrame, axis: str, param: str) -> list[tuple[float, str]]:
    """(value of `param`, model) for the points of an ablation axis, sorted by value."""
    models = runs[runs["model"].str.startswith(f"{axis}/")].drop_duplicates("model")
    if param not in models:
        return []
    return sorted((float(v), m) for v, m in zip(models[param], models["model"]))


def sweep_frame(runs: pd.DataFrame, axis: str, param: str, reference: tuple[str, float | str] | None = None
                ) -> pd.DataFrame:
    """Long frame (value, column, score, seed) of one ablation axis, plus a chain model (`reference`: its name and
    its value of the swept param, or the column holding it; e.g. the chain's BDHS run is the sweep's ρ = 0.99
    point)."""
    names = {m for _, m in _sweep_points(runs, axis, param)}
    part = runs[runs["model"].isin(names)].copy()
    if reference is not None and (not isinstance(reference[1], str) or reference[1] in runs):
        ref = runs[runs["model"] == reference[0]].copy()
        ref[param] = ref[reference[1]] if isinstance(reference[1], str) else reference[1]
        part = pd.concat([part, ref])
    if part.empty or param not in part:
        return pd.DataFrame(columns=["value", "column", "score", "seed"])
    long = part.melt(id_vars=[param, "seed"], value_vars=list(COLUMNS), var_name="column", value_name="score")
    return long.rename(columns={param: "value"}).dropna(subset=["score"])


def sweep_figure(frame: pd.DataFrame, xlabel: str, log_x: bool = False, columns: Sequence[str] = ("POPE F1",
                 "CHAIR_i", "Recall", "MMHal")):
    """One panel per column: score against the swept value (mean over seeds, 95 % band where seeds repeat)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 2.8))
    for ax, column in zip(np.atleast_1d(axes), columns):
        part = frame[frame["column"] == column]
        if not part.empty:
            sns.lineplot(data=part, x="value", y="score", marker="o", errorbar=("ci", 95), ax=ax)
        ax.set(title=column, xlabel=xlabel, ylabel="")
        if log_x:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def chain_param(runs_root: str | Path, pattern: str, key: str):
    """A param of the first run directory matching `pattern` under `runs_root` (e.g. "03_bdhs/s*"), None when no
    run matches."""
    found = sorted(Path(runs_root).glob(f"{pattern}/params.json"))
    return io.read_json(found[0]).get(key) if found else None


DATA_NOTES = {   # what a claim covers, per `data_draws`
    "shared": "**Data:** every seed trained on one draw of each preference dataset, so a claim holds for that draw "
              "and the seeds measure training alone (`mmstudy run --data-draws per-seed` draws anew per seed).",
    "per-seed": "**Data:** each seed trained on its own draw of each preference dataset: the claims hold over draws "
                "of the data.",
    "one seed": "**Data:** one seed: each claim rests on one trained model per method.",
}


def data_draws(runs_root: str | Path) -> str:
    """How the chain's seeds got their preference data, read from the prefs param of every `05_offline` run:
    "shared" (each dataset is one file that every seed trained on: a claim holds for that draw of the data),
    "per-seed" (each seed trained on its own draw: claims hold over draws of the data), or "one seed"."""
    by_variant: dict[str, set] = {}
    for path in sorted(Path(runs_root).glob("05_offline/*/s*/params.json")):
        by_variant.setdefault(path.parent.parent.name, set()).add((path.parent.name, io.read_json(path).get("prefs")))
    if all(len(runs) < 2 for runs in by_variant.values()):
        return "one seed"
    return "shared" if all(len({prefs for _, prefs in runs}) == 1 for runs in by_variant.values()) else "per-seed"


def bdhs_acceptance(runs_root: str | Path) -> pd.DataFrame:
    """Share of BDHS pairs accepted after each iteration, per BDHS run under `runs_root` (the chain's per seed and
    the ablations' data): columns source, iteration, accepted."""
    root = Path(runs_root)
    rows = []
    paths = sorted(root.glob("03_bdhs/s*/bdhs.stats.json")) + sorted(root.glob("07_ablations/data/*/*.stats.json"))
    for path in paths:
        stats = io.check_fields(io.read_json(path), ("stats",), str(path))["stats"]
        cfg = io.check_fields(stats, ("config", "accepted_share_after_iteration"), str(path))["config"]
        prompts = "POVID-like prompts" if path.name.startswith("bdhs_of_povid") else "LLaVA-Instruct"
        source = f"{cfg['variant']} ρ={cfg['rho_th']} N_BDHS={cfg['iterations']}" + \
            (f" N={cfg['noise_steps']}" if cfg["variant"] in ("noise", "povid") else "") + f", {prompts}"
        rows += [{"source": source, "run": str(path.relative_to(root)), "iteration": i + 1, "accepted": 100 * a}
                 for i, a in enumerate(stats["accepted_share_after_iteration"])]
    return pd.DataFrame(rows, columns=["source", "run", "iteration", "accepted"])


def acceptance_figure(frame: pd.DataFrame):
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(9, 3.4))
    if not frame.empty:
        sns.lineplot(data=frame, x="iteration", y="accepted", hue="source", marker="o", errorbar=("ci", 95), ax=ax)
        ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    ax.set(ylabel="% accepted (semantically different)", ylim=(0, 100), title="BDHS acceptance per iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def collapse_seeds(runs: pd.DataFrame, model: str) -> list[bool]:
    """Per seed of an RL model that ran: whether its run's collapse.json flags a collapse."""
    part = runs[runs["model"] == model]
    return [bool(io.read_json(Path(d) / "collapse.json")["collapsed"]) for d in part["run_dir"]
            if (Path(d) / "collapse.json").is_file()]


def reward_model_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 7 on the world: per RLOO run's reward-model training data, its pairwise accuracy on the
    held-out pairs of each source (rm_accuracy.json), mean over seeds (n seeds in the last column)."""
    rows = {}
    for _, r in runs.iterrows():
        path = Path(r["run_dir"]) / "rm_accuracy.json"
        if path.is_file():
            found = io.read_json(path)
            trained = r.get("p:reward_data") or Path(found["trained_on"]).stem
            rows.setdefault(trained, []).append({k: v["accuracy"] for k, v in found["accuracy"].items()})
    frame = pd.DataFrame({trained: {**pd.DataFrame(accs).mean().round(3).to_dict(), "seeds": len(accs)}
                          for trained, accs in rows.items()}).T
    frame.index.name = "RM trained on"
    return frame


def collapse_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per RL model: seeds run, and in how many the run collapsed, hacked its reward or degenerated
    (collapse.json), with the oracle's hallucination rate and the reward in the first and last quarter of the
    steps, and beside these training-time signals the evaluation's greedy yes % (POPE) and recall (means over
    seeds): a policy can collapse at greedy decoding while its samples look healthy."""
    rows = {}
    for model, part in runs.groupby("model", sort=False):
        found = [io.read_json(Path(d) / "collapse.json") for d in part["run_dir"]
                 if (Path(d) / "collapse.json").is_file()]
        if not found:
            continue
        row = {"seeds": len(found), **{k: sum(bool(f[k]) for f in found)
                                       for k in ("collapsed", "reward_hacking", "degenerate")}}
        for key in ("reward", "oracle/hallucination_rate", "oracle/recall"):
            for side in ("first", "last"):
                values = [f[f"{key}/{side}"] for f in found if f.get(f"{key}/{side}") is not None]
                row[f"{key} {side}"] = round(float(np.mean(values)), 3) if values else None
        row |= {f"eval {column}": round(float(part[column].mean()), 1) for column in ("yes %", "Recall")}
        rows[model] = row
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "model"
    return frame


def rl_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Every RL run's curve (rl_curve.jsonl): columns model, seed, step and `rl_curves.CURVE_KEYS`."""
    rows = []
    for _, r in runs.iterrows():
        path = io.stored(Path(r["run_dir"]) / "rl_curve.jsonl")
        if path:
            rows += [{"model": r["model"], "seed": r["seed"], **row} for row in io.read_jsonl(path)]
    return pd.DataFrame(rows, columns=["model", "seed", "step", "samples", *CURVE_KEYS])


def rl_curves_figure(frame: pd.DataFrame, keys: Sequence[str] = ("reward", "kl", "length",
                                                                 "oracle/hallucination_rate", "oracle/recall")):
    """RL training curves, one panel per key, one line per model (mean over seeds, 95 % band)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        if not frame.empty and frame[key].notna().any():
            sns.lineplot(data=frame, x="step", y=key, hue="model", errorbar=("ci", 95), ax=ax,
                         legend=key == keys[-1])
        ax.set(title=key, ylabel="")
        ax.grid(alpha=0.3)
    if not frame.empty and axes[0][-1].get_legend() is not None:
        axes[0][-1].legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig


def training_curves(runs: pd.DataFrame, models: Sequence[str], key: str = "rewards/margins") -> pd.DataFrame:
    """`key` per optimizer step from each run's metrics.jsonl (DPO training log): columns model, seed, step,
    value."""
    rows = []
    for _, r in runs[runs["model"].isin(models)].iterrows():
        log = io.stored(Path(r["run_dir"]) / "metrics.jsonl")
        if not log:
            continue
        rows += [{"model": r["model"], "seed": r["seed"], "step": m["step"], "value": m[key]}
                 for m in io.read_jsonl(log) if key in m]
    return pd.DataFrame(rows, columns=["model", "seed", "step", "value"])


def curves_figure(frame: pd.DataFrame, ylabel: str = "reward margin (β-scaled log-ratio)"):
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(6, 3.2))
    if not frame.empty:
        sns.lineplot(data=frame, x="step", y="value", hue="model", errorbar=("ci", 95), ax=ax)
    ax.set(ylabel=ylabel, title="reward margins during training (mean over seeds, 95 % band)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


FIGURE_COLUMNS = ("POPE F1", "CHAIR_i", "Recall", "MMHal", "LLaVA-W")


def overview_figure(summary: pd.DataFrame, models: Sequence[str], columns: Sequence[str] = FIGURE_COLUMNS):
    """Bars per model and column with the 95 % interval as whiskers."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(columns), figsize=(3 * len(columns), 3.2))
    for ax, column in zip(np.atleast_1d(axes), columns):
        present = [m for m in models if (m, column) in summary.index]
        rows = [summary.loc[(m, column)] for m in present]
        means = [r["mean"] for r in rows]
        err = np.array([[r["mean"] - r["low"], r["high"] - r["mean"]] if np.isfinite(r["low"]) else [0, 0]
                        for r in rows]).T.reshape(2, -1)
        ax.bar(range(len(present)), means, yerr=err, capsize=3, color="#4c72b0")
        ax.set_xticks(range(len(present)), present, rotation=60, ha="right", fontsize=7)
        ax.set(title=column)
        if means:
            lo, hi = min(means), max(means)
            pad = max(hi - lo, 1e-6)
            ax.set_ylim(lo - 1.5 * pad, hi + 1.5 * pad)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def paired_frame(claims: "Claims", models: Sequence[str], columns: Sequence[str] = FIGURE_COLUMNS) -> pd.DataFrame:
    """Each model minus the base per column, paired per item (`Claims.paired`): model, column, value, low, high,
    n_seeds; models without paired samples are left out."""
    rows = []
    for column in columns:
        for model in models:
            d = claims.paired("base", model, column) if model != "base" and model in claims.dirs else None
            if d is not None:
                rows.append({"model": model, "column": column, **{k: d[k] for k in ("value", "low", "high",
                                                                                     "n_seeds")}})
    return pd.DataFrame(rows, columns=["model", "column", "value", "low", "high", "n_seeds"])


def paired_figure(frame: pd.DataFrame):
    """One panel per column: each model's difference from the base with its paired 95 % interval, a line at zero;
    filled where the interval excludes zero."""
    import matplotlib.pyplot as plt

    columns = list(dict.fromkeys(frame["column"]))
    models = list(dict.fromkeys(frame["model"]))[::-1]
    panels = max(len(columns), 1)
    fig, axes = plt.subplots(1, panels, figsize=(3 * panels, 0.45 * len(models) + 1.4), sharey=True, squeeze=False)
    for ax, column in zip(axes[0], columns):
        part = frame[frame["column"] == column].set_index("model")
        for y, model in enumerate(models):
            if model not in part.index:
                continue
            r = part.loc[model]
            ax.errorbar(r["value"], y, xerr=[[max(r["value"] - r["low"], 0)], [max(r["high"] - r["value"], 0)]],
                        fmt="o", color="#4c72b0", mfc="#4c72b0" if excludes_zero(r) else "white", capsize=3)
        ax.axvline(0, color="0.4", lw=0.8)
        ax.set(title=f"{column} − base", yticks=range(len(models)), yticklabels=models)
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def markdown_table(frame: pd.DataFrame) -> str:
    """A frame as a GitHub Markdown table (`review.markdown_table`), the index as the first column."""
    first = str(frame.index.name or "")
    rows = [{first: index, **row} for index, row in zip(frame.index, frame.to_dict("records"))]
    return rows_table(rows, [first, *map(str, frame.columns)]).rstrip("\n")
