"""Data review of preference datasets (Amirloo et al. §3.2 and Table 1): what the pairs look like before training.

Per dataset: counts; prompt and response lengths (tokens of a Hugging Face tokenizer, or whitespace words);
how far rejected is from chosen (word-level Levenshtein distance, a normalized similarity, optionally the cosine of
sentence embeddings); what the difference is (an object, an attribute, a count, an existence claim, or other),
exactly for world pairs (the edits `mmstudy.editions.povid` records in the provenance) and by rule for every pair;
object mentions (CHAIR's extractor with the world's classes or COCO's synonyms) and the objects only the rejected
response mentions (hallucination candidates); and the paper's Table 1 generated from the data. Everything comes
back as plain data (lists of dicts); `review_figures` draws it with seaborn, `review_markdown` writes it as tables.

    >>> result = review({"povid": load_preferences("prefs/povid.jsonl")}, tokenizer=AutoTokenizer.from_pretrained(d))
    >>> figures = review_figures(result); print(review_markdown(result)["povid"])
"""

from __future__ import annotations

import functools
import logging
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from mmstudy import io
from mmstudy.benchmarks.chair import COCO_SYNONYMS_PATH, Synonyms, extract_objects, load_synonyms, parse_synonyms
from mmstudy.data.preferences import check_records
from mmstudy.plots import plt  # selects the Agg backend
from mmstudy.textdiff import diff_words, similarity_from_distance, words
from mmstudy.world.text import synonyms_text

logger = logging.getLogger(__name__)

KINDS = ("existence", "object", "count", "attribute", "other")  # also the priority of a pair's main kind
EDIT_KINDS = {"add": "object", "object": "object", "size": "attribute", "position": "attribute", "count": "count",
              "yes/no": "existence", "partner": "existence",  # mmstudy.editions.povid edit names -> kind
              "fix_position": "attribute", "fix_size": "attribute", "fix_count": "count", "fix_context": "other",
              "drop_sentence": "object"}  # mmstudy.editions.sampled.correct's edits
EXISTENCE_WORDS = frozenset("yes no not none nothing never nobody without".split())
COUNT_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve twenty hundred dozen dozens single "
    "couple pair several many few multiple numerous lone both".split())
ATTRIBUTE_WORDS = frozenset(
    # size
    "small large big tiny little huge tall short long giant medium wide narrow thin thick "
    # colour and texture (the world's COLOURS and TEXTURES among them)
    "red orange yellow green blue purple pink brown black white grey gray cyan silver gold golden beige dark "
    "light bright striped dotted solid spotted plain "
    # position
    "left right top bottom center centre middle above below under underneath beneath behind front beside next "
    "near between corner background foreground upper lower side".split())

