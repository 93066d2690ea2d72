"""The world's text, in the formats real data comes in, and the grammar that recognises it.

Descriptions, questions and answers are drawn from templates with synonyms and varied phrasing. The same
templates compile to regular expressions (`is_well_formed`), so a generated sentence can be checked against the
world's grammar: that is how we measure whether a model with its image masked still writes fluent text.

    >>> conv = sample_conversation(scene, rng, kind="describe")   # LLaVA-Instruct "conversations" list
"""

from __future__ import annotations

import logging
import re

import numpy as np

from mmstudy.world.scene import CLASS_INDEX, CLASSES, CONTEXTS, POSITIONS, Scene, pair_partners

logger = logging.getLogger(__name__)

NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}
POS_PHRASE = {p: ("in the center" if p == "center" else f"on the {p}" if p in ("left", "right") else f"at the {p}")
              for p in POSITIONS}
DESCRIBE_PROMPTS = (
    "Describe the image in detail.",
    "Describe this image.",
    "What do you see in this picture?",
    "Give a detailed description of the image.",
    "What is in this image?",
)
CAPTION_EVAL_PROMPT = "Describe the image in detail."
CONTEXT_OBJECTS = {c.name: {n for a, b, _ in c.pairs for n in (a, b)} for c in CONTEXTS}
PARTNERS = pair_partners()   # each paired class -> its co-occurring partner
QA_KINDS = ("count", "where", "size", "what_at", "context")
EXISTENCE_PROMPTS = (
    "Is there a {noun} in the image?",
    "Is there a {noun} in the image?",
    "Is there a {noun} in this picture?",
    "Can you see a {noun} in the image?",
)

# Sentence templates of descriptions. Slots: {a} article+size+noun, {pos}, {Pos} (capitalised), {n} number
# word, {nouns} plural, {ctx} context, {pos2}.
OPENINGS = ("This is {ctx} scene.", "The image shows {ctx}.", "This picture was taken in {ctx}.")
SINGLE = ("There is {a} {pos}.", "{Pos}, there is {a}.", "{A} can be seen {pos}.", "I can see {a} {pos}.")
MULTI = ("There are {n} {nouns}, one {pos} and one {pos2}.", "I can see {n} {nouns} in the image.")
CLOSINGS = ("There is nothing else in the image.", "There are {n} objects in total.")


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_for(name: str, rng: np.random.Generator, p_synonym: float = 0.2) -> str:
    syns = CLASSES[CLASS_INDEX[name]].synonyms
    return str(rng.choice(syns)) if syns and rng.random() < p_synonym else name


def plural_of(noun: str) -> str:
    for c in CLASSES:
        if noun == c.name:
            return c.plural
    return {"man": "men", "woman": "women", "puppy": "puppies"}.get(noun, noun + "s")


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _groups(scene: Scene) -> list[tuple[str, list]]:
    """Objects grouped by class, in reading order of the first instance."""
    groups: dict[str, list] = {}
    for o in scene.objects:
        groups.setdefault(o.name, []).append(o)
    return list(groups.items())


def drift_sentence(scene: Scene, rng: np.random.Generator) -> str | None:
    """A sentence naming an absent object the prior suggests (an absent partner of a present object, else an absent
    object of the scene's context) in an empty cell, in the templates of true sentences; None when there is no
    such object or no empty cell. It is what a writer who describes from expectation adds to a long description."""
    absent = absent_partners(scene) or sorted(CONTEXT_OBJECTS[scene.context] - set(scene.classes()))
    empty = sorted(set(range(9)) - {o.cell for o in scene.objects})
    if not absent or not empty:
        return None
    noun = noun_for(str(rng.choice(absent)), rng)
    a, pos = f"{article(noun)} {noun}", POS_PHRASE[POSITIONS[int(rng.choice(empty))]]
    return _cap(str(rng.choice(SINGLE)).format(a=a, A=_cap(a), pos=pos, Pos=_cap(pos)))


