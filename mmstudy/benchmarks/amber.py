"""AMBER: An LLM-free Multi-dimensional Benchmark for MLLM hallucination (Wang et al. 2023; junyangwang0410/AMBER).

1,004 images with two tasks, told apart by the annotation `type` (never by id range). Generative items ("Describe
this image.") are scored from the object nouns of the description; discriminative items (yes/no questions about
existence, attribute state / number / action, and relation) are scored as a binary task whose positive class is
"No". This module holds the loaders, the noun extraction, the matching, the metrics and the bootstrap intervals,
all pure functions apart from the loaders and `score_amber_files`.

Protocol followed (reference `inference.py`, see docs/benchmarks.md):
    * nouns: the reference tokenizes the raw response (no lower-casing), keeps NLTK-POS-tagged NN* tokens,
      WordNet-lemmatizes them and keeps those in the association vocabulary (every key and value of
      relation.json). A noun in safe_words.txt is never a hallucination (it still counts in the CHAIR
      denominator). Otherwise the noun is *safe* if it equals a `truth` object or an association word of one,
      and marks that truth object covered: the first match in the list "association words of truth[0],
      truth[1], ..., then truth[0], truth[1], ..." wins, so "ground" with truth [grass, ground] covers grass
      (grass lists ground), and a repeated truth object is never covered twice. Failing that, an exact match in
      the same list built from `hallu` marks that hallucination target; then (optional) a near-synonym
      (similarity > threshold, spaCy `en_core_web_lg` in the reference, 0.8) of a hallu word marks it, and a
      near-synonym of a truth word makes the noun safe and covers that object. Any other noun is hallucinated.
      A noun that is a global safe word covers nothing, even when it is itself a truth object.
    * CHAIR = hallucinated nouns / nouns (with multiplicity, over all responses); Cover = covered truth objects /
      truth objects; Hal = share of responses with >= 1 hallucinated noun; Cog = marked hallu objects / hallu
      objects. Discriminative (parser "reference": the response must be exactly "Yes" or "No", anything else
      is wrong and is never a predicted "No", so for precision/recall it acts as "Yes"): accuracy; precision =
      correct "No" / answered "No"; recall = correct "No" / truth "no"; F1, overall and per existence
      (`discriminative-hallucination`), attribute (state + number + action) and relation (the reference's
      `else` branch: types `discriminative-relation` and `relation` in the released file), and per attribute
      kind. AMBER score = 0.5 * ((100 - CHAIR) + F1) (paper; not computed by inference.py).
    * units: every metric is a percentage (0-100), as the reference prints them. With reference_arithmetic=True
      (default) the numbers are the reference printout bit for bit: counters start from data/metrics.txt
      (denominators 0.001, so the attribute dimension's pooled denominators start at 0.003), each metric is
      round(x, 1), F1 is computed from the *rounded* precision and recall as 2PR / (P + R + 1e-4) (1e-3 for
      existence, a typo in the reference kept here). reference_arithmetic=False gives the plain definitions,
      unrounded (undefined ratios are 0.0). The 95 % bootstrap intervals always use the plain definitions.

Deviations from the reference (all stated in the metrics dict where they are options):
    * no NLTK or spaCy data can be installed: tokens come from `chair.tokenize` (a port of nltk.word_tokenize's
      boundaries); the POS filter is replaced by `likely_noun_mask`, which keeps every vocabulary token except
      the modal "can" and vocabulary words in a verb slot (after a modal or a subject pronoun), so a vocabulary
      word used as an adjective or verb elsewhere ("hot", "people watch") counts here and not in the
      reference; WordNet lemmatization is replaced by `chair.singularize` applied only to lower-case tokens
      outside the vocabulary (WordNet leaves capitalized tokens alone, so "Dogs" opening a sentence is dropped
      here as there, and "bus", "grass", "glass" are kept whole instead of pattern's "bu", "gras", "glas").
      Plurals can still differ ("ties" -> "ty" here, "tie" there; "clothes" -> "clothe" here, "cloth" there).
      Pass noun_filter / lemmatize (e.g. NLTK's tagger and WordNetLemmatizer) to reproduce the reference.
    * multi-word vocabulary entries (none in the released relation.json; a world edition may have "traffic
      light") are matched as token sequences, longest first; the reference tags single tokens and never
      matches them.
    * near-synonyms: `similarity` is None by default, so only exact and association matches count; numbers then
      differ from the reference wherever a noun is a near-synonym (> 0.8) of a truth or hallu word: CHAIR and
      Hal can be higher, Cover and Cog lower. Pass a similarity function to restore the step.
    * items are looked up by annotation id (the reference indexes the list at id - 1: identical on the released
      file, whose ids run 1..15220 in order); an unknown annotation type, a response id that is not annotated,
      a duplicate response id or an object missing from relation.json raise DataError (the reference would count
      an unknown type as relation, double-count a duplicate, or crash).
    * a section with no scored items (no generative responses, an empty dimension) reports NaN where the
      reference prints 0.0 (100.0 for Hal); amber_score is NaN unless both tasks were scored.

    >>> metrics, records = score_amber_files("responses.json", "AMBER/data")
    >>> metrics["chair"], metrics["f1"], metrics["amber_score"], metrics["chair_ci95_low"]
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from mmstudy.benchmarks.chair import singularize, tokenize
from mmstudy.benchmarks.pope import parse_yes_no_strict as parse_first_word  # the named lenient alternative
from mmstudy.benchmarks.stats import bootstrap_ci
from mmstudy.io import DataError, check_fields, read_json

logger = logging.getLogger(__name__)

AMBER_VERSION = 1  # bump whenever parsing, noun extraction, matching or scoring change
SIMILARITY_THRESHOLD = 0.8  # inference.py --similarity_score (a noun is a near-synonym when similarity > this)

GENERATIVE = "generative"
# annotation type -> (dimension, attribute kind); the released file spells relation items two ways
DISCRIMINATIVE_TYPES: Mapping[str, tuple[str, str | None]] = {
    "discriminative-hallucination": ("existence", None),
    "discriminative-attribute-state": ("attribute", "state"),
    "discriminative-attribute-number": ("attribute", "number"),
    "discriminative-attribute-action": ("attribute", "action"),
    "discriminative-relation": ("relation", None),
    "relation": ("relation", None),
}
ANNOTATION_TYPES = (GENERATIVE, *DISCRIMINATIVE_TYPES)
DIMENSIONS = ("existence", "attribute", "relation")
ATTRIBUTE_KINDS = ("state", "number", "action")
LABELS = ("yes", "no")

# Default file names inside the released data/ folder.
ANNOTATIONS_FILE = "annotations.json"
RELATION_FILE = "relation.json"
SAFE_WORDS_FILE = "safe_words.txt"
METRICS_FILE = "metrics.txt"

# The reference's counters (data/metrics.txt): one prefix per discriminative group.
_GROUP_PREFIX = {"existence": "ha_", "state": "as_", "number": "an_", "action": "aa_", "relation": "asso_"}
_QA_COUNTERS = ("qa_correct", "qa_no", "qa_ans_no")
COUNTER_NAMES = (
    *(f"{m}_{part}" for m in ("chair", "safe_cover", "hallu_cover", "non_hallu") for part in ("score", "num")),
    *(f"{p}{c}_{part}" for p in ("", *_GROUP_PREFIX.values()) for c in _QA_COUNTERS for part in ("score", "num")),
)
# data/metrics.txt as released: every *_num counter starts at 0.001, every *_score at 0.
REFERENCE_COUNTER_INIT: Mapping[str, float] = {name: 0.001 if name.endswith("_num") else 0 for name in COUNTER_NAMES}
_F1_GUARD = {"existence": 0.001}  # the reference's existence F1 adds 0.001; every other F1 adds 0.0001
_DEFAULT_F1_GUARD = 0.0001

HEADLINE_METRICS = ("chair", "cover", "hal", "cog", "accuracy", "precision", "recall", "f1", "amber_score")

Similarity = Callable[[str, str], float]
NounFilter = Callable[[Sequence[str]], Sequence[bool]]
Lemmatizer = Callable[[str], str]


# ---------------------------------------------------------------- loaders


def _where(source: Any, index: int, record: Any) -> str:
    """'file, record 3 (id 4)': records are counted from 0, like the indexes of the JSON list."""
    rid = record.get("id") if isinstance(record, dict) else None
    return f"{source}, record {index}" + (f" (id {rid!r})" if rid is not None else "")


def _json_list(path: Path, what: str) -> list:
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of {what}, got {type(data).__name__}")
    return data


def _check_id(record: dict, where: str, seen: set) -> int:
    rid = record["id"]
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise DataError(f"{where}, field 'id': must be an integer, got {rid!r}")
    if rid in seen:
        raise DataError(f"{where}, field 'id': duplicate id {rid}")
    seen.add(rid)
    return rid


def _check_word_list(record: dict, field: str, where: str) -> None:
    value = record[field]
    if not isinstance(value, list) or not all(isinstance(w, str) and w for w in value):
        raise DataError(f"{where}, field {field!r}: must be a list of non-empty strings, got {value!r}")


def check_annotations(records: Sequence, source: Any = "annotations") -> dict[int, dict]:
    """Validate annotation records (the released annotations.json format) and index them by id.

    Generative: {"id": int, "type": "generative", "truth": [object, ...], "hallu": [object, ...]}.
    Discriminative: {"id": int, "type": one of DISCRIMINATIVE_TYPES, "truth": "yes" | "no"}. Extra fields are
    kept. Raises DataError naming the source, the record and the field. Logs a warning when ids are not
    1, 2, 3, ... in list order, since the reference looks items up at list position id - 1.
    """
    by_id: dict[int, dict] = {}
    seen: set = set()
    out_of_place = 0
    for index, record in enumerate(records):
        where = _where(source, index, record)
        check_fields(record, ("id", "type", "truth"), where)
        rid = _check_id(record, where, seen)
        kind = record["type"]
        if kind not in ANNOTATION_TYPES:
            raise DataError(f"{where}, field 'type': unknown type {kind!r}; expected one of {list(ANNOTATION_TYPES)}")
        if kind == GENERATIVE:
            check_fields(record, ("hallu",), where)
            _check_word_list(record, "truth", where)
            _check_word_list(record, "hallu", where)
        elif record["truth"] not in LABELS:
            raise DataError(f"{where}, field 'truth': must be 'yes' or 'no', got {record['truth']!r}")
        by_id[rid] = record
        out_of_place += rid != index + 1
    if out_of_place:
        logger.warning(
            "%s: %d annotation ids differ from their list position + 1; the reference (ground_truth[id - 1]) "
            "would score those items against other annotations",
            source,
            out_of_place,
        )
    return by_id


def load_amber_annotations(path: str | Path) -> list[dict]:
    """Read AMBER's annotations.json (a JSON list; see `check_annotations` for the record format)."""
    path = Path(path)
    records = _json_list(path, "annotation records")
    by_id = check_annotations(records, path)
    n_gen = sum(1 for r in records if r["type"] == GENERATIVE)
    logger.info("Loaded %d AMBER annotations (%d generative) from %s", len(by_id), n_gen, path)
    return records


