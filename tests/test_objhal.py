"""Unit tests for mmstudy.benchmarks.objhal (Object HalBench): the released question / answer formats, the
reference extraction prompt, the judge-reply parsers, phrase -> COCO object mapping, and hand-counted metrics for
both extractors, end to end on the fixtures in tests/fixtures/objhal/ (a few records in the released formats).

Run: pytest tests/test_objhal.py
"""

import base64
import json
from pathlib import Path

import pytest

from mmstudy.benchmarks import chair, objhal
from mmstudy.io import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "objhal"
# Ground truth of the fixture images (CHAIR classes), as mmstudy.evaluation.runners.coco_ground_truth would build them.
GT = {101: {"person", "dog", "frisbee"}, 202: {"car", "bus", "person"}, 303: {"pizza"}}
TEXTS = ("A man throws a frisbee to his dog while a cat watches.", "Two cars drive past the people.", "It looks nice.")


@pytest.fixture(scope="module")
def coco():
    return chair.load_synonyms(chair.COCO_SYNONYMS_PATH)


@pytest.fixture(scope="module")
def refined(coco):
    return objhal.rlaifv_synonyms(coco)


@pytest.fixture(scope="module")
def answers():
    return objhal.load_answers(FIXTURES / "answers.jsonl")


def _write(tmp_path, name, records):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ---------------------------------------------------------------- files


def test_load_questions_embedded_and_named_images():
    questions = objhal.load_questions(FIXTURES / "questions.jsonl")
    assert [q.image_id for q in questions] == [101, 202, 303]  # "202" (a string of digits) read as int, as int()
    assert questions[0].question == "Describe this image in detail."
    assert questions[0].image is not None and questions[2].image is None
    assert objhal.question_image(questions[0]).size == (4, 3)
    assert objhal.question_image(questions[1]).mode == "RGB"
    assert objhal.question_image(questions[2], image_dir=FIXTURES).size == (5, 2)


@pytest.mark.parametrize(
    "record, message",
    [
        ({"image_id": 1, "image": "eA=="}, r"line 2: missing field\(s\) 'question'"),
        ({"image_id": "abc", "question": "q", "image": "eA=="}, "line 2, field 'image_id'"),
        ({"image_id": 1, "question": "q"}, "line 2: needs field 'image'"),
        ({"image_id": 1, "question": "", "image": "eA=="}, "line 2, field 'question'"),
        ({"image_id": 1, "question": "q", "image_path": 7}, "line 2, field 'image_path'"),
    ],
)
def test_malformed_question_lines_name_file_line_field(tmp_path, record, message):
    path = _write(tmp_path, "q.jsonl", [{"image_id": 1, "question": "q", "image": "eA=="}, record])
    with pytest.raises(DataError, match=message) as err:
        objhal.load_questions(path)
    assert "q.jsonl" in str(err.value)


def test_bad_embedded_image_names_line_and_field(tmp_path):
    path = _write(tmp_path, "q.jsonl", [{"image_id": 1, "question": "q", "image": base64.b64encode(b"no").decode()}])
    (question,) = objhal.load_questions(path)
    with pytest.raises(DataError, match=r"q.jsonl, line 1, field 'image': not a readable image"):
        objhal.question_image(question)
    missing = objhal.ObjHalQuestion(1, "q", image_path="nope.png", where="f.jsonl, line 3")
    with pytest.raises(DataError, match=r"f.jsonl, line 3, field 'image_path'"):
        objhal.question_image(missing, image_dir=tmp_path)


def test_load_answers_in_the_reference_format(answers):
    assert [a.image_id for a in answers] == [101, 202, 303]
    assert answers[0].text == TEXTS[0]  # "Assistant:" removed and stripped, as the reference does
    assert answers[1].question.startswith("What do you see")  # "prompt" is the question


def test_answers_without_image_id_take_the_question_on_the_same_line():
    questions = objhal.load_questions(FIXTURES / "questions.jsonl")
    answers = objhal.load_answers(FIXTURES / "answers_no_image_id.jsonl", questions)  # "question"/"answer" fields
    assert [(a.image_id, a.text) for a in answers] == list(zip((101, 202, 303), TEXTS))
    with pytest.raises(DataError, match=r"answers_no_image_id.jsonl, line 1: no field 'image_id'"):
        objhal.load_answers(FIXTURES / "answers_no_image_id.jsonl")