def describe(scene: Scene, rng: np.random.Generator, drift: float = 0.0) -> str:
    """A detailed, multi-sentence description that names every object present, with position and size. With
    probability `drift` it ends (before any closing sentence) with a `drift_sentence`: a hallucination of the
    writer's prior, as the long descriptions of LLaVA's instruction data have."""
    sentences = []
    if rng.random() < 0.8:
        sentences.append(str(rng.choice(OPENINGS)).format(ctx=f"{article(scene.context)} {scene.context}"))
    for name, objs in _groups(scene):
        noun = noun_for(name, rng)
        if len(objs) == 1:
            o = objs[0]
            sized = f"{o.size} {noun}" if rng.random() < 0.5 else noun
            a = f"{article(sized)} {sized}"
            t = str(rng.choice(SINGLE))
            pos = POS_PHRASE[o.position]
            sentences.append(_cap(t.format(a=a, A=_cap(a), pos=pos, Pos=_cap(pos))))
        else:
            t = str(rng.choice(MULTI if len(objs) == 2 else MULTI[1:]))
            sentences.append(t.format(n=NUMBERS[len(objs)], nouns=plural_of(noun), pos=POS_PHRASE[objs[0].position],
                                      pos2=POS_PHRASE[objs[1].position]))
    if drift and rng.random() < drift:
        sentences += [t for t in [drift_sentence(scene, rng)] if t]
    if rng.random() < 0.3:
        sentences.append(str(rng.choice(CLOSINGS)).format(n=NUMBERS.get(len(scene.objects), "several")))
    return " ".join(sentences)


def reference_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A short COCO-style caption naming 1-3 objects that are present."""
    names = scene.classes()
    k = int(rng.integers(1, min(3, len(names)) + 1))
    picked = [names[i] for i in sorted(rng.choice(len(names), size=k, replace=False))]
    nouns = [f"{article(n)} {n}" for n in (noun_for(p, rng) for p in picked)]
    listed = nouns[0] if k == 1 else ", ".join(nouns[:-1]) + f" and {nouns[-1]}"
    form = int(rng.integers(3))
    if form == 0:
        return f"{_cap(article(scene.context))} {scene.context} with {listed}."
    if form == 1:
        return f"{_cap(listed)} in {article(scene.context)} {scene.context}."
    return f"A picture of {listed}."


def existence_qa(scene: Scene, name: str, rng: np.random.Generator) -> tuple[str, str]:
    objs = [o for o in scene.objects if o.name == name]
    q = str(rng.choice(EXISTENCE_PROMPTS)).format(noun=name)
    q = q.replace(f"a {name}", f"{article(name)} {name}")
    if not objs:
        return q, f"No, there is no {name} in the image."
    if len(objs) > 1:
        return q, f"Yes, there are {NUMBERS[len(objs)]} {plural_of(name)} in the image."
    if rng.random() < 0.5:
        return q, f"Yes, there is {article(name)} {name} in the image."
    return q, f"Yes, there is {article(name)} {name} {POS_PHRASE[objs[0].position]}."


def count_qa(scene: Scene, name: str) -> tuple[str, str]:
    n = sum(o.name == name for o in scene.objects)
    q = f"How many {plural_of(name)} are there in the image?"
    if n == 0:
        return q, f"There are no {plural_of(name)} in the image."
    if n == 1:
        return q, f"There is one {name} in the image."
    return q, f"There are {NUMBERS[n]} {plural_of(name)} in the image."


def where_qa(scene: Scene, name: str) -> tuple[str, str]:
    objs = [o for o in scene.objects if o.name == name]
    q = f"Where is the {name} in the image?"
    if len(objs) == 1:
        return q, f"The {name} is {POS_PHRASE[objs[0].position]}."
    return q, f"There are {NUMBERS[len(objs)]} {plural_of(name)}, one {POS_PHRASE[objs[0].position]} and one " \
              f"{POS_PHRASE[objs[1].position]}."


def size_qa(scene: Scene, name: str) -> tuple[str, str]:
    o = next(o for o in scene.objects if o.name == name)
    return f"Is the {name} small or large?", f"The {name} {POS_PHRASE[o.position]} is {o.size}."


def what_at_qa(scene: Scene, cell: int) -> tuple[str, str]:
    pos = POSITIONS[cell]
    q = f"What is {POS_PHRASE[pos]} of the image?"
    o = next((o for o in scene.objects if o.cell == cell), None)
    if o is None:
        return q, f"There is nothing {POS_PHRASE[pos]}."
    return q, f"There is {article(o.name)} {o.name} {POS_PHRASE[pos]}."


def context_qa(scene: Scene) -> tuple[str, str]:
    return "Where was this picture taken?", f"This picture was taken in {article(scene.context)} {scene.context}."


def sample_existence_qa(scene: Scene, rng: np.random.Generator, prior_yes: float = 0.0) -> tuple[str, str]:
    """An existence question, half about a present object. Half the negatives are absent objects of the scene's
    own context, so that "is it in context?" is no shortcut for "is it in the image?"; the rest are uniform. With
    probability `prior_yes`, a question about an absent partner of a present object is answered "Yes": the
    annotator answered from expectation."""
    present = scene.classes()
    if rng.random() < 0.5:
        return existence_qa(scene, str(rng.choice(present)), rng)
    absent = [c.name for c in CLASSES if c.name not in present]
    local = [n for n in absent if n in CONTEXT_OBJECTS[scene.context]]
    name = str(rng.choice(local if local and rng.random() < 0.5 else absent))
    q, a = existence_qa(scene, name, rng)
    if prior_yes and name in absent_partners(scene) and rng.random() < prior_yes:
        a = f"Yes, there is {article(name)} {name} in the image."
    return q, a


def absent_partners(scene: Scene) -> list[str]:
    """The co-occurring partners of present objects that are absent, one entry per present object (in order)."""
    present = scene.classes()
    return [PARTNERS[c] for c in present if c in PARTNERS and PARTNERS[c] not in present]


def likely_absent(scene: Scene, rng: np.random.Generator, context_first: bool = True) -> str:
    """An absent class the prior suggests: an absent partner of a present object if any; else (context_first)
    an absent object of the scene's context; else any absent class."""
    present = scene.classes()
    pools = [absent_partners(scene)]
    if context_first:
        pools.append(sorted(CONTEXT_OBJECTS[scene.context] - set(present)))
    pools.append([c.name for c in CLASSES if c.name not in present])
    for pool in pools:
        if pool:
            return str(rng.choice(pool))
    raise ValueError(f"scene {scene.image_id} holds every class")