def load_amber_queries(path: str | Path) -> list[dict]:
    """Read a query file (data/query/query_*.json): a JSON list of {"id": int, "image": str, "query": str}.

    Raises DataError naming the file, record and field for a missing or ill-typed field or a duplicate id.
    """
    path = Path(path)
    records = _json_list(path, "query records")
    seen: set = set()
    for index, record in enumerate(records):
        where = _where(path, index, record)
        check_fields(record, ("id", "image", "query"), where)
        _check_id(record, where, seen)
        for field in ("image", "query"):
            if not isinstance(record[field], str) or not record[field]:
                raise DataError(f"{where}, field {field!r}: must be a non-empty string, got {record[field]!r}")
    logger.info("Loaded %d AMBER queries from %s", len(records), path)
    return records


def check_responses(records: Sequence, source: Any = "responses") -> None:
    """Validate response records: {"id": int, "response": str} (extra fields ignored), ids unique."""
    seen: set = set()
    for index, record in enumerate(records):
        where = _where(source, index, record)
        check_fields(record, ("id", "response"), where)
        _check_id(record, where, seen)
        if not isinstance(record["response"], str):
            raise DataError(f"{where}, field 'response': must be a string, got {record['response']!r}")


def load_amber_responses(path: str | Path) -> list[dict]:
    """Read model responses in the format inference.py reads: a JSON list of {"id": int, "response": str}."""
    path = Path(path)
    records = _json_list(path, "response records")
    check_responses(records, path)
    logger.info("Loaded %d AMBER responses from %s", len(records), path)
    return records


