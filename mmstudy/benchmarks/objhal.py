"""Object HalBench: CHAIR on long MLLM answers (RLHF-V, Yu et al. CVPR 2024; RLAIF-V, Yu et al. 2024).

300 COCO val2014 images, each with a detailed-description request; a model's answer is reduced to the COCO
objects it mentions, and a mention is hallucinated when its class is not in the image's ground truth (COCO
instance categories plus the objects of the reference captions: CHAIR's ground truth, built by the caller with
`mmstudy.evaluation.runners.coco_ground_truth`). This module reads the released files, extracts objects, and scores; it
never calls a judge itself (the judge extractor works on texts the caller got from `build_extraction_prompt`).

Protocol followed (RLAIF-V `eval/eval_gpt_obj_halbench.py`, `eval/summarize_gpt_obj_halbench_review.py`; the
RLHF-V copies are the same apart from the JSON parser):
    * files: questions `obj_halbench_300_with_image.jsonl` (image_id, question, image = base64 bytes, or
      image_path; org_idx ignored), answers as `muffin/eval/muffin_vqa.py` writes them (question_id, image_id,
      prompt, text, model_id); an answer without image_id takes the one of the question on the same line;
      the question is "prompt" else "question", the text "text" else "answer", with "Assistant:" removed and
      stripped (`clean_answer_text`);
    * extraction, `extractor="rule"` (default): CHAIR's caption words (`chair.extract_objects`: tokenize,
      singularize, double words, "toilet seat" rule), every mention counted with multiplicity;
    * extraction, `extractor="judge"` (RLAIF-V `--use_gpt`): answers of <= 3 words get no objects and no judge
      call (`needs_extraction`); the others go to the judge with `EXTRACTION_PROMPT` (reference model
      gpt-3.5-turbo-0613, the prompt sent as the *system* message, temperature 0.2, top_p 1, max_tokens 512: see
      `EXTRACTOR_MODEL`, `EXTRACTOR_SETTINGS`); the reply is parsed as a JSON list of object phrases; each phrase
      gives its double words if it has any, else its noun runs (`phrase_words`); the words are de-duplicated
      per answer (so a mention counts once per distinct word), "seat" is dropped when "toilet" is there, and
      words in the synonym vocabulary are mapped to their class (`judge_objects`);
    * metrics (`objhal_metrics`), over answers whose extraction succeeded:
          response_hallucination = hallucinated answers / answers with >= 1 COCO mention   (CHAIRs_refine)
          object_hallucination   = hallucinated mentions / all mentions                    (CHAIRi)
          recall_coco            = sum |distinct GT classes mentioned| / sum |GT classes|   (obj_rec)
          avg_len                = mean of len(text.strip().split(" "))                     (avg_word_len)
      plus chair_s (hallucinated answers / all answers), response_correct = 1 - response_hallucination,
      object_correct = 1 - object_hallucination, object_f1 = F1(recall_coco, object_correct) and response_f1 =
      F1(share of answers with a mention, response_correct), counts, and 95 % bootstrap intervals over answers
      (`<metric>_ci95_low/_high`; the ratios resample per-answer (numerator, denominator) rows).

The summary prints Response Hall, Object Hall, Response/Object Correct, Object Recall and Average Length (in %
except the length); it computes the two F1s but does not print them, and its response F1 uses
`coco_sentence_num / 3`, which is the percentage of answers with a mention only for exactly 300 answers.
`rlaifv_synonyms` turns the COCO synonym list into RLAIF-V's `synonyms_refine.txt` (entries stripped; "brother",
"pedestrian" -> person; "coffee table" -> dining table; "remote control" -> remote; "train track" merged).

Judge failures: the reference retries a failed or unparseable reply up to 100 times and then crashes on an
assertion; here a reply that is None or unparseable is counted (`n_extraction_failed`), marked in its record,
and the answer is left out of every metric, never scored as "no objects". Parsers: `parser="robust"` (default)
takes a fenced block, the whole reply, its last line or its outermost [...] span, and reads "()" (the empty
list the prompt asks for) as []; `parser="reference"` is RLAIF-V's rule (a ```json fenced block, else the last
line when the reply holds '["'), under which a bare "[]" fails. Every list that the older RLHF-V parser
(json.loads of the whole reply first) reads, the robust parser reads too.

Deviations (no spaCy / nltk models offline):
    * phrase lemmas come from `chair.singularize` (pattern.en rules; vocabulary words kept when the synonyms
      have protect_vocabulary, as `rlaifv_synonyms` sets) instead of spaCy `en_core_web_trf` lemmas, and the
      rule extractor singularizes where RLAIF-V uses nltk's WordNet lemmatizer (same class for all but rare
      words: WordNet keeps "bus", pattern gives "bu" unless protect_vocabulary);
    * noun runs are found without a POS tagger: a phrase is split at closed-class words (determiners,
      prepositions, conjunctions, pronouns, numbers), at a closed list of attribute adjectives (colours, sizes,
      ages, materials) and at punctuation, and each remaining run is matched whole (`phrase_match="run"`, the
      reference's behaviour for nouns and compounds: "kitchen sink" matches nothing, as in RLAIF-V); an
      adjective outside the list ("shiny car") keeps the run from matching where spaCy would find "car".
      `phrase_match="head"` (named alternative) matches each run's last word instead ("baseball player" ->
      person, which the reference drops);
    * only the `.jsonl` answer format is read (the reference also reads CHAIR's `imgToEval` JSON and a
      `raw_question` list); a failed extraction is excluded instead of crashing the run.

The extraction prompt is reproduced verbatim from RLAIF-V / RLHF-V (github.com/RLHF-V/RLAIF-V,
`eval/eval_gpt_obj_halbench.py`), as faithfulness requires.

    >>> syn = rlaifv_synonyms(chair.load_synonyms(chair.COCO_SYNONYMS_PATH))
    >>> metrics, records = score_objhal(load_answers("answers.jsonl"), gt_sets, syn)
    >>> prompts = [build_extraction_prompt(a.question, a.text) for a in answers if needs_extraction(a.text)]
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from mmstudy.benchmarks import chair
from mmstudy.benchmarks.stats import bootstrap_ci
from mmstudy.io import DataError, load_image, read_jsonl

logger = logging.getLogger(__name__)

OBJHAL_VERSION = 1  # bump whenever parsing, object extraction or scoring changes
EXTRACTORS = ("rule", "judge")
PHRASE_MATCHES = ("run", "head")
SHORT_ANSWER_WORDS = 3  # answers of at most this many words get no judge call and no objects (reference)
EXTRACTOR_MODEL = "gpt-3.5-turbo-0613"
EXTRACTOR_SETTINGS = MappingProxyType({"message_role": "system", "temperature": 0.2, "top_p": 1, "max_tokens": 512})
QUESTION_FIELDS = ("image_id", "question")
CI_METRICS = ("response_hallucination", "object_hallucination", "recall_coco", "avg_len", "chair_s")

# RLAIF-V's synonyms_refine.txt = the COCO CHAIR list with entries stripped, plus these; its double-word table is
# every multi-word entry plus "home plate" and "train track" ("train tracks" then never counts as a train).
RLAIFV_EXTRA_SYNONYMS = (("person", ("brother", "pedestrian")), ("dining table", ("coffee table",)),
                         ("remote", ("remote control",)))
RLAIFV_EXTRA_DOUBLE_WORDS = ("home plate", "train track")

# The reference extraction prompt (RLAIF-V / RLHF-V `eval/eval_gpt_obj_halbench.py`), verbatim: "{question}" and
# "{answer}" are replaced in that order with str.replace, as the reference does.
EXTRACTION_PROMPT = (
    "You are an expert in image objects extraction according to a question answer pair. We asked an examiner to "
    "answer a question about a picture.\n"
    "\n"
    "[Start of Question]\n"
    "\n"
    "<image> {question}\n"
    "\n"
    "[End of Question]\n"
    "\n"
    "[Start of Examiner's Answer]\n"
    "\n"
    "{answer}\n"
    "\n"
    "[End of Examiner's Answer]\n"
    "\n"
    "\n"
    "Assume that the answer is correct, please identify all visible objects that are directly shown in the image. "
    "Please following the instructions in below:\n"
    "\n"
    "1. You should only mention objects that are explicitly mentioned in the examiner's answer.\n"
    "2. You should only extract the object names without the attributes of the objects.\n"
    "3. You should not include the properties of the object, like the color, material, etc. as part of the object "
    "name in your result.\n"
    '4. Make your answer precise. Present the results in a JSON list format: ["object_1", ..., "object_n"].\n'
    "5. You should return an empty JSON list () if no visible objects can be found.\n"
)

# Words a POS tagger would not tag as nouns, so they end a noun run: closed-class words and number words, and a
# closed list of attribute adjectives. Words that are also COCO vocabulary ("orange", "baby", "adult", "male")
# are deliberately absent.
# fmt: off
_CLOSED_CLASS = frozenset("""
    a an the this that these those some any each every all both either neither no another other others several
    many much few various multiple such its their his her my your our their its it they them he she we you i
    of in on at with without near by for from to under over behind beside besides between inside outside into
    onto above below beneath next around through along across against among atop upon within toward towards
    and or but nor plus as is are be being been was were has have having 's '
    one two three four five six seven eight nine ten eleven twelve dozen dozens couple pair