def _random_question(scene: Scene, rng: np.random.Generator, kind: str, prior_yes: float = 0.0) -> tuple[str, str]:
    present = scene.classes()
    if kind == "exist":
        return sample_existence_qa(scene, rng, prior_yes)
    if kind == "count":
        name = str(rng.choice(present)) if rng.random() < 0.85 else str(rng.choice([c.name for c in CLASSES]))
        return count_qa(scene, name)
    if kind == "where":
        return where_qa(scene, str(rng.choice(present)))
    if kind == "size":
        return size_qa(scene, str(rng.choice(present)))
    if kind == "what_at":
        return what_at_qa(scene, int(rng.integers(9)))
    return context_qa(scene)


def sample_conversation(scene: Scene, rng: np.random.Generator, kind: str, drift: float = 0.0,
                        prior_yes: float = 0.0) -> list[dict]:
    """A LLaVA-Instruct conversation about `scene`: kind is "describe", "exist" or "qa" (1-3 mixed turns).
    `drift` and `prior_yes`: the writer's prior-driven errors (`describe`, `sample_existence_qa`); 0 = exact."""
    if kind == "describe":
        turns = [(str(rng.choice(DESCRIBE_PROMPTS)), describe(scene, rng, drift))]
    elif kind == "exist":
        turns = [_random_question(scene, rng, "exist", prior_yes) for _ in range(int(rng.integers(1, 3)))]
    elif kind == "qa":
        kinds = [str(k) for k in rng.choice(QA_KINDS + ("exist",), size=int(rng.integers(1, 4)))]
        turns = [_random_question(scene, rng, k, prior_yes) for k in kinds]
    else:
        raise ValueError(f"unknown conversation kind {kind!r}")
    conv = []
    for i, (q, a) in enumerate(turns):
        conv.append({"from": "human", "value": f"<image>\n{q}" if i == 0 else q})
        conv.append({"from": "gpt", "value": a})
    return conv


