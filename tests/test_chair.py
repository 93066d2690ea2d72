"""Unit tests for mmstudy.benchmarks.chair: synonym parsing, tokenization, singularization, object extraction
and the CHAIR_s / CHAIR_i / recall metrics, against hand-counted fixtures and the real COCO synonym list.

Run: pytest tests/test_chair.py
"""

from pathlib import Path

import pytest

from mmstudy.benchmarks import chair
from mmstudy.io import DataError

COCO_SYNONYMS = Path(__file__).parents[1] / "mmstudy" / "resources" / "coco_chair_synonyms.txt"

# A world-style synonym file in the COCO format: multi-word classes, synonyms, one multi-word entry
# ("coffee table") that the reference's hard-coded bigram list does not know.
WORLD_SYNONYMS = """\
car, automobile, sedan
bus
traffic light
stop sign
person, man, woman
dog, puppy
knife
coffee table
"""


@pytest.fixture(scope="module")
def coco():
    return chair.load_synonyms(COCO_SYNONYMS)


@pytest.fixture()
def world(tmp_path):
    path = tmp_path / "synonyms.txt"
    path.write_text(WORLD_SYNONYMS, encoding="utf-8")
    return chair.load_synonyms(path)


# ---------------------------------------------------------------- synonyms


def test_load_coco_synonyms(coco):
    assert len(coco.classes) == 80
    assert coco.classes[0] == "person" and coco.classes[-1] == "toothbrush"
    assert coco.to_class["puppy"] == "dog"
    assert coco.to_class["bison"] == "cow"  # the line's trailing space is stripped
    # faithful split on ", ": the double-space entries keep their leading space
    assert coco.to_class[" motor bike"] == "motorcycle"
    assert "motor bike" not in coco.to_class and "cheesecake" not in coco.to_class


def test_strip_option_fixes_double_space_entries():
    fixed = chair.load_synonyms(COCO_SYNONYMS, strip=True)
    assert fixed.to_class["motor bike"] == "motorcycle"
    assert fixed.to_class["cheesecake"] == "cake"
    assert " motor bike" not in fixed.to_class


@pytest.mark.parametrize(
    "text, line",
    [
        ("dog, puppy\n, cat\n", 2),  # empty canonical class
        ("dog, puppy\n\ncat, , kitten\n", 3),  # empty entry (blank line 2 is skipped)
        ("dog,puppy\n", 1),  # entries not separated by ", "
    ],
)
def test_malformed_synonym_lines(tmp_path, text, line):
    path = tmp_path / "bad.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=rf"bad\.txt, line {line}:"):
        chair.load_synonyms(path)


# ---------------------------------------------------------------- singularize and tokenize


@pytest.mark.parametrize(
    "plural, singular",
    [
        ("dogs", "dog"),
        ("people", "person"),
        ("children", "child"),
        ("men", "man"),
        ("women", "woman"),
        ("knives", "knife"),
        ("mice", "mouse"),
        ("geese", "goose"),
        ("buses", "bus"),
        ("glasses", "glass"),
        ("benches", "bench"),
        ("boxes", "box"),
        ("puppies", "puppy"),
        ("sheep", "sheep"),
        ("oxen", "ox"),
        ("wolves", "wolf"),
        ("potatoes", "potato"),
        ("skis", "ski"),
        ("scissors", "scissors"),
        ("cattle", "cattle"),
        # pattern.en's own defects, reproduced because the reference scorer ran through them
        ("bus", "bu"),
        ("glass", "glas"),
        ("tennis", "tenni"),
        ("ties", "ty"),
        ("cookies", "cookies"),
    ],
)
def test_singularize_matches_pattern_en(plural, singular):
    assert chair.singularize(plural) == singular


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("the dog's bowl, two cups.", ["the", "dog", "'s", "bowl", ",", "two", "cups", "."]),
        ("a dog. a cat on a mat", ["a", "dog", ".", "a", "cat", "on", "a", "mat"]),
        ("1,000 birds and 3.5 hot-dogs!", ["1,000", "birds", "and", "3.5", "hot-dogs", "!"]),
        (
            'a knife (sharp) -- "red"; no: can\'t',
            ["a", "knife", "(", "sharp", ")", "--", '"', "red", '"', ";", "no", ":", "ca", "n't"],
        ),
        ("the dogs' bowl", ["the", "dogs", "'", "bowl"]),
        ("item 1. a dog", ["item", "1.", "a", "dog"]),  # punkt keeps a number's period before a lower-case word
    ],
)
def test_tokenize_like_nltk_word_tokenize(text, tokens):
    assert chair.tokenize(text) == tokens


# ---------------------------------------------------------------- object extraction


def test_extract_objects_synonym_plural_double_word(coco):
    mentions = chair.extract_objects("Two puppies and a dog near the traffic lights.", coco)
    assert mentions == [("puppy", "dog"), ("dog", "dog"), ("traffic light", "traffic light")]


@pytest.mark.parametrize(
    "caption, expected",
    [
        ("A baby elephant.", [("elephant", "elephant")]),  # baby/adult + animal -> the animal, not person
        ("A baby on a bed.", [("baby", "person"), ("bed", "bed")]),
        ("An adult giraffe.", [("giraffe", "giraffe")]),
        ("A passenger jet.", [("jet", "airplane")]),
        ("A man in a bow tie.", [("man", "person"), ("tie", "tie")]),
        ("A toilet seat.", [("toilet", "toilet")]),
        ("A toilet with the seat up.", [("toilet", "toilet")]),  # "seat" dropped when "toilet" is present
        ("A seat.", [("seat", "chair")]),
        ("Two wine glasses.", [("wine glass", "wine glass")]),
        ("A wine glass.", [("wine glass", "wine glass")]),  # glass -> glas, then "wine glas" -> wine glass
        ("The kids' stop signs.", [("kid", "person"), ("stop sign", "stop sign")]),
    ],
)
def test_extract_objects_reference_rules(coco, caption, expected):
    assert chair.extract_objects(caption, coco) == expected


