"""The world's oracle annotator: checks a free-text answer against a scene's exact ground truth.

An answer is read as a set of facts in the world's closed vocabulary: objects (through the world's synonym list),
number words, sizes, positions, contexts and a leading yes/no. Checked against the scene:

    hallucinated  an object that is not in the image (named outside a negated sentence); a context that is not
                  the scene's; a yes/no that contradicts the standard answer; in a sentence about exactly one kind
                  of object, a position, size or count that no object of that kind has; "nothing" at a position
                  that holds an object
    coverage      share of the standard answer's facts the answer states

Each false claim comes with its kind (`Check.kinds`: existence, object, attribute, count or other), the kinds the
data review counts.

From these the oracle writes verdicts in each benchmark's own output format (an MMHal rating line, LLaVA-Bench's
two scores, a JSON list of objects), so they pass through the same parsers as a model judge's text. The rules
are deliberately simple and documented; they are exact on the world's own phrasing and approximate on others.

    >>> check_answer("There is a cup on the left.", scene, gt_answer="There is a cup on the left.")
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache

from mmstudy.benchmarks import chair as chair_lib
from mmstudy.world.cooccurrence import cooccurrence_shares
from mmstudy.world.scene import CONTEXTS, POSITIONS, Scene
from mmstudy.world.text import NUMBERS, article, synonyms_text

logger = logging.getLogger(__name__)

SIZES = ("small", "large")
_NUMBER_OF = {w: n for n, w in NUMBERS.items()}
_POSITION_RE = re.compile(r"\b(" + "|".join(sorted(POSITIONS, key=len, reverse=True)) + r")\b")
_WORD_RE = re.compile(r"[a-z]+")
_CONTEXT_NAMES = frozenset(c.name for c in CONTEXTS)
_NEGATION = re.compile(r"\b(no|not|nothing|neither|nor)\b")


@lru_cache(maxsize=1)
def world_synonyms() -> chair_lib.Synonyms:
    """The world's synonym list (as written to synonyms.txt), with vocabulary words protected from singularize."""
    return chair_lib.parse_synonyms(synonyms_text(), "world synonyms", protect_vocabulary=True)


def _polarity(text: str) -> str | None:
    first = _WORD_RE.findall(text.lower()[:12])
    return first[0] if first and first[0] in ("yes", "no") else None


def facts(text: str) -> set[tuple[str, str]]:
    """The answer's facts as (kind, value) pairs: obj, num, size, pos, ctx, pol."""
    low = text.lower()
    words = _WORD_RE.findall(low)
    out = {("obj", cls) for _, cls in chair_lib.extract_objects(text, world_synonyms())}
    out |= {("num", w) for w in words if w in _NUMBER_OF}
    out |= {("size", w) for w in words if w in SIZES}
    out |= {("ctx", w) for w in words if w in _CONTEXT_NAMES}
    out |= {("pos", m) for m in _POSITION_RE.findall(low)}
    if (pol := _polarity(text)) is not None:
        out.add(("pol", pol))
    return out


@dataclass
class Check:
    """What the oracle found in one answer."""

    hallucinations: list[str] = field(default_factory=list)   # human-readable, one per false claim
    coverage: float = 1.0                                       # share of the standard answer's facts stated
    n_sentences: int = 0
    kinds: list[str] = field(default_factory=list)            # per false claim: as mmstudy.data.review.KINDS

    @property
    def hallucinated(self) -> bool:
        return bool(self.hallucinations)


def _sentence_claims(sentence: str, scene: Scene) -> list[tuple[str, str]]:
    """False position / size / count claims of a sentence that names exactly one kind of object, and "nothing"
    claimed at a position that holds an object: (kind, claim) pairs."""
    classes = {cls for _, cls in chair_lib.extract_objects(sentence, world_synonyms())}
    positions = _POSITION_RE.findall(sentence.lower())
    if not classes and "nothing" in _WORD_RE.findall(sentence.lower()) and len(positions) == 1:
        held = [o.name for o in scene.objects if o.position == positions[0]]
        return [("object", f"there is {article(held[0])} {held[0]} {positions[0]}, not nothing")] if held else []
    if len(classes) != 1:
        return []
    (cls,) = classes
    objs = [o for o in scene.objects if o.name == cls]
    if not objs:
        return []  # reported as an absent object already
    words = _WORD_RE.findall(sentence.lower())
    wrong = []
    if len(positions) == 1 and positions[0] not in {o.position for o in objs}:
        wrong.append(("attribute", f"no {cls} {positions[0]}"))
    sizes = [w for w in words if w in SIZES]
    if len(sizes) == 1 and sizes[0] not in {o.size for o in objs}:
        wrong.append(("attribute", f"no {sizes[0]} {cls}"))
    numbers = [n for w in words if (n := _NUMBER_OF.get(w, 0)) > 1]   # "one" is also a pronoun: not a count
    if len(numbers) == 1 and numbers[0] != len(objs):
        wrong.append(("count", f"{len(objs)} {cls}, not {numbers[0]}"))
    return wrong