def check_association(association: Any, source: Any = "association") -> dict[str, list[str]]:
    """Validate the word-association map: {object: [associated word, ...]} with string keys and values."""
    if not isinstance(association, dict):
        raise DataError(f"{source}: expected a JSON object mapping objects to word lists, got "
                        f"{type(association).__name__}")
    for key, words in association.items():
        if not key:
            raise DataError(f"{source}: empty object name")
        if not isinstance(words, list) or not all(isinstance(w, str) and w for w in words):
            raise DataError(f"{source}, key {key!r}: must be a list of non-empty strings, got {words!r}")
    words = {w for k, ws in association.items() for w in (k, *ws)}
    unreachable = sorted(w for w in words if w != w.strip() or "  " in w)
    if unreachable:
        logger.warning("%s: %d entries have stray spaces and can never match: %s", source, len(unreachable),
                       ", ".join(repr(w) for w in unreachable))
    multiword = sorted(w for w in words if " " in w.strip() and "  " not in w)
    if multiword:
        logger.info("%s: %d multi-word entries, matched as token sequences (never matched by the reference): %s",
                    source, len(multiword), ", ".join(repr(w) for w in multiword))
    return association


def load_association(path: str | Path) -> dict[str, list[str]]:
    """Read relation.json, the word-association map (object -> words that count as that object)."""
    path = Path(path)
    association = check_association(read_json(path), path)
    logger.info("Loaded %d AMBER association entries from %s", len(association), path)
    return association


def association_vocabulary(association: Mapping[str, Sequence[str]]) -> frozenset[str]:
    """Every key and every associated word: the reference's `hallucination_words`, the nouns it scores."""
    return frozenset(w for key, words in association.items() for w in (key, *words))


def load_safe_words(path: str | Path) -> list[str]:
    """Read safe_words.txt: one word per line (the reference keeps each line up to its newline, no strip).

    Read in text mode like the reference, so "\\r\\n" line ends are fine. Blank lines are skipped (they match
    nothing). A line with surrounding spaces raises DataError naming the line: the reference would keep the
    spaces and the word would never match.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    words = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line:
            continue
        if line != line.strip():
            raise DataError(f"{path}, line {lineno}: safe word {line!r} has surrounding whitespace")
        words.append(line)
    logger.info("Loaded %d AMBER safe words from %s", len(words), path)
    return words


def load_metrics_init(path: str | Path) -> dict[str, float]:
    """Read data/metrics.txt, the reference's counter initial values (`name=value` per line).

    Lines that do not split into exactly two parts on "=" are skipped, as in the reference; values must be
    numbers (the reference `eval`s them). Raises DataError naming the line, or listing missing counters.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    init: dict[str, float] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.strip().split("=")
        if len(parts) != 2:
            continue
        name, value = parts[0].strip(), parts[1].strip()
        try:
            init[name] = float(value)
        except ValueError:
            raise DataError(f"{path}, line {lineno}, counter {name!r}: value {value!r} is not a number") from None
    missing = [name for name in COUNTER_NAMES if name not in init]
    if missing:
        raise DataError(f"{path}: missing counter(s) {', '.join(missing)}")
    return init


def check_annotation_objects(
    annotations: Iterable[dict],
    association: Mapping[str, Sequence[str]],
    source: Any = "annotations",
    association_source: Any = "association",
) -> None:
    """Every generative truth / hallu object must be a key of the association map (the reference would crash)."""
    for index, record in enumerate(annotations):
        if record.get("type") != GENERATIVE:
            continue
        for field in ("truth", "hallu"):
            for obj in record[field]:
                if obj not in association:
                    raise DataError(
                        f"{_where(source, index, record)}, field {field!r}: object {obj!r} is not a key of "
                        f"{association_source}"
                    )


# ---------------------------------------------------------------- noun extraction

# Closed word classes for `likely_noun_mask` (compared lower-cased).
_MODALS = frozenset("can could may might must shall should will would".split())
_SUBJECT_PRONOUNS = frozenset("i we you they he she".split())
# "that" and "one" are left out: "a sign that can be seen", "one can see" (the follower rule still catches
# "one can of soda").
_DETERMINERS = frozenset(
    """a an the this these those each every another any some no my your his her its our their two three four
    five six seven eight nine ten several""".split()
)
_NOUN_FOLLOWERS = frozenset(
    """of and or but nor on in at by with without for from to into onto next near beside behind under over above
    below between against along around inside outside atop is are was were has had sits stands lies rests
    contains holds filled full placed located that which who while as""".split()
) | _MODALS


