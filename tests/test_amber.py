"""Unit tests for mmstudy.benchmarks.amber: loaders, noun extraction, the reference's matching rules, the
discriminative parser and metrics (positive class "No"), the reference arithmetic, bootstrap intervals and the
end-to-end scoring of hand-written fixtures in the released file formats (tests/fixtures/amber/).

Every expected number below was worked out by hand (see the comments), not by running the code.

Run: pytest tests/test_amber.py
"""

import json
import math
from pathlib import Path

import pytest

from mmstudy.benchmarks import amber
from mmstudy.io import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "amber"


@pytest.fixture(scope="module")
def data():
    return {
        "annotations": amber.load_amber_annotations(FIXTURES / "annotations.json"),
        "association": amber.load_association(FIXTURES / "relation.json"),
        "safe_words": amber.load_safe_words(FIXTURES / "safe_words.txt"),
        "responses": amber.load_amber_responses(FIXTURES / "responses.json"),
    }


@pytest.fixture(scope="module")
def vocab(data):
    return amber.association_vocabulary(data["association"])


def score(data, responses=None, **kwargs):
    kwargs.setdefault("ci", False)
    return amber.score_amber(data["responses"] if responses is None else responses, data["annotations"],
                             data["association"], data["safe_words"], **kwargs)


# ---------------------------------------------------------------- loaders (released formats)


def test_load_fixture_files(data, vocab):
    assert len(data["annotations"]) == 12
    assert data["annotations"][0] == {"id": 1, "type": "generative", "truth": ["dog", "grass", "person"],
                                      "hallu": ["cat", "bench", "sky"]}
    assert data["annotations"][10] == {"id": 11, "type": "relation", "truth": "no"}
    assert data["association"]["bin"] == ["can", "bucket"]
    # the file has no trailing newline, like the released one
    assert data["safe_words"] == ["orange", "light", "sign", "individual"]
    assert {"can", "bucket", "people", "floor", "glass"} <= vocab and "glasses" not in vocab
    queries = amber.load_amber_queries(FIXTURES / "query_all.json")
    assert queries[0] == {"id": 1, "image": "AMBER_1.jpg", "query": "Describe this image."}
    assert [q["id"] for q in queries] == list(range(1, 13))


def test_metrics_init_file_is_the_reference_init():
    init = amber.load_metrics_init(FIXTURES / "metrics.txt")
    assert init == amber.REFERENCE_COUNTER_INIT
    assert len(init) == 44 and init["chair_num"] == 0.001 and init["ha_qa_ans_no_score"] == 0


def _write(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "records, pattern",
    [
        ([{"id": 1, "type": "generative", "truth": ["dog"]}], r"bad\.json, record 0 \(id 1\): missing field.*'hallu'"),
        ([{"id": 1, "type": "generative", "truth": "dog", "hallu": []}], r"record 0 \(id 1\), field 'truth'"),
        ([{"id": 1, "type": "generative", "truth": ["dog"], "hallu": [""]}], r"record 0 \(id 1\), field 'hallu'"),
        ([{"id": 5, "type": "discriminative-hallucination", "truth": "Yes"}], r"record 0 \(id 5\), field 'truth'"),
        ([{"id": 5, "type": "existence", "truth": "no"}], r"record 0 \(id 5\), field 'type': unknown type"),
        ([{"id": "5", "type": "relation", "truth": "no"}], r"record 0 \(id '5'\), field 'id'"),
        ([{"id": 5, "type": "relation", "truth": "no"}, {"id": 5, "type": "relation", "truth": "yes"}],
         r"record 1 \(id 5\), field 'id': duplicate id 5"),
        ([{"type": "relation", "truth": "no"}], r"bad\.json, record 0: missing field.*'id'"),
        ({"id": 1}, r"bad\.json: expected a JSON list"),
    ],
)
def test_malformed_annotations(tmp_path, records, pattern):
    with pytest.raises(DataError, match=pattern):
        amber.load_amber_annotations(_write(tmp_path, "bad.json", records))