# The descriptive columns of the paper's Table 1 (Amirloo et al. §5.1; docs/preference-data.md) per `source`
# value; size is counted from the data.
TABLE1_COLUMNS = ("type", "name", "size", "prompt", "image", "chosen", "rejected", "annotator", "signal")
DESCRIPTIVE = tuple(c for c in TABLE1_COLUMNS if c != "size")
SOURCES = {
    "llava_rlhf": ("human", "LLaVA-RLHF", "LLaVA-Instruct-150k", "COCO", "LLaVA 1.5", "LLaVA 1.5", "human",
                   "ranking"),
    "rlhf_v": ("human", "RLHF-V", "UniMM-Chat", "various", "Muffin / various (corrected)", "Muffin / various",
               "human", "construction"),
    "vlfeedback": ("synthetic", "VLFeedback", "9 datasets (LLaVA, SVIT, ...)", "various",
                   "12 MLLMs (best GPT-4V rating)", "12 MLLMs (lower rating)", "GPT-4V", "ranking"),
    "nlf": ("synthetic", "NLF (DRESS)", "LLaVA-Instruct-150k", "COCO", "DRESS_ft (refined)", "DRESS_ft", "GPT-4V",
            "construction"),
    "povid": ("synthetic", "POVID", "LLaVA-Instruct-150k", "COCO", "SFT ground truth",
              "SFT ground truth (corrupted)", "GPT-4V", "construction"),
    "rlaif_v": ("synthetic", "RLAIF-V", "various (VQA v2, OK-VQA, COCO, ...)", "various", "open MLLMs (sampled)",
                "open MLLMs (sampled)", "open MLLM (claim checks)", "ranking"),
    "ha_dpo": ("synthetic", "HA-DPO", "description / POPE-style questions", "Visual Genome",
               "LLaVA 1.5 (GPT-4 corrected)", "LLaVA 1.5 (hallucinated)", "GPT-4", "correction"),
    "world_povid": ("synthetic", "POVID-like (world)", "world LLaVA-Instruct", "world scenes", "SFT ground truth",
                    "SFT ground truth (rule edits)", "world oracle", "construction"),
    "world_ranking": ("synthetic", "VLFeedback-like (world)", "world LLaVA-Instruct (novel scenes)",
                      "world scenes", "reference + model samples (best oracle rating)",
                      "reference + model samples (lower rating)", "world oracle", "ranking"),
    "world_correction": ("synthetic", "RLHF-V-like (world)", "world LLaVA-Instruct (novel scenes)", "world scenes",
                         "model sample (oracle-corrected)", "model sample (hallucinated)", "world oracle",
                         "correction"),
    "world_ranked_corrupted": ("synthetic", "+ corrupting strategy (world)", "world LLaVA-Instruct (novel scenes)",
                               "world scenes", "best-rated of reference + model samples", "chosen (rule edits)",
                               "world oracle", "construction"),
    "world_sft_prompts": ("synthetic", "LLaVA prompts (world)", "world LLaVA-Instruct (SFT records)",
                          "world SFT scenes", "best-rated of reference + model samples", "chosen (rule edits)",
                          "world oracle", "construction"),
    "world_reference_chosen": ("synthetic", "GPT-4V responses only (world)", "world LLaVA-Instruct (novel scenes)",
                               "world scenes", "reference answer", "chosen (rule edits)", "world oracle",
                               "construction"),
    "world_model_chosen": ("synthetic", "LLaVA responses only (world)", "world LLaVA-Instruct (novel scenes)",
                           "world scenes", "best-rated model sample", "chosen (rule edits)", "world oracle",
                           "construction"),
    "world_oracle": ("synthetic", "positive control (world)", "world LLaVA-Instruct (novel scenes)", "world scenes",
                     "own samples (best oracle rating)", "own samples (worst oracle rating)", "world oracle",
                     "ranking"),
}
BDHS_VARIANTS = {"attn": "image attention masked", "noise": "diffusion-noised image", "unguided": "masked, unguided",
                 "povid": "teacher-forced on y+, noised image"}


# ---------------------------------------------------------------- word-level edit distance



# ---------------------------------------------------------------- objects and difference kinds


@functools.lru_cache(maxsize=None)
def object_vocabulary(name: str) -> Synonyms:
    """The noun list of object mentions: "world" (the world's classes and synonyms, its synonyms.txt) or "coco"
    (CHAIR's COCO synonyms). Both with CHAIR's fixed behaviours (stripped entries, vocabulary not singularized)."""
    if name == "world":
        return parse_synonyms(synonyms_text(), "world classes", strip=True, protect_vocabulary=True)
    if name == "coco":
        return load_synonyms(COCO_SYNONYMS_PATH, strip=True, protect_vocabulary=True)
    raise ValueError(f"unknown object vocabulary {name!r}: expected 'world' or 'coco'")


def object_mentions(text: str, vocabulary: Synonyms) -> list[str]:
    """The canonical object classes a text mentions, in order and with multiplicity (CHAIR's extraction)."""
    return [cls for _, cls in extract_objects(text, vocabulary)]