def _is_can_noun(tokens: Sequence[str], i: int) -> bool:
    """'a can', 'the trash can.', 'a can of soda' -> noun; 'we can see', 'it can be' -> modal."""
    prev = tokens[i - 1].lower() if i > 0 else ""
    nxt = tokens[i + 1].lower() if i + 1 < len(tokens) else ""
    if prev in _DETERMINERS or prev.isdigit():
        return True
    return not nxt or not nxt[0].isalpha() or nxt in _NOUN_FOLLOWERS


def likely_noun_mask(tokens: Sequence[str]) -> list[bool]:
    """A stand-in for the reference's POS filter (`pos.startswith('NN')`), deliberately narrow.

    Every token is taken as a noun except "can" used as a modal (see `_is_can_noun`) and any token in a verb
    slot: right after a modal (a modal "can" included), after a modal + "not"/"n't", or after a subject pronoun
    ("we", "they", ...). Vocabulary words used as adjectives or as verbs after a noun subject are still kept.
    """
    lower = [t.lower() for t in tokens]
    modal = [w in _MODALS and not (w == "can" and _is_can_noun(tokens, i)) for i, w in enumerate(lower)]
    mask = []
    for i, word in enumerate(lower):
        after_modal = i > 0 and modal[i - 1]
        after_negated_modal = i > 1 and lower[i - 1] in ("not", "n't") and modal[i - 2]
        after_pronoun = i > 0 and lower[i - 1] in _SUBJECT_PRONOUNS
        mask.append(not (modal[i] or after_modal or after_negated_modal or after_pronoun))
    return mask


def make_lemmatizer(vocabulary: Iterable[str]) -> Lemmatizer:
    """The default lemmatizer: a stand-in for WordNetLemmatizer().lemmatize on nouns.

    A vocabulary word is kept whole ("bus", "grass", "glass", "sunglasses"); a token with an upper-case letter is
    kept whole (WordNet finds no lemma for "Dogs" and returns it unchanged); any other token is singularized
    with `chair.singularize` ("dogs" -> "dog", "glasses" -> "glass", "women" -> "woman").
    """
    vocab = frozenset(vocabulary)

    def lemmatize(token: str) -> str:
        if token in vocab or token != token.lower():
            return token
        return singularize(token)

    return lemmatize


def _multiword_entries(vocabulary: frozenset[str]) -> dict[str, list[tuple[str, ...]]]:
    """Multi-word vocabulary entries as word tuples, keyed by their first word."""
    entries: dict[str, list[tuple[str, ...]]] = {}
    for entry in vocabulary:
        words = tuple(entry.split(" "))
        if len(words) > 1 and all(words):
            entries.setdefault(words[0], []).append(words)
    return entries


def _multiword_at(i: int, tokens: Sequence[str], lemmas: Sequence[str], candidates: Sequence[tuple[str, ...]]):
    """The longest entry starting at token i; each word may equal the token or its lemma ("traffic lights")."""
    for words in candidates:
        span = range(i, i + len(words))
        if span.stop <= len(tokens) and all(w in (tokens[j], lemmas[j]) for w, j in zip(words, span)):
            return words
    return None


def extract_nouns(
    text: str,
    vocabulary: Iterable[str],
    *,
    noun_filter: NounFilter | None = likely_noun_mask,
    lemmatize: Lemmatizer | None = None,
) -> list[str]:
    """The response's object nouns in order, with multiplicity: tokenize (case kept), keep the tokens the
    noun_filter accepts (None keeps all), lemmatize them (default `make_lemmatizer`), keep those in the vocabulary.

    "We can see a can, two glasses and People." -> ["can", "glass"] for a vocabulary holding can, glass, person.
    A multi-word entry ("traffic light") is matched as a token sequence, longest first, and counts once; its last
    token must pass the noun_filter. The released relation.json has none; the reference, tagging single tokens,
    could never match one. To reproduce the reference where NLTK data exists: noun_filter=lambda toks:
    [tag.startswith("NN") for _, tag in nltk.pos_tag(list(toks))], lemmatize=WordNetLemmatizer().lemmatize.
    """
    vocab = vocabulary if isinstance(vocabulary, frozenset) else frozenset(vocabulary)
    tokens = tokenize(text)
    mask = list(noun_filter(tokens)) if noun_filter is not None else [True] * len(tokens)
    if len(mask) != len(tokens):
        raise ValueError(f"noun_filter returned {len(mask)} flags for {len(tokens)} tokens")
    lemma = lemmatize if lemmatize is not None else make_lemmatizer(vocab)
    lemmas = [lemma(token) for token in tokens]
    multiword = _multiword_entries(vocab)
    nouns, i = [], 0
    while i < len(tokens):
        candidates = sorted({w for key in {tokens[i], lemmas[i]} for w in multiword.get(key, ())},
                            key=lambda w: (-len(w), w))
        words = _multiword_at(i, tokens, lemmas, candidates) if candidates else None
        if words is not None:
            if mask[i + len(words) - 1]:
                nouns.append(" ".join(words))
            i += len(words)
            continue
        if mask[i] and lemmas[i] in vocab:
            nouns.append(lemmas[i])
        i += 1
    return nouns


# ---------------------------------------------------------------- generative matching


def _search_list(objects: Sequence[str], association: Mapping[str, Sequence[str]]) -> list[tuple[str, int, bool]]:
    """The reference's lookup order: (word, object index, is_object) for the association words of every object
    in object order, then the objects themselves. The first entry equal to a noun decides what it covers."""
    entries = [(word, i, False) for i, obj in enumerate(objects) for word in association[obj]]
    return entries + [(obj, i, True) for i, obj in enumerate(objects)]