""".split())
_ATTRIBUTE_WORDS = frozenset("""
    white black red blue green yellow brown gray grey pink purple silver golden dark bright colorful colourful
    small large big little tiny huge tall short long giant wide narrow
    young old elderly new
    wooden metal metallic plastic ceramic
""".split())
# fmt: on
_NON_NOUN = _CLOSED_CLASS | _ATTRIBUTE_WORDS
_WORD = re.compile(r"[a-z][a-z'-]*")
_FENCED_JSON = re.compile(r"```json\n(.*?)\n```", re.DOTALL)
_FENCED_ANY = re.compile(r"```[A-Za-z]*[ \t]*\n?(.*?)```", re.DOTALL)


# ---------------------------------------------------------------- files


@dataclass(frozen=True)
class ObjHalQuestion:
    """One line of the question file. image: the embedded base64 bytes (None when the line names a file);
    image_path: a file name or path (None when embedded); where: "file, line N", for error messages."""

    image_id: int
    question: str
    image: str | None = dataclasses.field(default=None, repr=False)
    image_path: str | None = None
    where: str = ""


@dataclass(frozen=True)
class ObjHalAnswer:
    """One model answer as the reference scorer reads it (text already cleaned by `clean_answer_text`)."""

    image_id: int
    question: str
    text: str
    where: str = ""


def _nonblank_lines(path: Path) -> list[int]:
    """1-based line numbers of the non-blank lines (read_jsonl skips blank lines)."""
    with path.open(encoding="utf-8") as f:
        return [lineno for lineno, line in enumerate(f, start=1) if line.strip()]


def _image_id(value) -> int | None:
    """The reference's int(image_id): an integer, or a string of digits; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _question(record: dict, where: str) -> ObjHalQuestion:
    image_id = _image_id(record["image_id"])
    if image_id is None:
        raise DataError(f"{where}, field 'image_id': must be an integer, got {record['image_id']!r}")
    if not isinstance(record["question"], str) or not record["question"].strip():
        raise DataError(f"{where}, field 'question': must be a non-empty string, got {record['question']!r}")
    image, image_path = record.get("image"), record.get("image_path")
    if image is None and image_path is None:
        raise DataError(f"{where}: needs field 'image' (base64 image bytes) or 'image_path'")
    for name, value in (("image", image), ("image_path", image_path)):
        if value is not None and (not isinstance(value, str) or not value):
            raise DataError(f"{where}, field {name!r}: must be a non-empty string")
    return ObjHalQuestion(image_id, record["question"], image, image_path, where)