def choose_vocabulary(records: Sequence[dict], sample: int = 200) -> str:
    """"world" for world data (edits in the provenance, a world source, or COCO's list finding only world classes in
    the first `sample` pairs), else "coco"."""
    if any("edits" in (r.get("provenance") or {}) or r["source"].startswith("world") for r in records):
        return "world"
    coco, world = object_vocabulary("coco"), set(object_vocabulary("world").classes)
    found = {c for r in records[:sample] for t in (r["chosen"], r["rejected"]) for c in object_mentions(t, coco)}
    return "world" if found and found <= world else "coco"


def difference_kinds(ops: Sequence[tuple], chosen_objects: Sequence[str],
                     rejected_objects: Sequence[str]) -> list[str]:
    """Every kind (in KINDS order) a word diff shows: existence (a yes/no or negation word changed), object (the
    mentioned objects differ, with multiplicity), count (a number word or numeral changed), attribute (a size,
    colour, texture or position word changed); ["other"] when none of them."""
    changed = {w for _, x, y in ops for w in (x, y) if w is not None}
    found = {
        "existence": bool(changed & EXISTENCE_WORDS) or any(w.endswith("n't") for w in changed),
        "object": Counter(chosen_objects) != Counter(rejected_objects),
        "count": bool(changed & COUNT_WORDS) or any(w.isdigit() for w in changed),
        "attribute": bool(changed & ATTRIBUTE_WORDS),
    }
    return [k for k in KINDS if found.get(k)] or ["other"]


def classify_difference(chosen: str, rejected: str, vocabulary: str | Synonyms = "coco") -> list[str]:
    """`difference_kinds` of a pair of texts; the first one is the pair's main kind."""
    vocab = object_vocabulary(vocabulary) if isinstance(vocabulary, str) else vocabulary
    return difference_kinds(diff_words(words(chosen), words(rejected)), object_mentions(chosen, vocab),
                            object_mentions(rejected, vocab))


def exact_kinds(record: dict, where: str = "record") -> list[str] | None:
    """The kinds (KINDS order) of a world pair's difference, known exactly: the recorded edits of a constructed or
    corrected pair (provenance["edits"], see EDIT_KINDS; an unknown edit is "other"), or for a ranked pair the kinds
    of the false claims the oracle finds in the rejected response and not in the chosen one (provenance
    ["error_kinds"]; none: "other", the rejected is only less informative). None for a pair with neither."""
    provenance = record.get("provenance") or {}
    if "edits" in provenance:
        edits = provenance["edits"]
        if not isinstance(edits, list) or not edits or not all(isinstance(e, str) for e in edits):
            raise io.DataError(f"{where}: field 'provenance.edits' must be a non-empty list of edit names, "
                               f"got {edits!r}")
        kinds = {EDIT_KINDS.get(e, "other") for e in edits}
    elif "error_kinds" in provenance:
        found = provenance["error_kinds"]
        if not isinstance(found, list) or not all(k in KINDS for k in found):
            raise io.DataError(f"{where}: field 'provenance.error_kinds' must be a list of {list(KINDS)}, "
                               f"got {found!r}")
        kinds = set(found) or {"other"}
    else:
        return None
    return [k for k in KINDS if k in kinds]


# ---------------------------------------------------------------- per pair


def text_lengths(texts: Sequence[str], tokenizer=None) -> list[int]:
    """Length of each text: tokens of `tokenizer` (a Hugging Face tokenizer, or a processor holding one; no special
    tokens) or, without one, whitespace-separated words."""
    if tokenizer is None:
        return [len(t.split()) for t in texts]
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]] if texts else []


def length_unit(tokenizer=None) -> str:
    """What `text_lengths` counts: "words" or "tokens (<tokenizer name>)"."""
    if tokenizer is None:
        return "words"
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    return f"tokens ({getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__})"


def load_tokenizer(path: str | Path):
    """The Hugging Face tokenizer saved in a model directory (AutoTokenizer, offline)."""
    from transformers import AutoTokenizer  # here: the report reads reviews without loading transformers

    if not Path(path).is_dir():
        raise io.DataError(f"{path}: tokenizer directory not found")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise io.DataError(f"{path}: no loadable tokenizer: {e}") from e