def _first_exact(noun: str, entries: Sequence[tuple[str, int, bool]]) -> tuple[str, int, bool] | None:
    return next((entry for entry in entries if entry[0] == noun), None)


def _first_similar(
    noun: str, entries: Sequence[tuple[str, int, bool]], similarity: Similarity, threshold: float
) -> tuple[str, int, bool] | None:
    return next((entry for entry in entries if similarity(noun, entry[0]) > threshold), None)


def match_nouns(
    nouns: Sequence[str],
    truth: Sequence[str],
    hallu: Sequence[str],
    association: Mapping[str, Sequence[str]],
    safe_words: Iterable[str],
    *,
    similarity: Similarity | None = None,
    similarity_threshold: float = SIMILARITY_THRESHOLD,
) -> dict:
    """Judge each noun of one generative response exactly as the reference's loop (module docstring).

    Returns {"matches": [{"noun", "status", "matched", "truth_object", "hallu_objects"}, ...] (one per noun),
    "truth_covered": [bool per truth object], "hallu_covered": [bool per hallu object],
    "hallucinated": [nouns, with multiplicity]}. status is "safe_word" (global safe word), "truth" (equals a
    truth object), "association" (an association word of a truth object), "similar" (near-synonym of one) or
    "hallucinated"; matched is the list word it matched; hallu_objects the hallu targets it marked.
    """
    safe = safe_words if isinstance(safe_words, (set, frozenset)) else frozenset(safe_words)
    truth_entries, hallu_entries = _search_list(truth, association), _search_list(hallu, association)
    truth_covered, hallu_covered = [False] * len(truth), [False] * len(hallu)
    matches = []
    for noun in nouns:
        match = {"noun": noun, "status": "hallucinated", "matched": None, "truth_object": None, "hallu_objects": []}
        matches.append(match)
        if noun in safe:
            match["status"] = "safe_word"
            continue
        hit = _first_exact(noun, truth_entries)
        if hit is not None:
            truth_covered[hit[1]] = True
            match.update(status="truth" if hit[2] else "association", matched=hit[0], truth_object=truth[hit[1]])
            continue
        hallu_hits = [_first_exact(noun, hallu_entries)]
        if similarity is not None:
            hallu_hits.append(_first_similar(noun, hallu_entries, similarity, similarity_threshold))
        for hallu_hit in hallu_hits:
            if hallu_hit is not None:
                hallu_covered[hallu_hit[1]] = True
                if hallu[hallu_hit[1]] not in match["hallu_objects"]:
                    match["hallu_objects"].append(hallu[hallu_hit[1]])
        if similarity is not None:
            near = _first_similar(noun, truth_entries, similarity, similarity_threshold)
            if near is not None:
                truth_covered[near[1]] = True
                match.update(status="similar", matched=near[0], truth_object=truth[near[1]])
                continue
    hallucinated = [m["noun"] for m in matches if m["status"] == "hallucinated"]
    return {"matches": matches, "truth_covered": truth_covered, "hallu_covered": hallu_covered,
            "hallucinated": hallucinated}


def score_generative_item(
    response: dict,
    annotation: dict,
    association: Mapping[str, Sequence[str]],
    safe_words: Iterable[str],
    vocabulary: Iterable[str],
    *,
    similarity: Similarity | None = None,
    similarity_threshold: float = SIMILARITY_THRESHOLD,
    noun_filter: NounFilter | None = likely_noun_mask,
    lemmatize: Lemmatizer | None = None,
) -> dict:
    """One generative record: the extracted nouns, how each was judged, and the per-item counts."""
    nouns = extract_nouns(response["response"], vocabulary, noun_filter=noun_filter, lemmatize=lemmatize)
    judged = match_nouns(nouns, annotation["truth"], annotation["hallu"], association, safe_words,
                         similarity=similarity, similarity_threshold=similarity_threshold)
    return {
        "id": annotation["id"],
        "type": GENERATIVE,
        "task": "generative",
        "response": response["response"],
        "nouns": nouns,
        "matches": judged["matches"],
        "hallucinated": judged["hallucinated"],
        "truth": list(annotation["truth"]),
        "truth_covered": judged["truth_covered"],
        "hallu": list(annotation["hallu"]),
        "hallu_covered": judged["hallu_covered"],
        "n_nouns": len(nouns),
        "n_hallucinated": len(judged["hallucinated"]),
        "n_truth": len(annotation["truth"]),
        "n_truth_covered": sum(judged["truth_covered"]),
        "n_hallu": len(annotation["hallu"]),
        "n_hallu_covered": sum(judged["hallu_covered"]),
        "has_hallucination": bool(judged["hallucinated"]),
    }


# ---------------------------------------------------------------- discriminative parsing


def parse_reference(response: str) -> str | None:
    """The reference rule: "yes" only for exactly "Yes", "no" only for exactly "No" (case, spaces, punctuation
    all matter: "No.", "no", " No" and "No, there is not." are unparseable), else None."""
    return {"Yes": "yes", "No": "no"}.get(response)


PARSERS: dict[str, Callable[[str], str | None]] = {"reference": parse_reference, "first_word": parse_first_word}


def score_discriminative_item(response: dict, annotation: dict, parse: Callable[[str], str | None]) -> dict:
    """One discriminative record. An unparsed answer (prediction None) is wrong and is never a predicted "No"."""
    dimension, kind = DISCRIMINATIVE_TYPES[annotation["type"]]
    prediction = parse(response["response"])
    return {
        "id": annotation["id"],
        "type": annotation["type"],
        "task": "discriminative",
        "dimension": dimension,
        "kind": kind,
        "truth": annotation["truth"],
        "response": response["response"],
        "prediction": prediction,
        "valid": prediction is not None,
        "correct": prediction == annotation["truth"],
    }