def load_questions(path: str | Path) -> list[ObjHalQuestion]:
    """Read `obj_halbench_300_with_image.jsonl`: per line image_id, question, and the image either embedded
    (field "image", base64) or named (field "image_path"); other fields (org_idx, ...) are ignored.

    Raises DataError naming the file, line and field for a missing or ill-typed field."""
    path = Path(path)
    records = read_jsonl(path, required=QUESTION_FIELDS)
    questions = [_question(r, f"{path}, line {n}") for r, n in zip(records, _nonblank_lines(path))]
    logger.info("Loaded %d Object HalBench questions from %s", len(questions), path)
    return questions


def question_image(question: ObjHalQuestion, image_dir: str | Path | None = None) -> Image.Image:
    """The question's image as RGB: decoded from "image" when embedded (the reference's precedence), else read
    from "image_path" (relative paths under `image_dir`). DataError names the file, line and field."""
    if question.image is not None:
        try:
            data = base64.b64decode(question.image)
        except (binascii.Error, ValueError) as e:
            raise DataError(f"{question.where}, field 'image': not valid base64: {e}") from e
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                return im.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise DataError(f"{question.where}, field 'image': not a readable image: {e}") from e
    path = Path(question.image_path)
    if image_dir is not None and not path.is_absolute():
        path = Path(image_dir) / path
    return load_image(path, where=f"{question.where}, field 'image_path'")