def pair_rows(name: str, records: Sequence[dict], tokenizer=None, embedder=None,
              vocabulary: str = "coco") -> list[dict]:
    """One row per pair: lengths, edit distance, word (and embedding) similarity, difference kinds (rule and exact),
    object mentions and the objects only the rejected response mentions."""
    vocab = object_vocabulary(vocabulary)
    lengths = {f: text_lengths([r[f] for r in records], tokenizer) for f in ("prompt", "chosen", "rejected")}
    cosine = None
    if embedder is not None:
        cosine = embedder.similarity([r["chosen"] for r in records], [r["rejected"] for r in records])
    rows = []
    for n, r in enumerate(records):
        wa, wb = words(r["chosen"]), words(r["rejected"])
        ops = diff_words(wa, wb)
        oc, orj = object_mentions(r["chosen"], vocab), object_mentions(r["rejected"], vocab)
        kinds, exact = difference_kinds(ops, oc, orj), exact_kinds(r, f"{name}, record {n + 1}")
        rows.append({"dataset": name, "id": r["id"], "source": r["source"],
                     **{f"{f}_length": lengths[f][n] for f in lengths}, "edit_distance": len(ops),
                     "word_similarity": similarity_from_distance(len(ops), len(wa), len(wb)),
                     "embed_similarity": None if cosine is None else float(cosine[n]),
                     "kind": kinds[0], "kinds": kinds, "exact_kind": exact[0] if exact else None,
                     "exact_kinds": exact, "edits": (r.get("provenance") or {}).get("edits"),
                     "chosen_objects": oc, "rejected_objects": orj, "only_rejected": sorted(set(orj) - set(oc))})
    return rows


# ---------------------------------------------------------------- per dataset


def summarize(values: Sequence[float]) -> dict:
    """n, mean, std, min, p5, median, p95, max of a list of numbers (None for all but n when empty)."""
    keys = ("mean", "std", "min", "p5", "median", "p95", "max")
    if not len(values):
        return {"n": 0, **dict.fromkeys(keys)}
    v = np.asarray(values, dtype=float)
    stats = (v.mean(), v.std(), v.min(), *np.percentile(v, [5, 50, 95]), v.max())
    return {"n": len(v), **{k: float(s) for k, s in zip(keys, stats)}}


def length_stats(records: Sequence[dict], tokenizer=None) -> dict:
    """Length summaries (`summarize`) of prompts, chosen and rejected responses, and of rejected / chosen, in the
    unit named under "unit" (tokens of `tokenizer`, else words)."""
    lengths = {f: text_lengths([r[f] for r in records], tokenizer) for f in ("prompt", "chosen", "rejected")}
    ratio = [b / a for a, b in zip(lengths["chosen"], lengths["rejected"]) if a]
    return {"unit": length_unit(tokenizer), **{f: summarize(v) for f, v in lengths.items()},
            "rejected_over_chosen": summarize(ratio)}


def _share(k: int, n: int) -> float:
    return k / n if n else 0.0


def count_row(name: str, records: Sequence[dict]) -> dict:
    return {"dataset": name, "pairs": len(records), "sources": ", ".join(dict.fromkeys(r["source"] for r in records)),
            "images": len({r["image"] for r in records}), "prompts": len({r["prompt"] for r in records}),
            "with_rejected_2": sum("rejected_2" in r for r in records),
            "with_scores": sum("chosen_score" in r for r in records),
            "with_edits": sum("edits" in (r.get("provenance") or {}) for r in records)}


def length_rows(name: str, pairs: Sequence[dict], unit: str) -> list[dict]:
    rows = [{"dataset": name, "field": f, "unit": unit, **summarize([p[f"{f}_length"] for p in pairs])}
            for f in ("prompt", "chosen", "rejected")]
    ratio = [p["rejected_length"] / p["chosen_length"] for p in pairs if p["chosen_length"]]
    return rows + [{"dataset": name, "field": "rejected / chosen", "unit": "ratio", **summarize(ratio)}]