@pytest.mark.parametrize(
    "records, pattern",
    [
        ([{"id": 1, "response": "a dog"}, {"id": 2, "response": None}],
         r"bad\.json, record 1 \(id 2\), field 'response'"),
        ([{"id": 1, "answer": "a dog"}], r"bad\.json, record 0 \(id 1\): missing field.*'response'"),
        ([{"id": 1.0, "response": "a dog"}], r"record 0 \(id 1\.0\), field 'id'"),
        ([{"id": 1, "response": "a"}, {"id": 1, "response": "b"}], r"record 1 \(id 1\), field 'id': duplicate"),
    ],
)
def test_malformed_responses(tmp_path, records, pattern):
    with pytest.raises(DataError, match=pattern):
        amber.load_amber_responses(_write(tmp_path, "bad.json", records))


def test_response_id_without_annotation_names_file_record_field(tmp_path):
    responses = _write(tmp_path, "responses.json", [{"id": 1, "response": "a dog"}, {"id": 99, "response": "No"}])
    with pytest.raises(DataError, match=r"responses\.json, record 1 \(id 99\), field 'id': no annotation"):
        amber.score_amber_files(responses, FIXTURES)


def test_malformed_queries(tmp_path):
    path = _write(tmp_path, "query_bad.json", [{"id": 1, "image": "AMBER_1.jpg", "query": "Describe this image."},
                                               {"id": 2, "query": "Is there a dog?"}])
    with pytest.raises(DataError, match=r"query_bad\.json, record 1 \(id 2\): missing field.*'image'"):
        amber.load_amber_queries(path)


def test_malformed_relation_safe_words_and_metrics(tmp_path):
    with pytest.raises(DataError, match=r"relation\.json, key 'dog': must be a list"):
        amber.load_association(_write(tmp_path, "relation.json", {"sky": [], "dog": "puppy"}))
    with pytest.raises(DataError, match=r"relation\.json: expected a JSON object"):
        amber.load_association(_write(tmp_path, "relation.json", [["dog", []]]))
    # a trailing space would never match (the reference keeps the line verbatim); "\r\n" is read as "\n"
    with pytest.raises(DataError, match=r"safe_words\.txt, line 2: safe word 'light '"):
        amber.load_safe_words(_write(tmp_path, "safe_words.txt", "orange\nlight \nsign"))
    assert amber.load_safe_words(_write(tmp_path, "crlf.txt", "orange\r\nlight\r\n")) == ["orange", "light"]
    with pytest.raises(DataError, match=r"metrics\.txt, line 2, counter 'chair_score'"):
        amber.load_metrics_init(_write(tmp_path, "metrics.txt", "chair_num=0.001\nchair_score=zero"))
    with pytest.raises(DataError, match=r"metrics\.txt: missing counter\(s\) .*safe_cover_num"):
        amber.load_metrics_init(_write(tmp_path, "metrics.txt", "chair_num=0.001\nchair_score=0"))


def test_truth_object_missing_from_relation(tmp_path):
    annotations = _write(tmp_path, "annotations.json",
                         [{"id": 1, "type": "generative", "truth": ["dog", "unicorn"], "hallu": ["cat"]}])
    responses = _write(tmp_path, "responses.json", [{"id": 1, "response": "a dog"}])
    with pytest.raises(DataError, match=r"annotations\.json, record 0 \(id 1\), field 'truth': object 'unicorn'"):
        amber.score_amber_files(responses, FIXTURES, annotations_path=annotations)


# ---------------------------------------------------------------- noun extraction