# ---------------------------------------------------------------- metrics


def _split(records: Iterable[dict]) -> tuple[list[dict], list[dict]]:
    records = list(records)
    return [r for r in records if r["task"] == "generative"], [r for r in records if r["task"] == "discriminative"]


def _groups(record: dict) -> tuple[str, ...]:
    """The reference's counter prefixes a discriminative record adds to: overall, then its group."""
    return ("", _GROUP_PREFIX[record["kind"] or record["dimension"]])


def reference_counters(records: Iterable[dict], init: Mapping[str, float] | None = None) -> dict[str, float]:
    """The reference's counters (names as in data/metrics.txt) over the records.

    Without init they are plain integer counts. With init (e.g. REFERENCE_COUNTER_INIT) each counter starts
    there and receives the same per-item increments in the same (response) order as the reference, so the float
    sums, and the rounded metrics built from them, are identical to its own.
    """
    init = init or {}
    counters = {name: init.get(name, 0) for name in COUNTER_NAMES}
    for r in records:
        if r["task"] == "generative":
            counters["chair_score"] += r["n_hallucinated"]
            counters["chair_num"] += r["n_nouns"]
            counters["safe_cover_score"] += r["n_truth_covered"]
            counters["safe_cover_num"] += r["n_truth"]
            counters["hallu_cover_score"] += r["n_hallu_covered"]
            counters["hallu_cover_num"] += r["n_hallu"]
            if not r["has_hallucination"]:
                counters["non_hallu_score"] += 1
            counters["non_hallu_num"] += 1
            continue
        label_no, pred_no = r["truth"] == "no", r["prediction"] == "no"
        for p in _groups(r):
            counters[f"{p}qa_correct_num"] += 1
            if r["correct"]:
                counters[f"{p}qa_correct_score"] += 1
            if label_no:
                counters[f"{p}qa_no_num"] += 1
            if pred_no:
                counters[f"{p}qa_ans_no_num"] += 1
            if label_no and pred_no:
                counters[f"{p}qa_no_score"] += 1
                counters[f"{p}qa_ans_no_score"] += 1
    return counters


def _pct(num: float, den: float) -> float:
    """num / den * 100 in the reference's operation order; 0.0 when den is 0."""
    return num / den * 100 if den else 0.0


def _f1_pct(precision: float, recall: float, guard: float) -> float:
    """F1 in percent from P and R in percent, as the reference writes it (guard 0 gives the plain F1)."""
    p, r = precision / 100, recall / 100
    den = p + r + guard
    return 2 * p * r / den * 100 if den else 0.0


def _qa_metrics(c: Mapping[str, float], prefixes: Sequence[str], guard: float, reference: bool) -> dict:
    """Accuracy / precision / recall / F1 of the discriminative groups pooled over prefixes (attribute = 3)."""

    def pooled(name: str) -> float:  # left to right, like the reference's attr_* sums (0 + a == a exactly)
        return sum(c[f"{p}{name}"] for p in prefixes)

    values = {
        "accuracy": _pct(pooled("qa_correct_score"), pooled("qa_correct_num")),
        "precision": _pct(pooled("qa_ans_no_score"), pooled("qa_ans_no_num")),
        "recall": _pct(pooled("qa_no_score"), pooled("qa_no_num")),
    }
    if reference:
        values = {k: round(v, 1) for k, v in values.items()}
        values["f1"] = round(_f1_pct(values["precision"], values["recall"], guard), 1)
    else:
        values["f1"] = _f1_pct(values["precision"], values["recall"], 0.0)
    return values


def amber_score(chair: float, f1: float) -> float:
    """AMBER score = 0.5 * ((100 - CHAIR) + F1), both in percent (0-100), result in percent (paper, eq. 1)."""
    return 0.5 * ((100 - chair) + f1)


def amber_metrics(
    records: Iterable[dict],
    *,
    reference_arithmetic: bool = True,
    counter_init: Mapping[str, float] | None = None,
) -> dict:
    """All AMBER metrics (percent) and counts from per-item records (those of `score_amber`).

    reference_arithmetic=True reproduces the reference printout (module docstring): counters start from
    counter_init (default REFERENCE_COUNTER_INIT, i.e. data/metrics.txt), values are rounded to 1 decimal and F1
    comes from the rounded P and R with the reference's guard. False: plain ratios, unrounded. A section with no
    items gives NaN; amber_score is NaN unless both tasks have items.
    """
    records = list(records)
    generative, discriminative = _split(records)
    counts = reference_counters(records)
    init = (REFERENCE_COUNTER_INIT if counter_init is None else counter_init) if reference_arithmetic else None
    c = reference_counters(records, init)
    nan = float("nan")

    out: dict[str, Any] = {}
    gen = {
        "chair": _pct(c["chair_score"], c["chair_num"]),
        "cover": _pct(c["safe_cover_score"], c["safe_cover_num"]),
        "hal": 100 - _pct(c["non_hallu_score"], c["non_hallu_num"]),
        "cog": _pct(c["hallu_cover_score"], c["hallu_cover_num"]),
    }
    if reference_arithmetic:
        gen = {k: round(v, 1) for k, v in gen.items()}
    out.update(gen if generative else dict.fromkeys(gen, nan))

    sections = {"": (("",), _DEFAULT_F1_GUARD), "existence/": (("ha_",), _F1_GUARD["existence"]),
                "attribute/": (("as_", "an_", "aa_"), _DEFAULT_F1_GUARD), "relation/": (("asso_",), _DEFAULT_F1_GUARD),
                **{f"{k}/": ((_GROUP_PREFIX[k],), _DEFAULT_F1_GUARD) for k in ATTRIBUTE_KINDS}}
    for key, (prefixes, guard) in sections.items():
        n_items = sum(counts[f"{p}qa_correct_num"] for p in prefixes)
        values = _qa_metrics(c, prefixes, guard, reference_arithmetic)
        out.update({f"{key}{name}": (v if n_items else nan) for name, v in values.items()})
        if key:
            out[f"{key}n"] = n_items
            out[f"{key}n_invalid"] = sum(
                1 for r in discriminative if not r["valid"] and _GROUP_PREFIX[r["kind"] or r["dimension"]] in prefixes
            )

    score = amber_score(out["chair"], out["f1"]) if generative and discriminative else nan
    out["amber_score"] = round(score, 2) if reference_arithmetic and not math.isnan(score) else score
    out.update(
        n_generative=len(generative),
        n_nouns=counts["chair_num"],
        n_hallucinated_nouns=counts["chair_score"],
        n_hallucinated_responses=len(generative) - counts["non_hallu_score"],
        n_truth_objects=counts["safe_cover_num"],
        n_truth_covered=counts["safe_cover_score"],
        n_hallu_objects=counts["hallu_cover_num"],
        n_hallu_covered=counts["hallu_cover_score"],
        n_discriminative=len(discriminative),
        n_correct=counts["qa_correct_score"],
        n_label_no=counts["qa_no_num"],
        n_pred_no=counts["qa_ans_no_num"],
        n_true_no=counts["qa_ans_no_score"],
        n_invalid=sum(1 for r in discriminative if not r["valid"]),
        reference_arithmetic=reference_arithmetic,
        version=AMBER_VERSION,
    )
    return out