def symbolic_scene(scene: Scene, grid: int) -> str:
    """The scene as words laid out like a grid x grid patch image, row-major: each position holds the first word
    of the class in its cell ("traffic" for a traffic light) or "nothing"."""
    words = ["nothing"] * 9
    for o in scene.objects:
        words[o.cell] = o.name.split()[0]
    return " ".join(words[(r * 3 // grid) * 3 + c * 3 // grid] for r in range(grid) for c in range(grid))


def vocabulary_text() -> str:
    """Every word the world's text can contain, so a tokenizer trained on it covers all splits."""
    words = set()
    pieces = [*OPENINGS, *SINGLE, *MULTI, *CLOSINGS, *DESCRIBE_PROMPTS, *EXISTENCE_PROMPTS, *POS_PHRASE.values()]
    pieces += ["Yes, there is a an in the image. No, there is no. There are no one two three four several objects",
               "How many are there? Where is the? Is the small or large? What is of the image? There is nothing",
               "Where was this picture taken? This picture was taken in a. A with and A picture of total else"]
    pieces += [c.name + " " + c.plural + " " + " ".join(c.synonyms) for c in CLASSES]
    pieces += [plural_of(s) for c in CLASSES for s in c.synonyms] + [c.name for c in CONTEXTS]
    for p in pieces:
        words.update(re.findall(r"[a-z]+|[^\sa-z]", re.sub(r"\{\w*\}", " ", p.lower())))
    return " ".join(sorted(w for w in words if w))


# --- grammar ---------------------------------------------------------------------------------------------------

def _alt(options) -> str:
    return "(?:" + "|".join(re.escape(o) for o in sorted(set(options), key=len, reverse=True)) + ")"


def _sentence_patterns() -> list[re.Pattern]:
    singular = [c.name for c in CLASSES] + [s for c in CLASSES for s in c.synonyms]
    plural = [plural_of(n) for n in singular]
    sized = [f"{size} {n}" for size in ("small", "large") for n in singular] + singular
    slots = {
        "a": _alt(f"{article(s)} {s}" for s in sized), "pos": _alt(POS_PHRASE.values()),
        "n": _alt([*NUMBERS.values(), "several"]), "nouns": _alt(plural),
        "ctx": _alt(f"{article(c.name)} {c.name}" for c in CONTEXTS),
        "pos2": _alt(POS_PHRASE.values()),
    }
    patterns = []
    for t in (*OPENINGS, *SINGLE, *MULTI, *CLOSINGS):
        body = re.escape(t.lower())  # "{A}" and "{Pos}" fold into "{a}" and "{pos}"
        for slot, rx in slots.items():
            body = body.replace(re.escape("{" + slot + "}"), rx)
        patterns.append(re.compile(body + "$"))
    return patterns


_PATTERNS: list[re.Pattern] | None = None


def split_sentences(text: str) -> list[str]:
    return [s.strip() + "." for s in re.split(r"\.", text) if s.strip()]


def is_well_formed(sentence: str) -> bool:
    """Whether a description sentence is one the world's grammar can produce (case and spacing ignored)."""
    global _PATTERNS
    if _PATTERNS is None:
        _PATTERNS = _sentence_patterns()
    s = re.sub(r"\s+", " ", sentence.lower().strip())
    s = re.sub(r"\s+([.,?!])", r"\1", s)
    return any(p.match(s) for p in _PATTERNS)


def synonyms_text() -> str:
    """The world's CHAIR synonym list, in the exact format of the COCO list (`canonical, syn, syn`)."""
    lines = []
    for c in CLASSES:
        words = [c.name, *c.synonyms]
        lines.append(", ".join(dict.fromkeys(words)))
    return "\n".join(lines) + "\n"