def similarity_row(name: str, pairs: Sequence[dict]) -> dict:
    distance = [p["edit_distance"] for p in pairs]
    row = {"dataset": name, "same_words": _share(sum(d == 0 for d in distance), len(pairs))}
    columns = {"edit_distance": distance, "word_similarity": [p["word_similarity"] for p in pairs],
               "embed_similarity": [p["embed_similarity"] for p in pairs if p["embed_similarity"] is not None]}
    for column, values in columns.items():
        if not values:  # no embedder
            continue
        stats = summarize(values)
        row |= {f"{column}_mean": stats["mean"], f"{column}_median": stats["median"]}
    return row


def difference_rows(name: str, pairs: Sequence[dict]) -> list[dict]:
    """Share of pairs per kind: "rule" (main kind, shares sum to 1), "rule_any" (a pair counts for each kind it
    shows) and, over the pairs with recorded edits, "exact" (main kind of the edits) and "exact_any"."""
    exact = [p for p in pairs if p["exact_kinds"] is not None]
    methods = {"rule": (pairs, lambda p: [p["kind"]]), "rule_any": (pairs, lambda p: p["kinds"])}
    if exact:
        methods |= {"exact": (exact, lambda p: [p["exact_kind"]]), "exact_any": (exact, lambda p: p["exact_kinds"])}
    rows = []
    for method, (subset, kinds_of) in methods.items():
        counts = Counter(k for p in subset for k in kinds_of(p))
        rows += [{"dataset": name, "method": method, "kind": k, "pairs": counts[k], "of": len(subset),
                  "share": _share(counts[k], len(subset))} for k in KINDS]
    return rows


def edit_rows(name: str, pairs: Sequence[dict]) -> list[dict]:
    """Pairs per recorded world edit (a pair with two edits counts for both)."""
    exact = [p for p in pairs if p["edits"] is not None]
    counts = Counter(e for p in exact for e in p["edits"])
    return [{"dataset": name, "edit": e, "kind": EDIT_KINDS.get(e, "other"), "pairs": c,
             "share": _share(c, len(exact))} for e, c in counts.most_common()]


def agreement_rows(name: str, pairs: Sequence[dict]) -> list[dict]:
    """How the rule's main kind compares with the exact one on pairs with recorded edits: the agreement and the
    confusion counts (exact kind x rule kind)."""
    exact = [p for p in pairs if p["exact_kind"] is not None]
    if not exact:
        return []
    same = sum(p["kind"] == p["exact_kind"] for p in exact)
    confusion = Counter((p["exact_kind"], p["kind"]) for p in exact)
    return [{"dataset": name, "exact": "all", "rule": "same", "pairs": same, "share": _share(same, len(exact))}] + [
        {"dataset": name, "exact": e, "rule": r, "pairs": c, "share": _share(c, len(exact))}
        for (e, r), c in sorted(confusion.items(), key=lambda kv: (KINDS.index(kv[0][0]), KINDS.index(kv[0][1])))]


def object_row(name: str, pairs: Sequence[dict], vocabulary: str) -> dict:
    with_new = sum(bool(p["only_rejected"]) for p in pairs)
    return {"dataset": name, "vocabulary": vocabulary,
            "chosen_mentions_mean": summarize([len(p["chosen_objects"]) for p in pairs])["mean"],
            "rejected_mentions_mean": summarize([len(p["rejected_objects"]) for p in pairs])["mean"],
            "chosen_without_mention": _share(sum(not p["chosen_objects"] for p in pairs), len(pairs)),
            "pairs_with_rejected_only_object": with_new,
            "share_with_rejected_only_object": _share(with_new, len(pairs))}


def top_object_rows(name: str, pairs: Sequence[dict], top: int = 10) -> list[dict]:
    """The `top` objects by mentions (chosen + rejected), with the pairs where only the rejected mentions them."""
    chosen = Counter(c for p in pairs for c in p["chosen_objects"])
    rejected = Counter(c for p in pairs for c in p["rejected_objects"])
    only = Counter(c for p in pairs for c in p["only_rejected"])
    ranked = sorted(chosen.keys() | rejected.keys(), key=lambda c: (-(chosen[c] + rejected[c]), c))[:top]
    return [{"dataset": name, "object": c, "chosen_mentions": chosen[c], "rejected_mentions": rejected[c],
             "pairs_only_rejected": only[c]} for c in ranked]