@pytest.mark.parametrize(
    "record, message",
    [
        ({"image_id": 1, "prompt": "q"}, r"line 2: needs field 'text' or 'answer'"),
        ({"image_id": 1, "text": "t"}, r"line 2: needs field 'prompt' or 'question'"),
        ({"image_id": 1.5, "prompt": "q", "text": "t"}, r"line 2, field 'image_id'"),
        ({"image_id": 1, "prompt": "q", "text": ["t"]}, r"line 2, field 'text'"),
    ],
)
def test_malformed_answer_lines_name_file_line_field(tmp_path, record, message):
    path = _write(tmp_path, "a.jsonl", [{"image_id": 1, "prompt": "q", "text": "t"}, record])
    with pytest.raises(DataError, match=message):
        objhal.load_answers(path)


# ---------------------------------------------------------------- prompt and parsers


def test_extraction_prompt_is_the_reference_text():
    prompt = objhal.build_extraction_prompt("Describe it.", "A dog.")
    assert prompt.startswith("You are an expert in image objects extraction according to a question answer pair.")
    assert "[Start of Question]\n\n<image> Describe it.\n\n[End of Question]\n\n" in prompt
    assert "[Start of Examiner's Answer]\n\nA dog.\n\n[End of Examiner's Answer]\n\n\nAssume that" in prompt
    assert 'JSON list format: ["object_1", ..., "object_n"].\n5. You should return an empty JSON list () if' in prompt
    assert prompt.endswith("if no visible objects can be found.\n")


def test_short_answers_need_no_extraction():
    assert not objhal.needs_extraction("It looks nice.")  # 3 words
    assert objhal.needs_extraction("It looks very nice.")


@pytest.mark.parametrize(
    "text, robust, reference",
    [
        ('["dog", "cat"]', ["dog", "cat"], ["dog", "cat"]),
        ('```json\n["dog", " traffic light "]\n```', ["dog", "traffic light"], ["dog", "traffic light"]),
        ('Here are the objects:\n["dog", "cat"]', ["dog", "cat"], ["dog", "cat"]),
        ('Objects: ["dog", "cat"].', ["dog", "cat"], None),
        ("[]", [], None),  # the reference parser needs '["' outside a fenced block
        ("()", [], None),  # the prompt asks for "an empty JSON list ()"
        ("[1, 2]", None, None),
        ('{"objects": ["dog"]}', ["dog"], None),  # robust: the outermost [...] span
        ("I cannot see any image.", None, None),
        (None, None, None),
    ],
)
def test_parsers(text, robust, reference):
    assert objhal.parse_object_list(text) == robust
    assert objhal.parse_object_list_reference(text) == reference


# ---------------------------------------------------------------- phrases -> objects


@pytest.mark.parametrize(
    "phrase, run, head",
    [
        ("traffic lights", ["traffic light"], ["traffic light"]),
        ("wooden dining table", ["dining table"], ["dining table"]),  # double words win over noun runs
        ("baby elephant", ["elephant"], ["elephant"]),
        ("man in a red shirt", ["man", "shirt"], ["man", "shirt"]),
        ("two dogs", ["dog"], ["dog"]),
        ("baseball player", ["baseball player"], ["player"]),
        ("stove top oven", ["stove top oven"], ["oven"]),
    ],
)
def test_phrase_words(refined, phrase, run, head):
    assert objhal.phrase_words(phrase, refined) == run
    assert objhal.phrase_words(phrase, refined, "head") == head


def test_judge_objects_deduplicate_words_and_drop_seat(refined):
    words, mentioned = objhal.judge_objects(["dog", "dogs", "puppy", "frisbee", "grass"], refined)
    assert mentioned == [("dog", "dog"), ("puppy", "dog"), ("frisbee", "frisbee")]
    assert words[:3] == ["dog", "puppy", "frisbee"]
    _, mentioned = objhal.judge_objects(["toilet", "seat", "people"], refined)
    assert mentioned == [("toilet", "toilet"), ("people", "person")]
    # person via double words: "baseball player" matches nothing in "run" mode (as RLAIF-V), person in "head"
    assert objhal.judge_objects(["baseball player"], refined)[1] == []
    assert objhal.judge_objects(["baseball player"], refined, "head")[1] == [("player", "person")]


def test_rlaifv_synonyms(coco, refined):
    assert refined.to_class["brother"] == "person" and refined.to_class["pedestrian"] == "person"
    assert refined.to_class["coffee table"] == "dining table" and refined.to_class["remote control"] == "remote"
    assert refined.to_class["motor bike"] == "motorcycle" and refined.to_class["cheesecake"] == "cake"
    caption = "A train waits by the train tracks near a bus."
    assert chair.extract_objects(caption, refined) == [("train", "train"), ("bus", "bus")]
    assert [c for _, c in chair.extract_objects(caption, coco)] == ["train", "train"]  # no "train track", "bu"


# ---------------------------------------------------------------- metrics, hand-counted


