"""CHAIR: Caption Hallucination Assessment with Image Relevance (Rohrbach, Hendricks et al., EMNLP 2018).

Finds the object words a caption mentions, maps each to its canonical class through a synonym list, and counts
a mention as hallucinated when its class is not in the image's ground-truth set (instance categories plus the
objects found, with the same rules, in the reference captions). Faithful to LisaAnne/Hallucination
`utils/chair.py` by default, with no nltk data or `pattern` install: `tokenize` reproduces the boundaries of
`nltk.word_tokenize` on caption text and `singularize` is a rule-for-rule port of `pattern.en.singularize`
(including its quirks: "bus" -> "bu", "glass" -> "glas", "ties" -> "ty"). Fixed behaviours are opt-in and named:
`load_synonyms(..., strip=True)` (double-space entries) and `protect_vocabulary=True` (vocabulary words are not
singularized, so "bus" matches).

Deviations from the reference: the bigram table also holds every multi-word entry of the loaded synonym file,
so another world's "coffee table" merges like "traffic light" (for the COCO list this adds only "dining table",
reported as the word "dining table" where the reference reports its synonym "table": same class, same counts);
`tokenize` emulates punkt's sentence split with a rule (a word-final period ends a sentence unless it follows a
1-letter initial or a number before a lower-case word). Checked against nltk 3.9.1 on caption text, it can
still differ on abbreviations and on runs of punctuation such as "dog.!".

    CHAIR_i = hallucinated mentions / all mentions (with multiplicity, over the corpus)
    CHAIR_s = captions with >= 1 hallucinated mention / all captions
    recall  = sum of |GT classes mentioned| / sum of |GT classes|  (Object HalBench `obj_rec`)

    >>> syn = load_synonyms(COCO_SYNONYMS_PATH); chair_metrics(captions, gt_sets, syn)["chair_i"]
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping, Sequence

from mmstudy.io import DataError

logger = logging.getLogger(__name__)

CHAIR_VERSION = 1  # bump whenever tokenization, singularization, synonym parsing or the metrics change
COCO_SYNONYMS_PATH = Path(__file__).resolve().parents[1] / "resources" / "coco_chair_synonyms.txt"

# The reference's hard-coded MSCOCO "double words" (bigrams treated as one word), in its order.
# fmt: off
REFERENCE_DOUBLE_WORDS = (
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal", "stop light",
    "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball", "baseball bat", "baseball glove",
    "tennis racket", "wine glass", "hot dog", "cell phone", "mobile phone", "teddy bear", "hair drier",
    "potted plant", "bow tie", "laptop computer", "stove top oven", "home plate",
)
# fmt: on
# "baby bird" -> "bird" and "adult dog" -> "dog", so the qualifier does not fire as the class "person".
ANIMAL_WORDS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
# "passenger jet" -> "jet", so "passenger" does not fire as "person".
VEHICLE_WORDS = ("jet", "train")
# Applied last, so they override the self-mappings above ("bow tie" is reported as "tie").
SPECIAL_DOUBLE_WORDS = {"bow tie": "tie", "toilet seat": "toilet", "wine glas": "wine glass"}


# ---------------------------------------------------------------- singularize (port of pattern.en 2.6)
# Word lists and the ordered rule table transcribed from pattern.en's inflect module (CLiPS, BSD licence), kept
# with their defects because the reference scorer ran through them. Three missing commas in pattern join
# neighbouring words ("wildebeest" "carp" -> "wildebeestcarp", ...); the joined strings are kept, since the
# lookups below test whether a list word *ends with* the input.

_UNINFLECTED = tuple(
    """
    bison debris headquarters pincers trout bream diabetes herpes pliers tuna breeches djinn high-jinks
    proceedings whiting britches eland homework rabies wildebeestcarp elk innings salmon chassis flounder
    jackanapes scissors christmas gallows mackerel series clippers georgia measles shears cod graffiti mews
    species contretemps mumps swine corps news swiss
    """.split()
)
_UNCOUNTABLE = tuple(
    """
    advice equipment happiness luggage news software bread fruit information mathematics progress understanding
    butter furniture ketchup mayonnaise research watercheese garbage knowledge meat rice electricity gravel love
    mustard sand
    """.split()
)
# Plurals in -ies whose singular keeps -ie. pattern returns the word *unchanged* here ("cookies" stays "cookies"),
# and its "^pie"/"^tie" entries never match (so "ties" -> "ty").
_IE_WORDS = tuple(
    """
    alergie cutie hoagie newbie softie veggie auntie doggie hottie nightie sortie weenie beanie eyrie indie
    oldie stoolie yuppie birdie freebie junkie ^pie sweetie zombiebogie goonie laddie pixie techie bombie
    groupie laramie quickie ^tie collie hankie lingerie reverie toughie cookie hippie meanie rookie valkyrie
    """.split()
)
# Irregular plural endings -> singular endings, matched as suffixes ("women" -> "woman", "four" -> "fmy").
# fmt: off
_IRREGULAR = {
    "atlantes": "atlas", "atlases": "atlas", "axes": "axe", "beeves": "beef", "brethren": "brother",
    "children": "child", "corpora": "corpus", "corpuses": "corpus", "ephemerides": "ephemeris", "feet": "foot",
    "ganglia": "ganglion", "geese": "goose", "genera": "genus", "genii": "genie", "graffiti": "graffito",
    "helves": "helve", "kine": "cow", "leaves": "leaf", "loaves": "loaf", "men": "man", "mongooses": "mongoose",
    "monies": "money", "moves": "move", "mythoi": "mythos", "numena": "numen", "occipita": "occiput",
    "octopodes": "octopus", "opera": "opus", "opuses": "opus", "our": "my", "oxen": "ox", "penes": "penis",
    "penises": "penis", "people": "person", "sexes": "sex", "soliloquies": "soliloquy", "teeth": "tooth",
    "testes": "testis", "trilbys": "trilby", "turves": "turf", "zoa": "zoon",
}
# fmt: on
# Ordered (suffix pattern, replacement); the first pattern that matches decides. Unmatched groups expand to "".
_RULES = tuple(
    (re.compile(p, re.IGNORECASE if ci else 0), r)
    for p, r, ci in (
        (r"(.)ae$", r"\1a", 1),
        (r"(.)itis$", r"\1itis", 1),
        (r"(.)eaux$", r"\1eau", 1),
        (r"(quiz)zes$", r"\1", 1),
        (r"(matr)ices$", r"\1ix", 1),
        (r"(ap|vert|ind)ices$", r"\1ex", 1),
        (r"^(ox)en", r"\1", 1),
        (r"(alias|status)es$", r"\1", 1),
        (r"([octop|vir])i$", r"\1us", 1),
        (r"(cris|ax|test)es$", r"\1is", 1),
        (r"(shoe)s$", r"\1", 1),
        (r"(o)es$", r"\1", 1),
        (r"(bus)es$", r"\1", 1),
        (r"([m|l])ice$", r"\1ouse", 1),
        (r"(x|ch|ss|sh)es$", r"\1", 1),
        (r"(m)ovies$", r"\1ovie", 1),
        (r"(.)ombies$", r"\1ombie", 1),
        (r"(s)eries$", r"\1eries", 1),
        (r"([^aeiouy]|qu)ies$", r"\1y", 1),
        (r"([aeo]l)ves$", r"\1f", 0),
        (r"([^d]ea)ves$", r"\1f", 0),
        (r"arves$", "arf", 0),
        (r"erves$", "erve", 0),
        (r"([nlw]i)ves$", r"\1fe", 0),
        (r"([lr])ves$", r"\1f", 1),
        (r"([aeo])ves$", r"\1ve", 0),
        (r"(sive)s$", r"\1", 1),
        (r"(tive)s$", r"\1", 1),
        (r"(hive)s$", r"\1", 1),
        (r"([^f])ves$", r"\1fe", 1),
        (r"(^analy)ses$", r"\1sis", 1),
        (r"((a)naly|(b)a|(d)iagno|(p)arenthe|(p)rogno|(s)ynop|(t)he)ses$", r"\1\2sis", 1),
        (r"(.)opses$", r"\1opsis", 1),
        (r"(.)yses$", r"\1ysis", 1),
        (r"(h|d|r|o|n|b|cl|p)oses$", r"\1ose", 1),
        (r"(fruct|gluc|galact|lact|ket|malt|rib|sacchar|cellul)ose$", r"\1ose", 1),
        (r"(.)oses$", r"\1osis", 1),
        (r"([ti])a$", r"\1um", 1),
        (r"(n)ews$", r"\1ews", 1),
        (r"s$", "", 1),
    )
)
_PLURAL_PREPOSITIONS = frozenset(
    """
    about above across after among around at athwart before behind below beneath beside besides between betwixt
    during except for from in into near of off on onto out over since till to under until unto upon with
    """.split()
)


def singularize(word: str) -> str:
    """pattern.en.singularize, reproduced rule for rule (see the notes on the tables above).

    "people" -> "person", "knives" -> "knife", "mice" -> "mouse", "buses" -> "bus", "glasses" -> "glass", but
    also "bus" -> "bu", "glass" -> "glas", "tennis" -> "tenni", "ties" -> "ty", "cookies" -> "cookies".
    """
    parts = word.split("-")
    if len(parts) > 1 and parts[1] in _PLURAL_PREPOSITIONS:  # "mothers-in-law" -> "mother-in-law"
        return singularize(parts[0]) + "-" + "-".join(parts[1:])
    if word.endswith("'"):  # "dogs'" -> "dog's"
        return singularize(word[:-1]) + "'s"
    low = word.lower()
    if any(entry.endswith(low) for entry in _UNINFLECTED + _UNCOUNTABLE):
        return word
    if any(low.endswith(entry + "s") for entry in _IE_WORDS):
        return low
    for plural, singular in _IRREGULAR.items():
        if low.endswith(plural):
            return re.sub(f"(?i){plural}$", singular, word)
    for pattern, replacement in _RULES:
        if pattern.search(word):
            return pattern.sub(replacement, word)
    return word


# ---------------------------------------------------------------- tokenize (boundaries of nltk.word_tokenize)
# Each rule pads a boundary with spaces; the text is then split on whitespace. Together they reproduce the token
# boundaries of punkt sentence splitting + NLTKWordTokenizer on lower-cased caption text (quote spelling such as
# `` and '' is not reproduced: it never meets the synonym vocabulary). Where punkt would keep an abbreviation's
# period mid-text ("mr."), this splits it, which changes no object word.
_SPACING_RULES = tuple(
    (re.compile(p), r)
    for p, r in (
        (r"([«“‘„»”’\"]|`+|'')", r" \1 "),  # double and typographic quotes
        (r"(')(?!re|ve|ll|m|t|s|d|n)(\w)\b", r"\1 \2"),  # opening quote before a 1-letter word
        (r"([:,])([^\d])", r" \1 \2"),  # , and : unless a digit follows (1,000 stays whole)
        (r"([:,])$", r" \1 "),
        (r"\.{2,}", r" \g<0> "),  # ellipsis
        (r"[;@#$%&?!]", r" \g<0> "),
        (r"([^'])' ", r"\1 ' "),  # closing quote, before brackets are spaced
        (r"[*\[\](){}<>]", r" \g<0> "),
        (r"--", r" -- "),
    )
)
# Punkt ends a sentence at a word-final period followed by a space or by one of )";}]*:@'({[!? -- except after
# a 1-letter initial or a number when a lower-case word follows ("1. a dog") -- and the treebank rules then split
# that sentence-final period off. At the very end of the text (before closing brackets/quotes) it always splits.
_PERIOD = re.compile(r"(?<=[^.\s])\.(?=[)\";}\]*:@'({\[!?]|\s|$)")
_TEXT_END = re.compile(r"[\])}>\"'»”’]*\s*$")
_INITIAL_OR_NUMBER = re.compile(r"(?:[^\W\d]|-?[.,]?\d[\d,.-]*)")


def _splits_period(text: str, start: int, end: int) -> bool:
    if _TEXT_END.match(text, end):
        return True
    word = re.sub(r"^\W+", "", text[:start].rsplit(None, 1)[-1])  # the word before the period
    return not (_INITIAL_OR_NUMBER.fullmatch(word) and re.match(r"\s+[^\W\d_]", text[end:]))


def _split_sentence_periods(text: str) -> str:
    return _PERIOD.sub(lambda m: " . " if _splits_period(text, m.start(), m.end()) else ".", text)


_CLITIC_RULES = tuple(
    (re.compile(p), r)
    for p, r in (
        (r"([^' ])('s|'m|'d|') ", r"\1 \2 "),
        (r"([^' ])('ll|'re|'ve|n't) ", r"\1 \2 "),
        (r"\b(can)(not)\b", r" \1 \2 "),
        (r"\b(d)('ye)\b", r" \1 \2 "),
        (r"\b(gim)(me)\b", r" \1 \2 "),
        (r"\b(gon)(na)\b", r" \1 \2 "),
        (r"\b(got)(ta)\b", r" \1 \2 "),
        (r"\b(lem)(me)\b", r" \1 \2 "),
        (r"\b(more)('n)\b", r" \1 \2 "),
        (r"\b(wan)(na)(?=\s)", r" \1 \2 "),
        (r" ('t)(is)\b", r" \1 \2 "),
        (r" ('t)(was)\b", r" \1 \2 "),
    )
)


def tokenize(text: str) -> list[str]:
    """Split lower-cased caption text into words and punctuation the way nltk.word_tokenize does.

    "the dog's bowl, two cups." -> ["the", "dog", "'s", "bowl", ",", "two", "cups", "."]; hyphenated words
    ("hot-dog") and slashes stay whole; 3.5 and 1,000 stay whole.
    """
    text = _split_sentence_periods(text)
    for pattern, replacement in _SPACING_RULES:
        text = pattern.sub(replacement, text)
    text = " " + re.sub(r"\s+", " ", text) + " "
    for pattern, replacement in _CLITIC_RULES:
        text = pattern.sub(replacement, text)
    return text.split()


# ---------------------------------------------------------------- synonyms


@dataclass(frozen=True)
class Synonyms:
    """A parsed synonym list: each word maps to the canonical class (first entry) of its line.

    to_class: word -> canonical class (a word on several lines keeps the last one, like the reference's dict).
    double_words: bigram (after singularization) -> the single word it is replaced by.
    classes: canonical classes in file order. source: the file it came from.
    """

    classes: tuple[str, ...]
    to_class: Mapping[str, str] = field(repr=False)
    double_words: Mapping[str, str] = field(repr=False)
    strip: bool = False
    protect_vocabulary: bool = False
    source: str = ""


def _split_line(line: str, strip: bool) -> list[str]:
    if strip:
        return [entry.strip() for entry in line.split(",")]
    return line.strip().split(", ")  # the reference: "scooter,  motor bike" keeps " motor bike", never matched


def _parse_synonym_lines(text: str, source: str, strip: bool) -> list[list[str]]:
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        entries = _split_line(line, strip)
        where = f"{source}, line {lineno}"
        if not entries[0]:
            raise DataError(f"{where}: empty canonical class (expected 'canonical, synonym, ...')")
        for entry in entries:
            if not entry or "," in entry:
                raise DataError(f"{where}: malformed entry {entry!r} (entries are separated by ', ')")
        rows.append(entries)
    if not rows:
        raise DataError(f"{source}: no synonym lines")
    return rows


def _double_word_map(entries: Iterable[str]) -> dict[str, str]:
    """The reference's bigram table, preceded by every multi-word entry of the file (mapped to itself).

    The file entries come first so that the reference's special cases still win ("bow tie" -> "tie"). Only
    bigrams can match, as in the reference: a 3-word entry ("stove top oven") or a double-space entry is inert.
    """
    table = {entry: entry for entry in entries if " " in entry}
    table.update({word: word for word in REFERENCE_DOUBLE_WORDS})
    for animal in ANIMAL_WORDS:
        table[f"baby {animal}"] = animal
        table[f"adult {animal}"] = animal
    for vehicle in VEHICLE_WORDS:
        table[f"passenger {vehicle}"] = vehicle
    table.update(SPECIAL_DOUBLE_WORDS)
    return table


def _unreachable_entries(to_class: Mapping[str, str], protect: bool) -> list[str]:
    """Entries no caption word can produce: padded with spaces, or (unprotected) changed by singularize."""
    if protect:
        return [w for w in to_class if w != w.strip()]
    return [w for w in to_class if w != w.strip() or (" " not in w and singularize(w) != w)]


def load_synonyms(path: str | Path, *, strip: bool = False, protect_vocabulary: bool = False) -> Synonyms:
    """Parse a CHAIR synonym file: one line per class, `canonical, synonym, synonym, ...`.

    Faithful by default: each line is stripped and split on ", " exactly, so an entry written after a double
    space (COCO: "scooter,  motor bike", "cake,  cheesecake") keeps its leading space and never matches.
    strip=True splits on "," and strips every entry (the fixed behaviour, as RLAIF-V's synonyms_refine).
    protect_vocabulary=True (fixed behaviour) leaves caption tokens that are vocabulary entries unsingularized,
    so "bus", "airbus" and "minibus" match instead of becoming "bu", "airbu", "minibu".
    Works for any world's file in this format; its multi-word entries join the double-word table.
    Raises DataError with file and line for an empty canonical class or an empty / comma-holding entry.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return parse_synonyms(path.read_text(encoding="utf-8"), str(path), strip=strip,
                          protect_vocabulary=protect_vocabulary)


def parse_synonyms(text: str, source: str = "<synonyms>", *, strip: bool = False,
                   protect_vocabulary: bool = False) -> Synonyms:
    """`load_synonyms` on the text of a synonym file; `source` names it in errors and logs."""
    rows = _parse_synonym_lines(text, source, strip)
    to_class = {entry: row[0] for row in rows for entry in row}
    classes = tuple(dict.fromkeys(row[0] for row in rows))
    unreachable = _unreachable_entries(to_class, protect_vocabulary)
    if unreachable:
        logger.info(
            "%s: %d synonym entries can never match a caption word: %s",
            source,
            len(unreachable),
            ", ".join(repr(w) for w in unreachable),
        )
    return Synonyms(
        classes=classes,
        to_class=MappingProxyType(to_class),
        double_words=MappingProxyType(_double_word_map(to_class)),
        strip=strip,
        protect_vocabulary=protect_vocabulary,
        source=source,
    )


# ---------------------------------------------------------------- object extraction


def _singular_tokens(caption: str, synonyms: Synonyms) -> list[str]:
    tokens = tokenize(caption.lower())
    if synonyms.protect_vocabulary:
        return [t if t in synonyms.to_class else singularize(t) for t in tokens]
    return [singularize(t) for t in tokens]


def merge_double_words(words: Sequence[str], table: Mapping[str, str], keep_singles: bool = True) -> list[str]:
    """Left-to-right greedy bigram merge, as the reference's while loop; keep_singles=False keeps only the merged
    words (RLAIF-V's `get_double_words_only`)."""
    merged, i = [], 0
    while i < len(words):
        bigram = " ".join(words[i : i + 2])
        if bigram in table:
            merged.append(table[bigram])
            i += 2
        else:
            if keep_singles:
                merged.append(words[i])
            i += 1
    return merged


def caption_words(caption: str, synonyms: Synonyms) -> list[str]:
    """The caption's processed words: lower-case, tokenize, singularize, merge double words, and drop "seat"
    when "toilet" is present (a toilet seat is not a chair), exactly in the reference's order."""
    words = merge_double_words(_singular_tokens(caption, synonyms), synonyms.double_words)
    if "toilet" in words and "seat" in words:
        words = [w for w in words if w != "seat"]
    return words


def extract_objects(caption: str, synonyms: Synonyms) -> list[tuple[str, str]]:
    """(word, canonical class) for every object mention, in order and with multiplicity.

    "Two puppies and a dog near traffic lights." -> [("puppy", "dog"), ("dog", "dog"),
    ("traffic light", "traffic light")].
    """
    return [(w, synonyms.to_class[w]) for w in caption_words(caption, synonyms) if w in synonyms.to_class]


def caption_gt_objects(reference_captions: Iterable[str], synonyms: Synonyms) -> set[str]:
    """Classes mentioned in an image's reference captions; the CHAIR GT set is these ∪ the instance classes."""
    return {cls for caption in reference_captions for _, cls in extract_objects(caption, synonyms)}


# ---------------------------------------------------------------- metrics


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def chair_per_caption(captions: Sequence[str], gt_objects: Sequence[set[str]], synonyms: Synonyms) -> list[dict]:
    """Per caption: mentioned and hallucinated (word, class) pairs, gt and covered classes, chair_s / chair_i.

    gt_objects[i] is the set of canonical classes of image i (instances ∪ `caption_gt_objects`). covered = the
    distinct GT classes the caption mentions; chair_i is 0.0 for a caption without mentions, as the reference.
    """
    if len(captions) != len(gt_objects):
        raise ValueError(f"CHAIR: {len(captions)} captions but {len(gt_objects)} ground-truth sets")
    rows = []
    for caption, gt in zip(captions, gt_objects):
        mentioned = extract_objects(caption, synonyms)
        hallucinated = [(w, cls) for w, cls in mentioned if cls not in gt]
        rows.append(
            {
                "mentioned": mentioned,
                "hallucinated": hallucinated,
                "gt": sorted(gt),
                "covered": sorted({cls for _, cls in mentioned if cls in gt}),
                "chair_s": int(bool(hallucinated)),
                "chair_i": _ratio(len(hallucinated), len(mentioned)),
                "n_words": len(caption.split()),
            }
        )
    return rows


def chair_metrics(captions: Sequence[str], gt_objects: Sequence[set[str]], synonyms: Synonyms) -> dict:
    """Corpus-level CHAIR_s, CHAIR_i and recall (see the module docstring), plus counts.

    avg_len is the mean number of whitespace-separated words per caption. n_captions_with_mentions lets a
    caller compute Object HalBench's response-level rate (hallucinated captions / captions with a mention).
    Empty input gives zeros.
    """
    rows = chair_per_caption(captions, gt_objects, synonyms)
    n_mentions = sum(len(r["mentioned"]) for r in rows)
    n_hallucinated = sum(len(r["hallucinated"]) for r in rows)
    n_hallucinated_captions = sum(r["chair_s"] for r in rows)
    return {
        "chair_s": _ratio(n_hallucinated_captions, len(rows)),
        "chair_i": _ratio(n_hallucinated, n_mentions),
        "recall": _ratio(sum(len(r["covered"]) for r in rows), sum(len(r["gt"]) for r in rows)),
        "n_captions": len(rows),
        "n_captions_with_mentions": sum(1 for r in rows if r["mentioned"]),
        "n_hallucinated_captions": n_hallucinated_captions,
        "n_mentions": n_mentions,
        "n_hallucinated_mentions": n_hallucinated,
        "avg_len": _ratio(sum(r["n_words"] for r in rows), len(rows)),
        "version": CHAIR_VERSION,
    }