def candidate_rows(name: str, pairs: Sequence[dict], top: int = 10) -> list[dict]:
    """The `top` hallucination candidates: objects mentioned by the rejected response and not by the chosen one,
    by number of pairs."""
    only = Counter(c for p in pairs for c in p["only_rejected"])
    ranked = sorted(only.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [{"dataset": name, "object": c, "pairs": k, "share": _share(k, len(pairs))} for c, k in ranked]


# ---------------------------------------------------------------- Table 1


def source_info(source: str) -> dict:
    """The descriptive Table 1 columns of a `source` value ("unknown" for a source we do not know)."""
    if source in SOURCES:
        return dict(zip(DESCRIPTIVE, SOURCES[source]))
    if source.startswith("bdhs_"):
        variant = source[len("bdhs_"):]
        how = BDHS_VARIANTS.get(variant, variant)
        return {"type": "synthetic", "name": f"BDHS ({variant})", "prompt": "the SFT prompts",
                "image": "the SFT images", "chosen": "SFT ground truth", "rejected": f"policy, {how}",
                "annotator": "none (embedding filter)", "signal": "construction"}
    return {c: (source if c == "name" else "unknown") for c in DESCRIPTIVE}


def table1(datasets: Mapping[str, Sequence[dict]]) -> list[dict]:
    """The paper's Table 1 for these datasets: one row per (dataset, source), size counted, the other columns from
    `source_info`."""
    rows = []
    for name, records in datasets.items():
        sizes = Counter(r["source"] for r in records)
        for source, size in sizes.items():
            info = {**source_info(source), "size": size}
            rows.append({"dataset": name, "source": source, **{c: info[c] for c in TABLE1_COLUMNS}})
    return rows


# ---------------------------------------------------------------- the review


def review(datasets: Mapping[str, Sequence[dict]], tokenizer=None, embedder=None, objects: str = "auto",
           top: int = 10) -> dict:
    """Review preference datasets (name -> records in mmstudy's schema). `tokenizer`: lengths in its tokens (else
    words); `embedder`: anything with `similarity(a, b)` (e.g. `mmstudy.data.bdhs.SentenceEmbedder`) for the cosine of
    chosen and rejected; `objects`: "world", "coco" or "auto" (`choose_vocabulary` per dataset).
    Returns plain data: "unit", "vocabulary" (per dataset), the tables "counts", "lengths", "similarity",
    "differences", "edits", "agreement", "objects", "top_objects", "candidates", "table1" (lists of dicts) and
    "pairs" (one row per pair)."""
    tables = ("counts", "lengths", "similarity", "differences", "edits", "agreement", "objects", "top_objects",
              "candidates", "pairs")
    out: dict = {"unit": length_unit(tokenizer), "vocabulary": {}, **{t: [] for t in tables}}
    for name, records in datasets.items():
        if not records:
            raise ValueError(f"dataset {name!r} has no pairs")
        check_records(records, name)
        vocabulary = choose_vocabulary(records) if objects == "auto" else objects
        logger.info("reviewing %s: %d pairs (objects: %s vocabulary)", name, len(records), vocabulary)
        pairs = pair_rows(name, records, tokenizer, embedder, vocabulary)
        out["vocabulary"][name] = vocabulary
        out["counts"].append(count_row(name, records))
        out["lengths"] += length_rows(name, pairs, out["unit"])
        out["similarity"].append(similarity_row(name, pairs))
        out["differences"] += difference_rows(name, pairs)
        out["edits"] += edit_rows(name, pairs)
        out["agreement"] += agreement_rows(name, pairs)
        out["objects"].append(object_row(name, pairs, vocabulary))
        out["top_objects"] += top_object_rows(name, pairs, top)
        out["candidates"] += candidate_rows(name, pairs, top)
        out["pairs"] += pairs
    out["table1"] = table1(datasets)
    return out


def review_metrics(result: dict) -> dict:
    """The headline numbers of a review, flat and namespaced (`<dataset>/pairs`, `<dataset>/word_similarity_median`,
    `<dataset>/kind/<kind>` main-kind shares by rule, `<dataset>/exact/<kind>` where edits are recorded,
    `<dataset>/rejected_over_chosen_median`): the data-review notebook's metrics.json."""
    out = {}
    for row in result["counts"]:
        out[f"{row['dataset']}/pairs"] = row["pairs"]
    for row in result["similarity"]:
        out[f"{row['dataset']}/word_similarity_median"] = row["word_similarity_median"]
    for row in result["differences"]:
        if row["method"] in ("rule", "exact"):
            out[f"{row['dataset']}/{'kind' if row['method'] == 'rule' else 'exact'}/{row['kind']}"] = row["share"]
    for row in result["lengths"]:
        if row["field"] == "rejected / chosen":
            out[f"{row['dataset']}/rejected_over_chosen_median"] = row["median"]
    return out


# ---------------------------------------------------------------- markdown


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A GitHub markdown table of `rows` (floats with 3 decimals, ints with thousands separators)."""
    if not rows:
        return "(none)\n"
    columns = list(columns or rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def table1_markdown(result: dict) -> str:
    """The generated Table 1 as markdown, the paper's column order (Amirloo et al. §5.1; docs/preference-data.md)."""
    columns = ("dataset", "source") + TABLE1_COLUMNS
    return "# Table 1: preference datasets\n\n" + markdown_table(result["table1"], columns)


def review_markdown(result: dict) -> dict[str, str]:
    """Dataset name -> its review as markdown tables (the rows of every table that belong to it)."""
    sections = (("Counts", "counts"), (f"Lengths, in {result['unit']}", "lengths"), ("Similarity", "similarity"),
                ("Differences (share of pairs)", "differences"), ("World edits", "edits"),
                ("Rule against exact kinds", "agreement"), ("Object mentions", "objects"),
                ("Most mentioned objects", "top_objects"), ("Objects only in the rejected", "candidates"),
                ("Table 1", "table1"))
    out = {}
    for name in result["vocabulary"]:
        parts = [f"# Review of {name}\n"]
        for title, key in sections:
            rows = [{k: v for k, v in r.items() if k != "dataset"} for r in result[key] if r["dataset"] == name]
            if rows:
                parts.append(f"## {title}\n\n{markdown_table(rows)}")
        out[name] = "\n".join(parts)
    return out


def review_file_names(names: Sequence[str]) -> list[str]:
    """The file stem of each dataset's markdown review; ValueError when two clash or one takes a reserved name."""
    files = [re.sub(r"[^A-Za-z0-9_.-]+", "_", n) for n in names]
    if len(set(files)) != len(files) or {"table1", "review", "pairs"} & set(files):
        raise ValueError(f"dataset names {list(names)} give clashing file names {files}: use distinct names")
    return files


def save_review(result: dict, out: str | Path, manifest: dict) -> None:
    """Write a review into `out`: review.json (every table and the manifest), pairs.jsonl, table1.md, <name>.md per
    dataset and the figures as PNG; each file atomically."""
    out = Path(out)
    names = list(result["vocabulary"])
    summary = {k: v for k, v in result.items() if k != "pairs"}
    io.write_json(out / "review.json", {**summary, "manifest": manifest})
    io.write_jsonl(out / "pairs.jsonl", result["pairs"])
    io.write_text(out / "table1.md", table1_markdown(result))
    markdown = review_markdown(result)
    for name, file in zip(names, review_file_names(names)):
        io.write_text(out / f"{file}.md", markdown[name])
    for key, fig in review_figures(result).items():
        with io.atomic_path(out / f"{key}.png") as tmp:
            fig.savefig(tmp, dpi=120, format="png")


# ---------------------------------------------------------------- figures


def review_figures(result: dict) -> dict:
    """Figure name -> matplotlib Figure: "lengths" (box plots per field), "similarity" (histograms of word similarity,
    edit distance and, when computed, embedding cosine), "differences" (share per kind, rule and exact) and
    "objects" (mentions per response, top hallucination candidates per dataset)."""
    import seaborn as sns

    pairs = pd.DataFrame(result["pairs"])
    return {"lengths": _lengths_figure(pairs, result["unit"], plt, sns),
            "similarity": _similarity_figure(pairs, plt, sns),
            "differences": _differences_figure(pd.DataFrame(result["differences"]), plt, sns),
            "objects": _objects_figure(result, pd, plt, sns)}


def _lengths_figure(pairs, unit: str, plt, sns):
    long = pairs.melt(id_vars=["dataset"], value_vars=["prompt_length", "chosen_length", "rejected_length"],
                      var_name="field", value_name="length")
    long["field"] = long["field"].str.removesuffix("_length")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    with warnings.catch_warnings():  # seaborn 0.13.2 passes matplotlib 3.11's deprecated `vert` to bxp
        warnings.filterwarnings("ignore", message="vert: bool was deprecated")
        sns.boxplot(data=long, x="field", y="length", hue="dataset", fliersize=1, ax=ax)
    ax.set(ylabel=f"length ({unit})", xlabel="", title="prompt and response lengths")
    fig.tight_layout()
    return fig


def _similarity_figure(pairs, plt, sns):
    columns = ["word_similarity", "edit_distance"] + (["embed_similarity"] if pairs["embed_similarity"].notna().any()
                                                      else [])
    fig, axes = plt.subplots(1, len(columns), figsize=(4 * len(columns), 3.2), squeeze=False)
    for ax, column in zip(axes[0], columns):
        spread = {"bins": np.linspace(0, 1, 21)} if "similarity" in column else (
            {"discrete": True} if pairs[column].max() <= 60 else {"bins": 60})
        sns.histplot(data=pairs, x=column, hue="dataset", stat="probability", common_norm=False, element="step",
                     ax=ax, **spread)
        ax.set(xlabel=column.replace("_", " "), ylabel="share of pairs")
    fig.suptitle("rejected against chosen")
    fig.tight_layout()
    return fig


def _differences_figure(rows, plt, sns):
    methods = [m for m in ("rule", "exact") if (rows["method"] == m).any()]
    fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 3.2), squeeze=False, sharey=True)
    for ax, method in zip(axes[0], methods):
        sns.barplot(data=rows[rows["method"] == method], x="kind", y="share", hue="dataset", order=KINDS, ax=ax)
        ax.set(title=f"main kind of difference ({method})", xlabel="", ylabel="share of pairs", ylim=(0, 1))
    fig.tight_layout()
    return fig


def _objects_figure(result: dict, pd, plt, sns):
    names = list(result["vocabulary"])
    ncols = min(3, 1 + len(names))
    nrows = -(-(1 + len(names)) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.4 * nrows), squeeze=False)
    axes = axes.ravel()
    mentions = pd.DataFrame([{"dataset": r["dataset"], "response": side, "mentions": r[f"{side}_mentions_mean"]}
                             for r in result["objects"] for side in ("chosen", "rejected")])
    sns.barplot(data=mentions, x="dataset", y="mentions", hue="response", ax=axes[0])
    axes[0].set(title="object mentions per response", xlabel="")
    axes[0].tick_params(axis="x", labelrotation=30)
    for ax in axes[1 + len(names):]:
        ax.set_axis_off()
    for ax, name in zip(axes[1:], names):
        rows = pd.DataFrame([r for r in result["candidates"] if r["dataset"] == name])
        if rows.empty:
            ax.text(0.5, 0.5, "no object only in the rejected", ha="center", va="center")
            ax.set_axis_off()
        else:
            sns.barplot(data=rows, x="pairs", y="object", color="tab:red", ax=ax)
        ax.set(title=f"{name}: objects only in the rejected", ylabel="")
    fig.tight_layout()
    return fig