def test_extraction_plurals_case_and_protected_vocabulary(vocab):
    # "dogs" -> dog; "glasses" -> glass (not in the vocabulary as such); "grass" and "bus" are vocabulary words
    # and stay whole (pattern's singularize would give "gras" and "bu"); "People" opens a sentence and, as with
    # WordNet, a capitalized token is not lemmatized and not in the vocabulary, so it is dropped; "people" is kept.
    text = "Two dogs, glasses and grass near a bus. People and people."
    assert amber.extract_nouns(text, vocab) == ["dog", "glass", "grass", "bus", "people"]


def test_extraction_modal_can_and_verb_slots():
    vocab = {"can", "watch", "man", "TV"}
    # first "can": after "We", before the verb "see" -> modal; second "can": after "a" -> noun
    assert amber.extract_nouns("We can see a can.", vocab) == ["can"]
    # "can" before "." and before "of" -> noun; "cannot" splits into "can" + "not" -> modal; relative "that can"
    # and generic "one can" are modal
    assert amber.extract_nouns("a trash can. The can of soda. It cannot be.", vocab) == ["can", "can"]
    assert amber.extract_nouns("A sign that can be seen; one can see one can of soda.", vocab) == ["can"]
    # "watch" after a modal / a subject pronoun is a verb; "a watch" is a noun; "TV" is a vocabulary word as is
    assert amber.extract_nouns("A man can watch TV. They watch a watch.", vocab) == ["man", "TV", "watch"]
    # noun_filter=None keeps every vocabulary token; a custom lemmatizer replaces the default one
    assert amber.extract_nouns("We can see.", vocab, noun_filter=None) == ["can"]
    assert amber.extract_nouns("A MAN", vocab, lemmatize=str.lower) == ["man"]


def test_extraction_multiword_entries():
    vocab = {"traffic light", "stop sign", "light", "sign"}
    # "traffic lights" -> lemmas "traffic light" (longest entry first, counted once); the lone "light" stays
    assert amber.extract_nouns("Two traffic lights, a stop sign and a light.", vocab) == [
        "traffic light", "stop sign", "light"]


# ---------------------------------------------------------------- generative matching


def test_match_duplicate_truth_objects_and_first_match_rule():
    association = {"dog": [], "grass": ["ground"], "ground": ["floor"], "cat": []}
    # a repeated truth object can never be covered twice: the first list entry equal to the noun wins
    out = amber.match_nouns(["dog", "dog"], ["dog", "dog"], ["cat"], association, [])
    assert out["truth_covered"] == [True, False] and out["hallucinated"] == []
    # "ground" is listed as an association of grass before the object "ground" itself: it covers grass
    out = amber.match_nouns(["ground"], ["grass", "ground"], ["cat"], association, [])
    assert out["truth_covered"] == [True, False]
    assert out["matches"][0] == {"noun": "ground", "status": "association", "matched": "ground",
                                 "truth_object": "grass", "hallu_objects": []}


def test_match_safe_words_cover_nothing():
    association = {"light": [], "car": ["light"], "sun": []}
    # "light" is a global safe word: never hallucinated, but it covers neither the truth object "light" nor the
    # hallu object "car" (whose association list holds it); it still counts as a noun
    out = amber.match_nouns(["light", "sun"], ["light"], ["car", "sun"], association, ["light"])
    assert [m["status"] for m in out["matches"]] == ["safe_word", "hallucinated"]
    assert out["truth_covered"] == [False] and out["hallu_covered"] == [False, True]