# ---------------------------------------------------------------- bootstrap intervals

# Per-item rows for the bootstrap. Generative: hallucinated nouns, nouns, covered truth, truth, covered hallu,
# hallu, has-hallucination. Discriminative: true "no" (label and prediction), predicted "no", label "no", correct.
_GEN_COLS = 7
_DISC_COLS = 4


def _generative_rows(records: Sequence[dict]) -> np.ndarray:
    rows = [[r["n_hallucinated"], r["n_nouns"], r["n_truth_covered"], r["n_truth"], r["n_hallu_covered"],
             r["n_hallu"], int(r["has_hallucination"])] for r in records]
    return np.asarray(rows, dtype=float).reshape(-1, _GEN_COLS)


def _discriminative_rows(records: Sequence[dict]) -> np.ndarray:
    rows = []
    for r in records:
        label_no, pred_no = r["truth"] == "no", r["prediction"] == "no"
        rows.append([label_no and pred_no, pred_no, label_no, r["correct"]])
    return np.asarray(rows, dtype=float).reshape(-1, _DISC_COLS)


def _col_ratio(rows: np.ndarray, num: int, den: int) -> float:
    return _pct(float(rows[:, num].sum()), float(rows[:, den].sum()))


def _f1_of(rows: np.ndarray, offset: int = 0) -> float:
    precision = _col_ratio(rows, offset + 0, offset + 1)
    recall = _col_ratio(rows, offset + 0, offset + 2)
    return _f1_pct(precision, recall, 0.0)


_STATISTICS: dict[str, tuple[str, Callable[[np.ndarray], float]]] = {
    "chair": ("generative", lambda rows: _col_ratio(rows, 0, 1)),
    "cover": ("generative", lambda rows: _col_ratio(rows, 2, 3)),
    "cog": ("generative", lambda rows: _col_ratio(rows, 4, 5)),
    "hal": ("generative", lambda rows: 100 * float(rows[:, 6].mean())),
    "accuracy": ("discriminative", lambda rows: 100 * float(rows[:, 3].mean())),
    "precision": ("discriminative", lambda rows: _col_ratio(rows, 0, 1)),
    "recall": ("discriminative", lambda rows: _col_ratio(rows, 0, 2)),
    "f1": ("discriminative", _f1_of),
    # pooled rows: the 7 generative columns, then the 4 discriminative ones (zeros in the other task's part)
    "amber_score": ("both", lambda rows: amber_score(_col_ratio(rows, 0, 1), _f1_of(rows, _GEN_COLS))),
}


def amber_confidence_intervals(records: Iterable[dict], *, n_boot: int = 1000, seed: int = 0) -> dict:
    """95 % percentile-bootstrap intervals (`stats.bootstrap_ci`, items resampled) of the headline metrics.

    Ratio-of-sums metrics (CHAIR, Cover, Cog, precision, recall, F1) resample per-item (numerator,
    denominator) rows, so each resample recomputes the corpus-level ratio. amber_score resamples the pooled
    generative + discriminative items. Statistics use the plain (unrounded) definitions, in percent.
    Returns {"<metric>_ci95_low": ..., "<metric>_ci95_high": ...}; NaN where a task has no items.
    """
    generative, discriminative = _split(records)
    gen_rows, disc_rows = _generative_rows(generative), _discriminative_rows(discriminative)
    pooled = np.vstack([
        np.hstack([gen_rows, np.zeros((len(gen_rows), _DISC_COLS))]),
        np.hstack([np.zeros((len(disc_rows), _GEN_COLS)), disc_rows]),
    ])
    data = {"generative": gen_rows, "discriminative": disc_rows,
            "both": pooled if len(gen_rows) and len(disc_rows) else pooled[:0]}
    out = {}
    for name, (task, statistic) in _STATISTICS.items():
        ci = bootstrap_ci(data[task], statistic, n_boot=n_boot, level=0.95, seed=seed)
        out[f"{name}_ci95_low"], out[f"{name}_ci95_high"] = ci["low"], ci["high"]
    return out


# ---------------------------------------------------------------- top level