def _check_golden(metrics):
    # mentions: man/person, frisbee, dog, cat (hallucinated) | car, person | none (3 words, no object)
    assert metrics["n_responses_with_mentions"] == 2 and metrics["n_hallucinated_responses"] == 1
    assert metrics["response_hallucination"] == pytest.approx(1 / 2)
    assert metrics["chair_s"] == pytest.approx(1 / 3)
    assert (metrics["n_mentions"], metrics["n_hallucinated_mentions"]) == (6, 1)
    assert metrics["object_hallucination"] == pytest.approx(1 / 6)
    assert (metrics["n_covered_gt"], metrics["n_gt"]) == (5, 7)
    assert metrics["recall_coco"] == pytest.approx(5 / 7)
    assert metrics["avg_len"] == pytest.approx((12 + 6 + 3) / 3)
    assert metrics["object_f1"] == pytest.approx(2 * (5 / 7) * (5 / 6) / (5 / 7 + 5 / 6))
    assert metrics["response_f1"] == pytest.approx(4 / 7)  # F1(2/3 with a mention, 1/2 correct)
    for name in objhal.CI_METRICS:
        assert metrics[f"{name}_ci95_low"] <= metrics[name] <= metrics[f"{name}_ci95_high"]


def test_rule_extractor_end_to_end(coco, answers):
    metrics, records = objhal.score_objhal(answers, GT, coco, n_boot=200)
    _check_golden(metrics)
    assert metrics["n_scored"] == 3 and metrics["n_extraction_failed"] == 0
    assert metrics["extractor"] == "rule" and metrics["version"] == objhal.OBJHAL_VERSION
    assert records[0]["hallucinated"] == [("cat", "cat")]
    assert records[1]["covered"] == ["car", "person"] and records[1]["gt"] == ["bus", "car", "person"]


def test_judge_extractor_end_to_end(refined, answers):
    failing = objhal.ObjHalAnswer(101, "Describe it.", "The judge will not answer this one properly.")
    replies = ['```json\n["man", "frisbee", "dog", "cat"]\n```', 'Here are the objects:\n["cars", "people", "street"]',
               "never read: the answer is short", "Sorry, I cannot help with that."]
    metrics, records = objhal.score_objhal([*answers, failing], GT, refined, extractor="judge", judge_outputs=replies,
                                           n_boot=200)
    _check_golden(metrics)  # the failed extraction is left out of every metric, not scored as "no objects"
    assert (metrics["n_responses"], metrics["n_scored"], metrics["n_extraction_failed"]) == (4, 3, 1)
    assert metrics["n_short_answers"] == 1
    assert (metrics["extractor"], metrics["parser"], metrics["phrase_match"]) == ("judge", "robust", "run")
    assert records[3]["extraction_failed"] and records[3]["judge_reply"] == replies[3]
    assert records[2]["short"] and records[2]["judge_reply"] is None
    assert records[1]["words"] == ["car", "people", "street"]


def test_judge_counts_each_distinct_word_once_where_rule_counts_every_mention(coco):
    answer = [{"image_id": 1, "text": "A dog chases another dog across the grass."}]
    rule, _ = objhal.score_objhal(answer, {1: set()}, coco, n_boot=10)
    judge, _ = objhal.score_objhal(answer, {1: set()}, coco, extractor="judge", judge_outputs=['["dog", "dog"]'],
                                   n_boot=10)
    assert (rule["n_hallucinated_mentions"], judge["n_hallucinated_mentions"]) == (2, 1)


def test_ask_sends_only_long_answers(refined, answers):
    sent = []

    def ask(prompts):
        sent.extend(prompts)
        return ['["man", "frisbee", "dog", "cat"]', None]  # the second call fails (judge failure)

    metrics, _ = objhal.score_objhal(answers, GT, refined, extractor="judge", ask=ask, n_boot=10)
    assert len(sent) == 2 and "\n\n" + TEXTS[0] + "\n\n" in sent[0] and "Assistant:" not in sent[0]
    assert metrics["n_extraction_failed"] == 1 and metrics["n_scored"] == 2


def test_argument_errors(coco, answers):
    with pytest.raises(ValueError, match="extractor"):
        objhal.score_objhal(answers, GT, coco, extractor="spacy")
    with pytest.raises(ValueError, match="one reply per answer"):
        objhal.score_objhal(answers, GT, coco, extractor="judge")
    with pytest.raises(DataError, match=r"no ground truth for image_id\(s\) \[303\].*answers.jsonl, line 3"):
        objhal.score_objhal(answers, {101: set(), 202: set()}, coco)


def test_empty_input_gives_zeros(coco):
    metrics, records = objhal.score_objhal([], {}, coco, n_boot=10)
    assert records == [] and metrics["response_hallucination"] == 0.0 and metrics["n_responses"] == 0