def test_match_near_synonyms_pluggable():
    association = {"man": ["person"], "cat": []}
    table = {("woman", "person"): 0.81, ("woman", "man"): 0.85, ("kitten", "cat"): 0.9}

    def sim(a, b):
        return table.get((a, b), 0.0)

    # default: no similarity step, so "woman" (not an exact truth / association word) is hallucinated
    assert amber.match_nouns(["woman"], ["man"], ["cat"], association, [])["hallucinated"] == ["woman"]
    # association words come first in the search list: "person" (0.81 > 0.8) is the first similar entry
    out = amber.match_nouns(["woman"], ["man"], ["cat"], association, [], similarity=sim)
    assert out["matches"][0]["status"] == "similar" and out["matches"][0]["matched"] == "person"
    assert out["truth_covered"] == [True] and out["hallucinated"] == []
    # strict ">": at threshold 0.81 "person" no longer counts, "man" (0.85) does; at 0.85 neither does
    out = amber.match_nouns(["woman"], ["man"], ["cat"], association, [], similarity=sim, similarity_threshold=0.81)
    assert out["matches"][0]["matched"] == "man"
    out = amber.match_nouns(["woman"], ["man"], ["cat"], association, [], similarity=sim, similarity_threshold=0.85)
    assert out["hallucinated"] == ["woman"]
    # a near-synonym of a hallu object marks that target (Cog) and, not being safe, is hallucinated
    out = amber.match_nouns(["kitten"], ["man"], ["cat"], association, [], similarity=sim)
    assert out["hallu_covered"] == [True] and out["matches"][0]["hallu_objects"] == ["cat"]
    assert out["hallucinated"] == ["kitten"]


def test_generative_fixture_items(data):
    _, records = score(data)
    by_id = {r["id"]: r for r in records}
    # id 1, truth [dog, grass, person], hallu [cat, bench, sky]:
    #   "A dog and two dogs play on the grass. People watch from a bench near a red car."
    #   nouns dog, dog (plural), grass, bench, car ("People" capitalized: dropped). dog, dog, grass are truth;
    #   bench is a hallu target (marked) and hallucinated; car is hallucinated. Cover 2/3, Cog 1/3.
    r = by_id[1]
    assert r["nouns"] == ["dog", "dog", "grass", "bench", "car"]
    assert r["hallucinated"] == ["bench", "car"]
    assert r["truth_covered"] == [True, True, False] and r["hallu_covered"] == [False, True, False]
    # id 2, truth [grass, ground, man], hallu [car, sun]:
    #   "a person stands on the ground under the light of the sun, and a sign hangs above."
    #   person: association of man -> covers man; ground: association of grass (listed first) -> covers grass,
    #   not ground; light, sign: safe words; sun: hallu target, hallucinated. Cover 2/3, Cog 1/2.
    r = by_id[2]
    assert r["nouns"] == ["person", "ground", "light", "sun", "sign"]
    assert [m["status"] for m in r["matches"]] == ["association", "association", "safe_word", "hallucinated",
                                                   "safe_word"]
    assert r["truth_covered"] == [True, False, True] and r["hallu_covered"] == [False, True]
    # id 3, truth [bin, light], hallu [bus, glass]: "We can see a can next to two glasses and a bus. The light is on."
    #   modal "can" dropped; "a can": association of bin -> covers bin; glass (from "glasses") and bus: hallu
    #   targets, hallucinated; light: safe word, so the truth object light stays uncovered. Cover 1/2, Cog 2/2.
    r = by_id[3]
    assert r["nouns"] == ["can", "glass", "bus", "light"]
    assert r["hallucinated"] == ["glass", "bus"]
    assert r["truth_covered"] == [True, False] and r["hallu_covered"] == [True, True]
    # id 4, truth [sky, cloud], hallu [sun]: "Blue sky with clouds, clouds and more clouds." -> all safe
    r = by_id[4]
    assert r["nouns"] == ["sky", "cloud", "cloud", "cloud"] and not r["has_hallucination"]


# ---------------------------------------------------------------- discriminative parsing


@pytest.mark.parametrize(
    "response, reference, first_word",
    [
        ("Yes", "yes", "yes"),
        ("No", "no", "no"),
        ("No, there is not.", None, "no"),
        ("no", None, "no"),
        ("Yes.", None, "yes"),
        (" No", None, "no"),
        ("  YES!", None, "yes"),
        ("Not sure", None, None),
        ("Maybe", None, None),
        ("", None, None),
    ],
)
def test_parsers(response, reference, first_word):
    assert amber.parse_reference(response) == reference
    assert amber.parse_first_word(response) == first_word