def score_amber(
    responses: Sequence[dict],
    annotations: Sequence[dict],
    association: Mapping[str, Sequence[str]],
    safe_words: Iterable[str],
    *,
    similarity: Similarity | None = None,
    similarity_threshold: float = SIMILARITY_THRESHOLD,
    parser: str = "reference",
    noun_filter: NounFilter | None = likely_noun_mask,
    lemmatize: Lemmatizer | None = None,
    reference_arithmetic: bool = True,
    counter_init: Mapping[str, float] | None = None,
    ci: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[dict, list[dict]]:
    """Score AMBER responses: (metrics, records), one record per response, in response order.

    responses: [{"id", "response"}, ...] (any subset of the annotated ids: only answered items are scored, as in
    the reference; `n_unanswered` counts the rest). annotations: the annotations.json records. association:
    relation.json. safe_words: safe_words.txt. similarity(noun, word) -> float enables the near-synonym step
    (> similarity_threshold). parser: "reference" (exact "Yes"/"No") or "first_word". noun_filter / lemmatize:
    see `extract_nouns`. reference_arithmetic / counter_init: see `amber_metrics`. ci: add
    `<metric>_ci95_low/_high` for HEADLINE_METRICS (n_boot resamples, seed).

    Metric keys (percent): chair, cover, hal, cog, accuracy, precision, recall, f1, {existence, attribute,
    relation, state, number, action}/{accuracy, precision, recall, f1, n, n_invalid}, amber_score; counts
    (n_generative, n_nouns, n_hallucinated_nouns, n_hallucinated_responses, n_truth_objects, n_truth_covered,
    n_hallu_objects, n_hallu_covered, n_discriminative, n_correct, n_label_no, n_pred_no, n_true_no,
    n_invalid, n_unanswered); settings (parser, noun_filter, lemmatizer, near_synonyms, similarity_threshold,
    reference_arithmetic, version). Raises DataError for malformed or inconsistent inputs.
    """
    if parser not in PARSERS:
        raise ValueError(f"unknown AMBER parser {parser!r}; choose one of {sorted(PARSERS)}")
    by_id = check_annotations(annotations)
    check_responses(responses)
    check_association(association)
    check_annotation_objects(annotations, association)
    vocabulary = association_vocabulary(association)
    safe = frozenset(safe_words)
    parse = PARSERS[parser]
    records = []
    for index, response in enumerate(responses):
        annotation = by_id.get(response["id"])
        if annotation is None:
            raise DataError(f"{_where('responses', index, response)}, field 'id': no annotation has this id")
        if annotation["type"] == GENERATIVE:
            records.append(score_generative_item(
                response, annotation, association, safe, vocabulary, similarity=similarity,
                similarity_threshold=similarity_threshold, noun_filter=noun_filter, lemmatize=lemmatize))
        else:
            records.append(score_discriminative_item(response, annotation, parse))
    metrics = amber_metrics(records, reference_arithmetic=reference_arithmetic, counter_init=counter_init)
    if ci:
        metrics.update(amber_confidence_intervals(records, n_boot=n_boot, seed=seed))
    metrics.update(
        n_unanswered=len(by_id) - len(records),
        parser=parser,
        noun_filter=getattr(noun_filter, "__name__", "custom") if noun_filter is not None else "none",
        lemmatizer="default" if lemmatize is None else getattr(lemmatize, "__name__", "custom"),
        near_synonyms=similarity is not None,
        similarity_threshold=similarity_threshold,
    )
    logger.info(
        "AMBER: scored %d generative and %d discriminative responses (%d unparsed answers, parser %s)",
        metrics["n_generative"], metrics["n_discriminative"], metrics["n_invalid"], parser,
    )
    return metrics, records


def score_amber_files(
    responses_path: str | Path,
    data_dir: str | Path | None = None,
    *,
    annotations_path: str | Path | None = None,
    relation_path: str | Path | None = None,
    safe_words_path: str | Path | None = None,
    metrics_path: str | Path | None = None,
    **score_kwargs: Any,
) -> tuple[dict, list[dict]]:
    """Read the released files and score: responses (inference.py format) against data_dir's annotations.json,
    relation.json, safe_words.txt and, if present, metrics.txt (the counter init; else REFERENCE_COUNTER_INIT).

    Each *_path overrides the file in data_dir (one of the two is needed per file). score_kwargs go to
    `score_amber`. Errors name the file, record and field.
    """

    def resolve(explicit: str | Path | None, name: str) -> Path:
        if explicit is not None:
            return Path(explicit)
        if data_dir is None:
            raise ValueError(f"AMBER: give data_dir or the path of {name}")
        return Path(data_dir) / name

    annotations_file = resolve(annotations_path, ANNOTATIONS_FILE)
    relation_file = resolve(relation_path, RELATION_FILE)
    annotations = load_amber_annotations(annotations_file)
    association = load_association(relation_file)
    check_annotation_objects(annotations, association, annotations_file, relation_file)
    safe_words = load_safe_words(resolve(safe_words_path, SAFE_WORDS_FILE))
    responses = load_amber_responses(responses_path)
    responses_file = Path(responses_path)
    ids = {a["id"] for a in annotations}
    for index, response in enumerate(responses):
        if response["id"] not in ids:
            raise DataError(f"{_where(responses_file, index, response)}, field 'id': no annotation in "
                            f"{annotations_file} has this id")
    if "counter_init" not in score_kwargs:
        metrics_file = Path(metrics_path) if metrics_path is not None else (
            Path(data_dir) / METRICS_FILE if data_dir is not None else None)
        if metrics_file is not None and (metrics_path is not None or metrics_file.is_file()):
            score_kwargs["counter_init"] = load_metrics_init(metrics_file)
    return score_amber(responses, annotations, association, safe_words, **score_kwargs)
