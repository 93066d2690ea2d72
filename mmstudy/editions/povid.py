"""World editions of preference datasets. Here: POVID-like constructed pairs (Zhou et al. 2024, "POVID").

POVID takes an SFT answer as chosen and has GPT-4V inject plausible hallucinations into it as rejected. On the world
the ground truth makes the corruption exact and rule-based: from the LLaVA-Instruct answer y+ of a training scene,
one or two of these edits, each checked to be false for the scene:

    add       a sentence about an absent object at an empty position, preferably the in-context partner of a
              present object (the co-occurrence prior's favourite hallucination)
    object    an object noun replaced by an absent, preferably co-occurring, class
    size      small <-> large
    count     a count word changed
    position  a position phrase moved to another cell
    yes/no    an existence answer flipped ("Yes, there is a cup ..." <-> "No, there is no cup ...")

Mined with a model (`mine_with`), only the pairs whose prompt that model answers wrongly are kept: the edition on
which DPO improves POPE and CHAIR here (docs/alignment.md).

    >>> pairs = povid_like_pairs("world", n=2000, seed=0)
    >>> mined = povid_like_pairs("world", seed=0, fresh=8000, partner_share=0.5, mine_with=(model, processor))
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from mmstudy import io
from mmstudy.benchmarks.registry import REGISTRY
from mmstudy.data.llava import conversation_turns, load_llava_instruct
from mmstudy.judges.oracle import check_answer
from mmstudy.models.generation import chat_prompt, generate
from mmstudy.runs import derive_seed
from mmstudy.world.files import CONVERSATION_MIX, pick_kind
from mmstudy.world.layout import load_scenes, load_world_info
from mmstudy.world.scene import CLASSES, POSITIONS, Scene, WorldSpec, render_scene, sample_scene, scene_rng
from mmstudy.world.text import NUMBERS, POS_PHRASE, absent_partners, article, likely_absent, sample_conversation

logger = logging.getLogger(__name__)

_NOUNS = sorted({n for c in CLASSES for n in (c.name, *c.synonyms)}, key=len, reverse=True)
_NOUN_RE = re.compile(r"\b(" + "|".join(_NOUNS) + r")\b")
POSITION_PHRASE_RE = re.compile(
    r"\b(" + "|".join(sorted((POS_PHRASE[p] for p in POSITIONS), key=len, reverse=True)) + r")\b")
_SIZE_RE = re.compile(r"\b(small|large)\b")
_COUNT_RE = re.compile(r"\b(two|three|four)\b")
_YES = re.compile(r"^[Yy]es, there (?:is an? (?P<one>[a-z ]+?)|are \w+ (?P<many>[a-z ]+?)) (?:in|on|at) the")
_NO = re.compile(r"^[Nn]o, there is no (?P<obj>[a-z ]+?) in the image\.$")
_NUMBER_WORDS = [w for n, w in sorted(NUMBERS.items()) if n > 1]


def _add(text: str, scene: Scene, rng) -> str | None:
    empty = [p for i, p in enumerate(POSITIONS) if all(o.cell != i for o in scene.objects)]
    if not empty:
        return None
    name = likely_absent(scene, rng)
    sentence = f"There is {article(name)} {name} {POS_PHRASE[str(rng.choice(empty))]}."
    sentences = re.split(r"(?<=\.)\s+", text.strip())
    at = int(rng.integers(1, len(sentences) + 1)) if len(sentences) > 1 else 1
    return " ".join(sentences[:at] + [sentence] + sentences[at:])


def _replace_one(pattern: re.Pattern, text: str, rng, replace) -> str | None:
    matches = list(pattern.finditer(text))
    if not matches:
        return None
    m = matches[int(rng.integers(len(matches)))]
    new = replace(m.group(1))
    return None if new is None else text[:m.start(1)] + new + text[m.end(1):]


def _object(text, scene, rng):
    return _replace_one(_NOUN_RE, text, rng, lambda word: likely_absent(scene, rng))


def _size(text, scene, rng):
    return _replace_one(_SIZE_RE, text, rng, lambda w: "large" if w == "small" else "small")


def _count(text, scene, rng):
    return _replace_one(_COUNT_RE, text, rng, lambda w: str(rng.choice([n for n in _NUMBER_WORDS if n != w])))


def _position(text, scene, rng):
    phrases = [POS_PHRASE[p] for p in POSITIONS]
    return _replace_one(POSITION_PHRASE_RE, text, rng, lambda w: str(rng.choice([p for p in phrases if p != w])))


def flip_yes_no(text: str) -> str | None:
    """A world existence answer with its polarity flipped, in the case it starts with (the default model writes
    lower case); None for any other text."""
    if (m := _NO.match(text)) is not None:
        flipped = f"Yes, there is {article(m.group('obj'))} {m.group('obj')} in the image."
    elif (m := _YES.match(text)) is not None:
        obj = m.group("one") or m.group("many")
        name = next((c.name for c in CLASSES if obj in (c.name, c.plural, *c.synonyms)), obj)
        flipped = f"No, there is no {name} in the image."
    else:
        return None
    return flipped[0].lower() + flipped[1:] if text[0].islower() else flipped


EDITS = {"add": _add, "object": _object, "size": _size, "count": _count, "position": _position}


def _fix_articles(text: str) -> str:
    return re.sub(r"\b([Aa])n? (?=(\w))", lambda m: m.group(1) + ("n " if m.group(2) in "aeiou" else " "), text)


def corrupt(text: str, scene: Scene, rng: np.random.Generator) -> tuple[str, list[str]] | None:
    """y+ with one or two plausible false edits (see the module docstring), and their names; None when no edit
    makes the answer false for the scene (the oracle checks every edit)."""
    flipped = flip_yes_no(text)
    if flipped is not None:
        return (flipped, ["yes/no"]) if check_answer(flipped, scene, text).hallucinated else None
    out, done = text, []
    n_edits = 2 if len(text.split()) > 15 and rng.random() < 0.5 else 1
    for name in [str(k) for k in rng.permutation(list(EDITS))]:
        edited = EDITS[name](out, scene, rng)
        if edited is None:
            continue
        edited = _fix_articles(edited)
        if edited != out and check_answer(edited, scene).hallucinated:
            out, done = edited, done + [name]
            if len(done) == n_edits:
                break
    return (out, done) if done else None


def partner_question(scene: Scene, rng: np.random.Generator) -> tuple[str, str, str] | None:
    """(question, chosen, rejected) as a yes/no answer, balanced: half about the absent co-occurring partner of a
    present object (the hallucination the prior invites: "No, there is no knife ..." against "Yes, there is a
    knife ..."), half about a present object (its denial rejected), so that no answer is favoured as such."""
    present = scene.classes()
    partners = sorted(set(absent_partners(scene)))
    no, yes = "No, there is no {} in the image.", "Yes, there is {} {} in the image."
    if partners and rng.random() < 0.5:
        name = str(rng.choice(partners))
        return f"Is there {article(name)} {name} in the image?", no.format(name), yes.format(article(name), name)
    name = str(rng.choice(present))
    return f"Is there {article(name)} {name} in the image?", yes.format(article(name), name), no.format(name)


def fresh_split(seed: int) -> str:
    """The split name of the fresh scenes drawn with `seed` ("pref<seed>"): their images are named after it, so
    fresh scenes of different seeds never share a file."""
    return f"pref{seed}"


def fresh_records(world_dir: Path, count: int, seed: int) -> tuple[list[dict], dict[str, Scene]]:
    """`count` new scenes of the world (split `fresh_split(seed)`: never seen in base training), rendered into
    images/ if not there yet, each with one LLaVA-Instruct-style record drawn like the SFT data, by the same writer
    (its prior-driven errors `p_drift` and `p_prior_yes` included), so that every y+ of the world's preference data
    (POVID-like, BDHS, the editions' reference answers) comes from one source of one quality."""
    info = load_world_info(world_dir)
    spec = WorldSpec(**{"p_drift": 0.0, "p_prior_yes": 0.0, **info["spec"]})   # a version-1 world had neither
    split = fresh_split(seed)
    records, scenes = [], {}
    for i in range(count):
        scene = sample_scene(spec, info["seed"], split, i)
        path = world_dir / "images" / f"{scene.image_id}.png"
        if not path.is_file():
            io.write_bytes(path, io.png_bytes(render_scene(spec, scene, info["seed"])))
        rng = scene_rng(info["seed"], split, i, "conversations")
        conv = sample_conversation(scene, rng, pick_kind(CONVERSATION_MIX, rng), spec.p_drift, spec.p_prior_yes)
        records.append({"id": scene.image_id, "image": path.name, "conversations": conv})
        scenes[path.name] = scene
    return records, scenes


def is_existence(pair: dict) -> bool:
    """Whether a pair answers an existence question (chosen and rejected are "Yes, there ..." / "No, there ...")."""
    return bool({"partner", "yes/no"} & set(pair.get("provenance", {}).get("edits", ())))


def answer_prompts(model, processor, pairs: Sequence[dict], image_root: str | Path, batch_size: int = 64,
                   progress: bool = True) -> list[str]:
    """The model's greedy answer to each pair's prompt, with the evaluation's settings: existence questions stop
    at the first period (the answer POPE reads), other prompts get the description budget."""
    answers: list[str | None] = [None] * len(pairs)
    for kind, existence in (("pope", True), ("chair", False)):
        spec = REGISTRY[kind]
        idx = [i for i, p in enumerate(pairs) if is_existence(p) == existence]
        if not idx:
            continue
        images = [io.load_image(Path(image_root) / pairs[i]["image"], where=f"pair {i} (id={pairs[i]['id']!r})")
                  for i in idx]
        texts = generate(model, processor, images, [chat_prompt(processor, pairs[i]["prompt"]) for i in idx],
                         max_new_tokens=spec.max_new_tokens, batch_size=batch_size, stop_after=spec.stop_after,
                         progress=progress)
        for i, text in zip(idx, texts):
            answers[i] = text
    return answers


def keep_model_errors(pairs: Sequence[dict], answers: Sequence[str], scenes: dict[str, Scene],
                      seed: int = 0) -> list[dict]:
    """The pairs whose prompt the model answered wrongly (the oracle finds a hallucination in its answer, or the
    wrong yes/no), each with the model's answer in provenance["model_answer"]. Existence pairs are then balanced
    by their chosen answer (the larger side subsampled, seeded), so that the data favours neither "yes" nor "no"
    as such; other pairs are kept as they are. Order: that of `pairs`."""
    wrong = [{**p, "provenance": {**p.get("provenance", {}), "model_answer": a}} for p, a in zip(pairs, answers)
             if check_answer(a, scenes[p["image"]], p["chosen"]).hallucinated]
    sides = {ans: [i for i, p in enumerate(wrong) if is_existence(p) and p["chosen"].startswith(ans)]
             for ans in ("Yes", "No")}
    n = min(len(v) for v in sides.values())
    rng = np.random.default_rng(derive_seed(seed, "balance"))
    drop = {i for v in sides.values() for i in (rng.choice(v, size=len(v) - n, replace=False) if v else [])}
    logger.info("model errors: %d of %d pairs (existence: %d yes-chosen, %d no-chosen; %d kept of each)",
                len(wrong), len(pairs), len(sides["Yes"]), len(sides["No"]), n)
    return [p for i, p in enumerate(wrong) if i not in drop]


def povid_like_pairs(world_dir: str | Path, n: int | None = None, seed: int = 0, split: str = "train",
                     partner_share: float = 0.25, fresh: int = 0, mine_with: tuple | None = None,
                     progress: bool = True) -> list[dict]:
    """Preference records (mmstudy's schema) from the world's LLaVA-Instruct first turns: chosen = y+, rejected =
    `corrupt(y+)`; and, for a share `partner_share` of the pairs, the injected hallucination of a co-occurring
    absent object as a short answer (`partner_question`). With `n`, the first n pairs in a seeded order. With
    `fresh`, the pairs come from that many new scenes (`fresh_records`) instead of the SFT records. With
    `mine_with=(model, processor)`, only the pairs whose prompt that model answers wrongly are kept, existence
    pairs balanced by answer (`keep_model_errors`); n then counts the kept pairs."""
    if not 0.0 <= partner_share <= 1.0:
        raise ValueError(f"partner_share must be in [0, 1], got {partner_share}")
    world_dir = Path(world_dir)
    if fresh:
        records, scenes = fresh_records(world_dir, fresh, seed)
    else:
        records = load_llava_instruct(world_dir / f"llava_instruct_{split}.json")
        scenes = {f"{s.image_id}.png": s for s in load_scenes(world_dir, split)}
    order = np.random.default_rng(seed).permutation(len(records))
    pairs = []
    for i in order:
        r = records[int(i)]
        rng = np.random.default_rng(derive_seed(seed, "partner", r["id"]))
        if rng.random() < partner_share:
            made = partner_question(scenes[r["image"]], rng)
            if made is not None:
                pairs.append({"id": f"{r['id']}_partner", "image": r["image"], "prompt": made[0], "chosen": made[1],
                              "rejected": made[2], "source": "world_povid",
                              "provenance": {"generator": "world_povid", "edits": ["partner"], "seed": seed}})
                if n is not None and len(pairs) == n and mine_with is None:
                    break
                continue
        r = records[int(i)]
        prompt, chosen = conversation_turns(r)[0]
        rng = np.random.default_rng(derive_seed(seed, "povid_like", r["id"]))
        made = corrupt(chosen, scenes[r["image"]], rng)
        if made is None:
            continue
        rejected, edits = made
        pairs.append({"id": str(r["id"]), "image": r["image"], "prompt": prompt, "chosen": chosen,
                      "rejected": rejected, "source": "world_povid",
                      "provenance": {"generator": "world_povid", "edits": edits, "seed": seed}})
        if n is not None and len(pairs) == n and mine_with is None:
            break
    if mine_with is not None:
        answers = answer_prompts(*mine_with, pairs, world_dir / "images", progress=progress)
        pairs = keep_model_errors(pairs, answers, scenes, seed)[:n]
    logger.info("POVID-like world pairs: %d (from %d records)", len(pairs), len(records))
    return pairs