def check_answer(answer: str, scene: Scene, gt_answer: str | None = None) -> Check:
    """Hallucinations of `answer` about `scene` and its coverage of `gt_answer` (1.0 when there is none)."""
    present = set(scene.classes())
    said = facts(answer)
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", answer.strip()) if s]
    claimed = {cls for s in sentences if not _NEGATION.search(s.lower())   # "there is no X" claims no X
               for _, cls in chair_lib.extract_objects(s, world_synonyms())}
    wrong = [("object", f"no {cls} in the image") for cls in sorted(claimed - present)]
    wrong += [("other", f"the scene is a {scene.context}, not a {ctx}") for kind, ctx in sorted(said)
              if kind == "ctx" and ctx != scene.context]
    for sentence in sentences:
        wrong += _sentence_claims(sentence, scene)
    coverage = 1.0
    if gt_answer is not None:
        expected = facts(gt_answer)
        gt_pol = next((v for k, v in expected if k == "pol"), None)
        ans_pol = next((v for k, v in said if k == "pol"), None)
        if gt_pol and ans_pol and gt_pol != ans_pol:
            wrong.append(("existence", f"answers {ans_pol!r} where the answer is {gt_pol!r}"))
        coverage = len(expected & said) / len(expected) if expected else 1.0
    return Check(hallucinations=[w for _, w in wrong], coverage=coverage, n_sentences=len(sentences),
                 kinds=[k for k, _ in wrong])


# ---------------------------------------------------------------- verdicts in each benchmark's format

_MMHAL_LABELS = {6: "very informative with good analysis or reasoning, no hallucination",
                 5: "very informative, no hallucination", 4: "somewhat informative, no hallucination",
                 3: "not informative, no hallucination", 2: "very informative, with hallucination",
                 1: "somewhat informative, with hallucination", 0: "not informative, with hallucination"}
VERY_INFORMATIVE = 0.75
SOMEWHAT_INFORMATIVE = 0.25


def mmhal_rating(check: Check) -> int:
    """The MMHal rubric from a check: informativeness = coverage of the standard answer's facts (very >= 0.75,
    somewhat >= 0.25); 6 needs full coverage and more than one sentence (the rubric's "good analysis")."""
    level = 2 if check.coverage >= VERY_INFORMATIVE else 1 if check.coverage >= SOMEWHAT_INFORMATIVE else 0
    if check.hallucinated:
        return level
    if level == 2 and check.coverage == 1.0 and check.n_sentences > 1:
        return 6
    return 3 + level


def mmhal_verdict(rating: int, check: Check) -> str:
    found = "; ".join(check.hallucinations) or "no false claim"
    return (f"The response covers {check.coverage:.0%} of the facts in the standard answer; {found}.\n"
            f"Rating: {rating}, {_MMHAL_LABELS[rating]}")


def review_score(check: Check) -> int:
    """A 1-10 LLaVA-Bench score: 1 + 9 x coverage, with coverage counted at 40 % when anything is hallucinated."""
    quality = check.coverage * (0.4 if check.hallucinated else 1.0)
    return 1 + round(9 * quality)


def review_verdict(reference_score: int, answer_score: int, check: Check) -> str:
    found = "; ".join(check.hallucinations) or "no false claim"
    return (f"{reference_score} {answer_score}\nAssistant 2 covers {check.coverage:.0%} of the reference facts; "
            f"{found}.")


def objects_verdict(answer: str) -> str:
    """A JSON list of the objects the answer names, as the words it uses (Object HalBench's extractor output)."""
    words = list(dict.fromkeys(w for w, _ in chair_lib.extract_objects(answer, world_synonyms())))
    return json.dumps(words)


def pair_report(records: list[dict], scenes: dict[str, Scene], p_given: dict, threshold: float = 0.3) -> dict:
    """How the rejected responses of preference pairs on world images hallucinate, against the ground truth.

    records: pairs with "image" (a world file name) and "rejected" (and "chosen"); scenes: by image file name;
    p_given: the world's co-occurrence table P(b | a). Returns the share of rejected responses with >= 1 false
    claim (`oracle.check_answer`), CHAIR_i of their object mentions, the share of hallucinated objects that co-occur
    (P >= threshold) with an object that is present, that share for every absent class (chance), and the most
    frequent hallucinated objects. The same false-claim share of the chosen responses is a sanity check (0 on the
    world's own y+)."""
    rows, claims, chosen_claims = [], 0, 0
    for r in records:
        scene = scenes[r["image"]]
        present = set(scene.classes())
        mentioned = chair_lib.extract_objects(r["rejected"], world_synonyms())
        rows.append({"mentioned": mentioned, "hallucinated": [(w, c) for w, c in mentioned if c not in present],
                     "gt": sorted(present)})
        claims += oracle_claims(r["rejected"], scene)
        chosen_claims += oracle_claims(r.get("chosen", ""), scene)
    n, n_mentions = len(records), sum(len(r["mentioned"]) for r in rows)
    top: dict[str, int] = {}
    for r in rows:
        for _, cls in r["hallucinated"]:
            top[cls] = top.get(cls, 0) + 1
    return {"n": n, "hallucinated_share": claims / n if n else float("nan"),
            "chosen_hallucinated_share": chosen_claims / n if n else float("nan"),
            "chair_i": sum(len(r["hallucinated"]) for r in rows) / n_mentions if n_mentions else 0.0,
            **cooccurrence_shares(rows, p_given, threshold),
            "top_hallucinated": dict(sorted(top.items(), key=lambda kv: -kv[1])[:8])}


def oracle_claims(text: str, scene: Scene) -> int:
    """1 if `text` makes at least one false claim about `scene`, else 0."""
    return int(check_answer(text, scene).hallucinated) if text else 0