# ---------------------------------------------------------------- metrics, end to end


def test_end_to_end_reference_arithmetic():
    metrics, records = amber.score_amber_files(FIXTURES / "responses.json", FIXTURES, ci=False)
    assert len(records) == 12 and metrics["n_unanswered"] == 0
    # Generative: nouns 5 + 5 + 4 + 4 = 18, hallucinated 2 + 1 + 2 + 0 = 5;
    #   CHAIR = round(5 / (18 + 0.001) * 100, 1) = round(27.776, 1) = 27.8
    #   Cover = truth covered (2 + 2 + 1 + 2) / truth (3 + 3 + 2 + 2) = 7 / 10.001 -> 69.993 -> 70.0
    #   Cog = hallu marked (1 + 1 + 2 + 0) / hallu (3 + 2 + 2 + 1) = 4 / 8.001 -> 49.994 -> 50.0
    #   Hal = 100 - (1 response without hallucination) / 4.001 * 100 = 75.006 -> 75.0
    assert (metrics["chair"], metrics["cover"], metrics["cog"], metrics["hal"]) == (27.8, 70.0, 50.0, 75.0)
    assert (metrics["n_nouns"], metrics["n_hallucinated_nouns"], metrics["n_hallucinated_responses"]) == (18, 5, 3)
    assert (metrics["n_truth_covered"], metrics["n_truth_objects"]) == (7, 10)
    assert (metrics["n_hallu_covered"], metrics["n_hallu_objects"]) == (4, 8)
    # Discriminative (reference parser: exact "Yes"/"No"), 8 questions:
    #   5 no/"No" ok, 6 no/"No, there is not." unparsed, 7 yes/"Yes" ok, 8 no/"no" unparsed, 9 yes/"No" wrong,
    #   10 yes/"Yes" ok, 11 no/"No" ok, 12 no/"Maybe" unparsed -> correct 4, answered "No" 3 (5, 9, 11) of which
    #   truly no 2 (5, 11), truth "no" 5 (5, 6, 8, 11, 12)
    #   Accuracy = 4 / 8.001 -> 49.994 -> 50.0; Precision = 2 / 3.001 -> 66.644 -> 66.6;
    #   Recall = 2 / 5.001 -> 39.992 -> 40.0; F1 from the rounded values = 2 * .666 * .4 / (.666 + .4 + 1e-4)
    #   = .5328 / 1.0661 = 49.977 % -> 50.0
    assert (metrics["accuracy"], metrics["precision"], metrics["recall"], metrics["f1"]) == (50.0, 66.6, 40.0, 50.0)
    assert (metrics["n_correct"], metrics["n_pred_no"], metrics["n_true_no"], metrics["n_label_no"]) == (4, 3, 2, 5)
    assert metrics["n_invalid"] == 3
    # Existence (5, 6): acc 1 / 2.001 -> 50.0; P 1 / 1.001 -> 99.9 (not 100: the 0.001 init);
    #   R 1 / 2.001 -> 50.0; F1 = 2 * .999 * .5 / (.999 + .5 + 0.001) = .999 / 1.5 = 66.6 (existence guard 1e-3)
    assert [metrics[f"existence/{k}"] for k in ("accuracy", "precision", "recall", "f1")] == [50.0, 99.9, 50.0, 66.6]
    assert (metrics["existence/n"], metrics["existence/n_invalid"]) == (2, 1)
    # Attribute (7, 8, 9) pools state + number + action, each counter starting at 0.001:
    #   acc 1 / 3.003 -> 33.3; answered "No" only 9 (truth yes) -> P 0.0; truth "no" only 8 -> R 0.0; F1 0.0
    assert [metrics[f"attribute/{k}"] for k in ("accuracy", "precision", "recall", "f1")] == [33.3, 0.0, 0.0, 0.0]
    # State (7, correct): 1 / 1.001 -> 99.9; number (8, unparsed) 0.0; action (9, wrong) 0.0
    assert (metrics["state/accuracy"], metrics["number/accuracy"], metrics["action/accuracy"]) == (99.9, 0.0, 0.0)
    assert (metrics["number/n_invalid"], metrics["state/n"]) == (1, 1)
    # Relation (10 'discriminative-relation', 11 and 12 'relation'): acc 2 / 3.001 -> 66.6; P 1 / 1.001 -> 99.9;
    #   R 1 / 2.001 -> 50.0; F1 = .999 / (.999 + .5 + 1e-4) = 66.64 -> 66.6
    assert [metrics[f"relation/{k}"] for k in ("accuracy", "precision", "recall", "f1")] == [66.6, 99.9, 50.0, 66.6]
    # AMBER score = 0.5 * ((100 - 27.8) + 50.0) = 61.1
    assert metrics["amber_score"] == 61.1
    assert metrics["version"] == amber.AMBER_VERSION and metrics["parser"] == "reference"
    assert metrics["reference_arithmetic"] is True and metrics["near_synonyms"] is False