def clean_answer_text(text: str) -> str:
    """The reference's answer cleaning: every "Assistant:" removed, then surrounding whitespace stripped."""
    return text.replace("Assistant:", "").strip()


def _answer(record: dict, index: int, where: str, questions: Sequence[ObjHalQuestion] | None) -> ObjHalAnswer:
    if "image_id" in record:
        image_id = _image_id(record["image_id"])
        if image_id is None:
            raise DataError(f"{where}, field 'image_id': must be an integer, got {record['image_id']!r}")
    elif questions is None:
        raise DataError(f"{where}: no field 'image_id'; pass the question file's records to take it by line")
    elif index >= len(questions):
        raise DataError(f"{where}: no field 'image_id' and no question on record {index + 1} of the question file")
    else:
        image_id = questions[index].image_id
    fields = {}
    for role, names in (("question", ("prompt", "question")), ("text", ("text", "answer"))):
        name = next((n for n in names if n in record), None)
        if name is None:
            raise DataError(f"{where}: needs field {names[0]!r} or {names[1]!r}")
        if not isinstance(record[name], str):
            raise DataError(f"{where}, field {name!r}: must be a string, got {type(record[name]).__name__}")
        fields[role] = record[name]
    return ObjHalAnswer(image_id, fields["question"], clean_answer_text(fields["text"]), where)


def load_answers(path: str | Path, questions: Sequence[ObjHalQuestion] | None = None) -> list[ObjHalAnswer]:
    """Read a model-answer file as RLAIF-V's scorer does (JSON lines from `muffin_vqa.py`: question_id,
    image_id, prompt, text, model_id). Per line: image_id, else the image_id of the question on the same line
    of `questions`; question = "prompt" else "question"; text = "text" else "answer", cleaned.

    Raises DataError naming the file, line and field."""
    path = Path(path)
    records = read_jsonl(path)
    answers = [_answer(r, i, f"{path}, line {n}", questions)
               for i, (r, n) in enumerate(zip(records, _nonblank_lines(path)))]
    logger.info("Loaded %d Object HalBench answers from %s", len(answers), path)
    return answers


# ---------------------------------------------------------------- synonyms


def rlaifv_synonyms(synonyms: chair.Synonyms) -> chair.Synonyms:
    """The synonym list as RLAIF-V's `synonyms_refine.txt` and double-word table (see the module docstring),
    built from a loaded COCO list: entries stripped (so "motor bike" and "cheesecake" match), the extra
    entries of `RLAIFV_EXTRA_SYNONYMS` (for classes the list has), every multi-word entry and
    `RLAIFV_EXTRA_DOUBLE_WORDS` merged as double words, and protect_vocabulary on (WordNet's lemmatizer leaves
    "bus" and "skis" alone). Pass the result to `mmstudy.evaluation.runners.coco_ground_truth` too, so that ground
    truth
    and answers are read alike."""
    to_class = {word.strip(): cls for word, cls in synonyms.to_class.items()}
    for cls, extra in RLAIFV_EXTRA_SYNONYMS:
        if cls in synonyms.classes:
            to_class.update({word: cls for word in extra})
    table = dict(synonyms.double_words)
    for word in [*to_class, *RLAIFV_EXTRA_DOUBLE_WORDS]:
        if " " in word:
            table.setdefault(word, word)
    return dataclasses.replace(
        synonyms,
        to_class=MappingProxyType(to_class),
        double_words=MappingProxyType(table),
        strip=True,
        protect_vocabulary=True,
        source=f"{synonyms.source} (RLAIF-V synonyms_refine changes)",
    )