def test_double_space_synonym_faithful_vs_strip(coco):
    caption = "A scooter, a motor bike and a cheesecake."
    assert chair.extract_objects(caption, coco) == [("scooter", "motorcycle")]
    fixed = chair.load_synonyms(COCO_SYNONYMS, strip=True)
    assert chair.extract_objects(caption, fixed) == [
        ("scooter", "motorcycle"),
        ("motor bike", "motorcycle"),
        ("cheesecake", "cake"),
    ]


def test_singular_bus_needs_protect_vocabulary(coco):
    caption = "A bus and two buses."
    assert chair.extract_objects(caption, coco) == [("bus", "bus")]  # only "buses": "bus" becomes "bu"
    protected = chair.load_synonyms(COCO_SYNONYMS, protect_vocabulary=True)
    assert chair.extract_objects(caption, protected) == [("bus", "bus"), ("bus", "bus")]


def test_world_synonym_file(world):
    caption = "An automobile, two puppies and knives near traffic lights, a stop sign and a coffee table."
    assert chair.extract_objects(caption, world) == [
        ("automobile", "car"),
        ("puppy", "dog"),
        ("knife", "knife"),
        ("traffic light", "traffic light"),
        ("stop sign", "stop sign"),
        ("coffee table", "coffee table"),
    ]
    assert world.classes == ("car", "bus", "traffic light", "stop sign", "person", "dog", "knife", "coffee table")


def test_caption_gt_objects(coco):
    refs = ["A man rides a bike down the street.", "Two people on bicycles next to a bus stop."]
    # "bus" singularizes to "bu" (reference behaviour), so it does not enter the GT set
    assert chair.caption_gt_objects(refs, coco) == {"person", "bicycle"}


# ---------------------------------------------------------------- metrics

# Three captions, counted by hand with the COCO list:
#   A "A puppy and two dogs play near a stop sign."         (10 words)
#     mentions puppy->dog, dog->dog, stop sign  = 3; GT {dog, person}: stop sign hallucinated (1); covers {dog}
#   B "A man cuts bread with knives next to a traffic light." (11 words)
#     mentions man->person, knife, traffic light = 3; GT {person, knife, traffic light, dining table}: none
#     hallucinated; covers {person, knife, traffic light}
#   C "A cat on a bench. The cat is next to a bicycle."      (12 words)
#     mentions cat, bench, cat, bicycle = 4; GT {bench, bicycle}: cat twice (2); covers {bench, bicycle}
# CHAIR_s = 2/3; CHAIR_i = (1+0+2)/(3+3+4) = 3/10; recall = (1+3+2)/(2+4+2) = 6/8; avg_len = 33/3 = 11
CAPTIONS = [
    "A puppy and two dogs play near a stop sign.",
    "A man cuts bread with knives next to a traffic light.",
    "A cat on a bench. The cat is next to a bicycle.",
]
GT = [{"dog", "person"}, {"person", "knife", "traffic light", "dining table"}, {"bench", "bicycle"}]


def test_chair_metrics_golden(coco):
    m = chair.chair_metrics(CAPTIONS, GT, coco)
    assert m["chair_s"] == pytest.approx(2 / 3)
    assert m["chair_i"] == pytest.approx(0.3)
    assert m["recall"] == pytest.approx(0.75)
    assert (m["n_captions"], m["n_mentions"], m["n_hallucinated_mentions"]) == (3, 10, 3)
    assert m["n_hallucinated_captions"] == 2 and m["n_captions_with_mentions"] == 3
    assert m["avg_len"] == pytest.approx(11.0)
    assert m["version"] == chair.CHAIR_VERSION


def test_chair_per_caption_details(coco):
    rows = chair.chair_per_caption(CAPTIONS, GT, coco)
    assert rows[0]["mentioned"] == [("puppy", "dog"), ("dog", "dog"), ("stop sign", "stop sign")]
    assert rows[0]["hallucinated"] == [("stop sign", "stop sign")]
    assert rows[1]["hallucinated"] == [] and rows[1]["chair_s"] == 0
    assert rows[1]["covered"] == ["knife", "person", "traffic light"]
    assert rows[2]["hallucinated"] == [("cat", "cat"), ("cat", "cat")]  # a repeated mention counts twice
    assert rows[2]["chair_i"] == pytest.approx(0.5)
    assert rows[2]["gt"] == ["bench", "bicycle"]


def test_chair_empty_and_mentionless_input(coco):
    empty = chair.chair_metrics([], [], coco)
    assert empty["n_captions"] == 0
    assert (empty["chair_s"], empty["chair_i"], empty["recall"], empty["avg_len"]) == (0.0, 0.0, 0.0, 0.0)
    none = chair.chair_metrics(["A sunny day."], [set()], coco)
    assert (none["chair_s"], none["chair_i"], none["recall"], none["n_mentions"]) == (0.0, 0.0, 0.0, 0)


def test_chair_rejects_misaligned_input(coco):
    with pytest.raises(ValueError, match="2 captions but 1 ground-truth sets"):
        chair.chair_metrics(["a dog", "a cat"], [{"dog"}], coco)