def test_score_files_with_explicit_paths():
    # no data_dir, so no metrics.txt: the built-in REFERENCE_COUNTER_INIT gives the same printout
    metrics, _ = amber.score_amber_files(
        FIXTURES / "responses.json", annotations_path=FIXTURES / "annotations.json",
        relation_path=FIXTURES / "relation.json", safe_words_path=FIXTURES / "safe_words.txt", ci=False)
    assert (metrics["chair"], metrics["f1"], metrics["amber_score"]) == (27.8, 50.0, 61.1)
    with pytest.raises(ValueError, match="give data_dir or the path of annotations.json"):
        amber.score_amber_files(FIXTURES / "responses.json")


def test_plain_arithmetic(data):
    metrics, _ = score(data, reference_arithmetic=False)
    # CHAIR 5/18, Cover 7/10, Cog 4/8, Hal 3/4; accuracy 4/8, P 2/3, R 2/5, F1 = 2 (2/3)(2/5) / (2/3 + 2/5) = 1/2
    assert metrics["chair"] == pytest.approx(500 / 18)
    assert (metrics["cover"], metrics["cog"], metrics["hal"]) == pytest.approx((70.0, 50.0, 75.0))
    assert (metrics["accuracy"], metrics["precision"], metrics["recall"], metrics["f1"]) == pytest.approx(
        (50.0, 200 / 3, 40.0, 50.0))
    # existence P 1/1, R 1/2 -> F1 2/3; state: the single item is right -> 100 (reference arithmetic: 99.9)
    assert metrics["existence/f1"] == pytest.approx(200 / 3) and metrics["state/accuracy"] == 100.0
    # 0.5 * ((100 - 250/9) + 50) = 61.11...
    assert metrics["amber_score"] == pytest.approx(0.5 * (100 - 500 / 18 + 50))


def test_first_word_parser(data):
    metrics, records = score(data, parser="first_word", reference_arithmetic=False)
    # "No, there is not." and "no" now read as "no" (both truth no), "Maybe" stays unparsed:
    #   correct 6/8 = 75; answered "No" 5 (5, 6, 8, 9, 11), truly no 4 -> P 80; truth no 5 -> R 80; F1 80
    assert (metrics["accuracy"], metrics["precision"], metrics["recall"], metrics["f1"]) == pytest.approx(
        (75.0, 80.0, 80.0, 80.0))
    assert metrics["n_invalid"] == 1 and metrics["parser"] == "first_word"
    assert [r["prediction"] for r in records if r["id"] in (6, 8, 12)] == ["no", "no", None]
    with pytest.raises(ValueError, match="unknown AMBER parser"):
        score(data, parser="lenient")