# ---------------------------------------------------------------- judge extraction: prompt and parsing


def needs_extraction(text: str) -> bool:
    """False for answers of <= 3 whitespace-separated words: the reference gives them no objects, no judge call."""
    return len(text.strip().split()) > SHORT_ANSWER_WORDS


def build_extraction_prompt(question: str, answer: str) -> str:
    """The reference extraction prompt for one (question, cleaned answer); the reference sends it as the system
    message, with no user message."""
    return EXTRACTION_PROMPT.replace("{question}", question).replace("{answer}", answer)


def _phrases(value) -> list[str] | None:
    """A JSON value as a list of non-empty object phrases, or None unless it is a list of strings."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return [v.strip() for v in value if v.strip()]


def _loads(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def parse_object_list_reference(text: str | None) -> list[str] | None:
    """RLAIF-V's `parse_object_list`: a ```json fenced block, else (if the reply holds '["') its last line.

    '```json\\n["dog"]\\n```' -> ["dog"]; 'Objects:\\n["dog", "cat"]' -> ["dog", "cat"]; "[]" -> None (no '["');
    'Objects: ["dog"].' -> None. None (judge failure) -> None.
    """
    if text is None:
        return None
    match = _FENCED_JSON.search(text)
    if match:
        value = _loads(match.group(1))
        if value is not None:
            return _phrases(value)
    if '["' in text:
        return _phrases(_loads(text.strip().split("\n")[-1]))
    return None


def parse_object_list(text: str | None) -> list[str] | None:
    """The robust parser: the first of (fenced blocks, whole reply, last non-blank line, outermost [...] span)
    that is a JSON list of strings; "()" reads as []. Phrases are stripped, empty ones dropped.

    'Objects: ["dog", "cat"].' -> ["dog", "cat"]; "[]" and "()" -> []; "[1, 2]", "no objects", None -> None.
    """
    if text is None:
        return None
    stripped = text.strip()
    candidates = [m.group(1) for m in _FENCED_ANY.finditer(text)] + [stripped]
    lines = [line.strip() for line in stripped.splitlines() if line.strip()]
    if lines:
        candidates.append(lines[-1])
    start, end = stripped.find("["), stripped.rfind("]")
    if 0 <= start < end:
        candidates.append(stripped[start : end + 1])
    for candidate in candidates:
        candidate = candidate.strip()
        if candidate == "()":
            return []
        phrases = _phrases(_loads(candidate))
        if phrases is not None:
            return phrases
    return None


PARSERS: dict[str, Callable[[str | None], list[str] | None]] = {
    "robust": parse_object_list,
    "reference": parse_object_list_reference,
}


# ---------------------------------------------------------------- judge extraction: phrases to COCO objects


def _lemma(token: str, synonyms: chair.Synonyms) -> str:
    if synonyms.protect_vocabulary and token in synonyms.to_class:
        return token
    return chair.singularize(token)


def _noun_runs(tokens: Sequence[str], lemmas: Sequence[str]) -> list[list[str]]:
    runs, current = [], []
    for token, lemma in zip(tokens, lemmas):
        if _WORD.fullmatch(token) and token not in _NON_NOUN:
            current.append(lemma)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def phrase_words(phrase: str, synonyms: chair.Synonyms, phrase_match: str = "run") -> list[str]:
    """The words one extracted phrase contributes (before the vocabulary filter), as the reference's
    `get_pred_objs_match`: its double words if it has any ("wooden dining table" -> ["dining table"], "baby
    elephant" -> ["elephant"]), else its noun runs ("man in a red shirt" -> ["man", "shirt"], "two dogs" ->
    ["dog"], "baseball player" -> ["baseball player"]; with phrase_match="head": ["player"])."""
    if phrase_match not in PHRASE_MATCHES:
        raise ValueError(f"unknown phrase_match {phrase_match!r}; choose one of {list(PHRASE_MATCHES)}")
    tokens = chair.tokenize(phrase.lower())
    lemmas = [_lemma(t, synonyms) for t in tokens]
    doubles = chair.merge_double_words(lemmas, synonyms.double_words, keep_singles=False)
    if doubles:
        return doubles
    runs = _noun_runs(tokens, lemmas)
    return [run[-1] for run in runs] if phrase_match == "head" else [" ".join(run) for run in runs]


def judge_objects(phrases: Sequence[str], synonyms: chair.Synonyms,
                  phrase_match: str = "run") -> tuple[list[str], list[tuple[str, str]]]:
    """(words, mentions) of one answer from its extracted phrases: the words of every phrase, de-duplicated in
    order; "seat" dropped when "toilet" is there; mentions = (word, class) for the words in the vocabulary.

    ["dog", "dogs", "puppy", "frisbee", "grass"] -> words ["dog", "puppy", "frisbee", "grass"], mentions
    [("dog", "dog"), ("puppy", "dog"), ("frisbee", "frisbee")]: two mentions of the class dog.
    """
    words: list[str] = []
    for phrase in phrases:
        words.extend(phrase_words(phrase, synonyms, phrase_match))
    words = list(dict.fromkeys(words))
    if "toilet" in words and "seat" in words:
        words = [w for w in words if w != "seat"]
    return words, [(w, synonyms.to_class[w]) for w in words if w in synonyms.to_class]


def request_extractions(answers: Sequence[ObjHalAnswer], ask: Callable[[list[str]], list[str | None]]) -> list:
    """Ask the judge once for every answer that needs extraction; returns replies aligned with `answers`
    (None where the judge failed, and for short answers, which `score_objhal` never reads)."""
    wanted = [i for i, a in enumerate(answers) if needs_extraction(a.text)]
    replies = list(ask([build_extraction_prompt(answers[i].question, answers[i].text) for i in wanted]))
    if len(replies) != len(wanted):
        raise ValueError(f"Object HalBench judge returned {len(replies)} replies for {len(wanted)} prompts")
    out: list[str | None] = [None] * len(answers)
    for i, reply in zip(wanted, replies):
        out[i] = reply
    return out


# ---------------------------------------------------------------- scoring


def word_count(text: str) -> int:
    """The reference's answer length: len(text.strip().split(" ")) (runs of spaces count empty words, newlines
    do not split, "" counts 1)."""
    return len(text.strip().split(" "))


def _as_answer(answer) -> ObjHalAnswer:
    if isinstance(answer, ObjHalAnswer):
        return answer
    return ObjHalAnswer(int(answer["image_id"]), answer.get("question", ""), answer["text"], answer.get("where", ""))


def _item_record(answer: ObjHalAnswer, gt: set[str], extracted: dict) -> dict:
    mentioned = extracted["mentioned"]
    hallucinated = [(w, cls) for w, cls in mentioned if cls not in gt]
    return {
        "image_id": answer.image_id,
        "text": answer.text,
        "n_words": word_count(answer.text),
        **extracted,
        "hallucinated": hallucinated,
        "gt": sorted(gt),
        "covered": sorted({cls for _, cls in mentioned if cls in gt}),
        "has_mention": bool(mentioned),
        "hallucinated_response": int(bool(hallucinated)),
    }


def _extract(answer: ObjHalAnswer, extractor: str, reply: str | None, synonyms: chair.Synonyms, parser: str,
             phrase_match: str) -> dict:
    """Per-answer extraction fields: phrases (judge list or None), words, mentioned, short, extraction_failed,
    and for the judge extractor its raw judge_reply (None for short answers, which are never sent)."""
    if extractor == "rule":
        mentioned = chair.extract_objects(answer.text, synonyms)
        return {"phrases": None, "words": [w for w, _ in mentioned], "mentioned": mentioned, "short": False,
                "extraction_failed": False}
    if not needs_extraction(answer.text):
        return {"phrases": [], "words": [], "mentioned": [], "short": True, "extraction_failed": False,
                "judge_reply": None}
    phrases = PARSERS[parser](reply)
    if phrases is None:
        return {"phrases": None, "words": [], "mentioned": [], "short": False, "extraction_failed": True,
                "judge_reply": reply}
    words, mentioned = judge_objects(phrases, synonyms, phrase_match)
    return {"phrases": phrases, "words": words, "mentioned": mentioned, "short": False,
            "extraction_failed": False, "judge_reply": reply}


def objhal_per_item(answers: Sequence, gt_sets: Mapping[int, set[str]], synonyms: chair.Synonyms, *,
                    extractor: str = "rule", judge_outputs: Sequence[str | None] | None = None,
                    parser: str = "robust", phrase_match: str = "run") -> list[dict]:
    """One record per answer: image_id, text, n_words, phrases, words, mentioned and hallucinated (word, class)
    pairs, gt, covered classes, has_mention, hallucinated_response, short, extraction_failed (and the raw
    judge_reply with the judge extractor). judge_outputs[i] is the judge's reply for answer i (read only when the
    answer needs extraction; None = judge failure)."""
    if extractor not in EXTRACTORS:
        raise ValueError(f"unknown Object HalBench extractor {extractor!r}; choose one of {list(EXTRACTORS)}")
    if parser not in PARSERS:
        raise ValueError(f"unknown Object HalBench parser {parser!r}; choose one of {sorted(PARSERS)}")
    if phrase_match not in PHRASE_MATCHES:
        raise ValueError(f"unknown phrase_match {phrase_match!r}; choose one of {list(PHRASE_MATCHES)}")
    answers = [_as_answer(a) for a in answers]
    if extractor == "judge" and (judge_outputs is None or len(judge_outputs) != len(answers)):
        got = "none" if judge_outputs is None else len(judge_outputs)
        raise ValueError(f"Object HalBench judge extractor needs one reply per answer: {len(answers)} answers, {got}")
    missing = sorted({a.image_id for a in answers if a.image_id not in gt_sets})
    if missing:
        raise DataError(f"Object HalBench: no ground truth for image_id(s) {missing[:10]} "
                        f"(first answer: {next(a.where for a in answers if a.image_id in missing) or '?'})")
    replies = judge_outputs if extractor == "judge" else [None] * len(answers)
    return [_item_record(a, set(gt_sets[a.image_id]), _extract(a, extractor, r, synonyms, parser, phrase_match))
            for a, r in zip(answers, replies)]


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def _f1(a: float, b: float) -> float:
    return _ratio(2 * a * b, a + b)


def objhal_metrics(records: Sequence[dict]) -> dict:
    """Point estimates and counts from `objhal_per_item` records (formulas in the module docstring); answers
    whose extraction failed are counted in n_extraction_failed and left out of everything else. Undefined
    ratios (no answers, no mentions, empty ground truth) are 0.0."""
    scored = [r for r in records if not r["extraction_failed"]]
    n = len(scored)
    n_with = sum(r["has_mention"] for r in scored)
    n_hallucinated = sum(r["hallucinated_response"] for r in scored)
    n_mentions = sum(len(r["mentioned"]) for r in scored)
    n_hallucinated_mentions = sum(len(r["hallucinated"]) for r in scored)
    n_covered, n_gt = sum(len(r["covered"]) for r in scored), sum(len(r["gt"]) for r in scored)
    response = _ratio(n_hallucinated, n_with)
    obj = _ratio(n_hallucinated_mentions, n_mentions)
    recall = _ratio(n_covered, n_gt)
    return {
        "response_hallucination": response,
        "object_hallucination": obj,
        "recall_coco": recall,
        "avg_len": _ratio(sum(r["n_words"] for r in scored), n),
        "chair_s": _ratio(n_hallucinated, n),
        "response_correct": 1.0 - response if n_with else 0.0,
        "object_correct": 1.0 - obj if n_mentions else 0.0,
        "object_f1": _f1(recall, 1.0 - obj) if n_mentions else 0.0,
        "response_f1": _f1(_ratio(n_with, n), 1.0 - response) if n_with else 0.0,
        "n_responses": len(records),
        "n_scored": n,
        "n_extraction_failed": len(records) - n,
        "n_short_answers": sum(r["short"] for r in scored),
        "n_responses_with_mentions": n_with,
        "n_hallucinated_responses": n_hallucinated,
        "n_mentions": n_mentions,
        "n_hallucinated_mentions": n_hallucinated_mentions,
        "n_covered_gt": n_covered,
        "n_gt": n_gt,
        "version": OBJHAL_VERSION,
    }


def _ratio_of_sums(rows: np.ndarray) -> float:
    den = rows[:, 1].sum()
    return float(rows[:, 0].sum() / den) if den else 0.0


def objhal_intervals(records: Sequence[dict], *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Percentile-bootstrap 95 % intervals over answers (failed extractions left out) as flat keys
    `<metric>_ci95_low/_high`; ratios of sums resample per-answer (numerator, denominator) rows."""
    scored = [r for r in records if not r["extraction_failed"]]
    rows = {
        "response_hallucination": [[r["hallucinated_response"], int(r["has_mention"])] for r in scored],
        "object_hallucination": [[len(r["hallucinated"]), len(r["mentioned"])] for r in scored],
        "recall_coco": [[len(r["covered"]), len(r["gt"])] for r in scored],
    }
    cis = {name: bootstrap_ci(np.asarray(v, dtype=float).reshape(-1, 2), _ratio_of_sums, n_boot=n_boot, seed=seed)
           for name, v in rows.items()}
    cis["avg_len"] = bootstrap_ci([float(r["n_words"]) for r in scored], np.mean, n_boot=n_boot, seed=seed)
    cis["chair_s"] = bootstrap_ci([float(r["hallucinated_response"]) for r in scored], np.mean, n_boot=n_boot,
                                  seed=seed)
    out = {}
    for name in CI_METRICS:
        out[f"{name}_ci95_low"], out[f"{name}_ci95_high"] = cis[name]["low"], cis[name]["high"]
    return out


def score_objhal(answers: Sequence, gt_sets: Mapping[int, set[str]], synonyms: chair.Synonyms, *,
                 extractor: str = "rule", judge_outputs: Sequence[str | None] | None = None,
                 ask: Callable[[list[str]], list[str | None]] | None = None, parser: str = "robust",
                 phrase_match: str = "run", n_boot: int = 1000, seed: int = 0) -> tuple[dict, list[dict]]:
    """Object HalBench of `answers` (ObjHalAnswer, or dicts with image_id, text and optionally question):
    (flat metrics, per-answer records). gt_sets maps image_id -> set of canonical classes.

    extractor "rule" (default) needs no judge; "judge" takes the judge's replies either as `judge_outputs`
    (aligned with answers) or by calling `ask(prompts) -> replies` once (`request_extractions`). Metrics hold
    `objhal_metrics`, `objhal_intervals`, and "extractor" (plus "parser" and "phrase_match" for the judge).
    """
    if extractor == "judge" and ask is not None:
        if judge_outputs is not None:
            raise ValueError("Object HalBench: pass judge_outputs or ask, not both")
        judge_outputs = request_extractions([_as_answer(a) for a in answers], ask)
    records = objhal_per_item(answers, gt_sets, synonyms, extractor=extractor, judge_outputs=judge_outputs,
                              parser=parser, phrase_match=phrase_match)
    metrics = objhal_metrics(records)
    if metrics["n_extraction_failed"]:
        logger.warning("Object HalBench: %d of %d judge extractions failed or were unparseable; those answers are "
                       "left out of every metric", metrics["n_extraction_failed"], len(records))
    metrics.update(objhal_intervals(records, n_boot=n_boot, seed=seed))
    metrics["extractor"] = extractor
    if extractor == "judge":
        metrics.update(parser=parser, phrase_match=phrase_match)
    logger.info("Object HalBench (%s extractor): response %.3f, object %.3f, recall %.3f over %d answers",
                extractor, metrics["response_hallucination"], metrics["object_hallucination"],
                metrics["recall_coco"], metrics["n_scored"])
    return metrics, records