def test_discriminative_records(data):
    _, records = score(data)
    r = next(r for r in records if r["id"] == 6)
    assert r == {"id": 6, "type": "discriminative-hallucination", "task": "discriminative",
                 "dimension": "existence", "kind": None, "truth": "no", "response": "No, there is not.",
                 "prediction": None, "valid": False, "correct": False}
    assert next(r for r in records if r["id"] == 8)["kind"] == "number"


def test_empty_and_partial_input(data):
    metrics, records = score(data, responses=[], ci=True, n_boot=50)
    assert records == [] and metrics["n_generative"] == 0 and metrics["n_discriminative"] == 0
    assert metrics["n_unanswered"] == 12
    for key in ("chair", "cover", "hal", "cog", "accuracy", "f1", "existence/f1", "state/accuracy", "amber_score",
                "chair_ci95_low", "f1_ci95_high", "amber_score_ci95_low"):
        assert math.isnan(metrics[key]), key
    # generative responses only: the discriminative section and the AMBER score are not computed
    metrics, _ = score(data, responses=data["responses"][:4])
    assert metrics["chair"] == 27.8 and math.isnan(metrics["f1"]) and math.isnan(metrics["amber_score"])
    assert metrics["n_unanswered"] == 8


def test_amber_score_arithmetic():
    assert amber.amber_score(27.8, 50.0) == pytest.approx(61.1)  # 0.5 * (72.2 + 50.0)
    assert amber.amber_score(0.0, 100.0) == 100.0
    assert amber.amber_score(100.0, 0.0) == 0.0
    assert amber.amber_score(10.0, 80.0) == 85.0  # 0.5 * (90 + 80)


def test_counter_init_from_metrics_file(data):
    # with every counter starting at 0 the reference arithmetic only rounds: state accuracy 1/1 -> 100.0
    zero = dict.fromkeys(amber.COUNTER_NAMES, 0)
    metrics, _ = score(data, counter_init=zero)
    assert metrics["state/accuracy"] == 100.0 and metrics["existence/precision"] == 100.0


# ---------------------------------------------------------------- bootstrap intervals


def test_confidence_intervals_collapse_on_identical_items():
    gen = {"task": "generative", "n_hallucinated": 1, "n_nouns": 2, "n_truth_covered": 1, "n_truth": 2,
           "n_hallu_covered": 0, "n_hallu": 1, "has_hallucination": True}
    disc = {"task": "discriminative", "truth": "no", "prediction": "no", "correct": True}
    out = amber.amber_confidence_intervals([gen] * 3 + [disc] * 4, n_boot=50)
    # every resample holds the same per-item rows: CHAIR 1/2, Cover 1/2, Cog 0/1, Hal 1; all answers right
    expected = {"chair": 50.0, "cover": 50.0, "cog": 0.0, "hal": 100.0, "accuracy": 100.0, "precision": 100.0,
                "recall": 100.0, "f1": 100.0}
    for name, value in expected.items():
        assert out[f"{name}_ci95_low"] == pytest.approx(value) == out[f"{name}_ci95_high"], name
    # the AMBER score resamples the pooled items; with 3 + 4 items a resample can lack one task entirely, so only
    # bounds are checked: 0.5 * ((100 - 50) + 100) = 75 when both tasks are present
    assert out["amber_score_ci95_low"] <= 75.0 <= out["amber_score_ci95_high"]


def test_confidence_intervals_on_fixture(data):
    metrics, _ = score(data, ci=True, n_boot=200, reference_arithmetic=False)
    for name in amber.HEADLINE_METRICS:
        low, high = metrics[f"{name}_ci95_low"], metrics[f"{name}_ci95_high"]
        assert 0.0 <= low <= high <= 100.0, name
    assert metrics["chair_ci95_low"] <= metrics["chair"] <= metrics["chair_ci95_high"]
    # same seed, same intervals
    again, _ = score(data, ci=True, n_boot=200, reference_arithmetic=False)
    assert again["f1_ci95_low"] == metrics["f1_ci95_low"]
