"""Shared by the benchmarks: a smoke world and model built in a temporary directory."""

from __future__ import annotations

from pathlib import Path


def smoke_setup(root: Path) -> tuple[Path, Path]:
    """(model directory, world directory) of a smoke-profile world and base model under `root` (about 15 s)."""
    from mmstudy.models.llava import save_llava
    from mmstudy.training.base import BaseTrainConfig, train_base
    from mmstudy.world.files import write_world
    from mmstudy.world.scene import WorldSpec

    world = root / "world"
    write_world(world, WorldSpec.for_profile("smoke"), seed=0, progress=False)
    model, processor, _ = train_base(world, BaseTrainConfig.for_profile("smoke"), progress=False)
    save_llava(model, processor, root / "model")
    return root / "model", world


def loop_generate(model, processor, examples, cfg, images, n_tokens: dict) -> list[str]:
    """The baseline BDHS is measured against: one `generate` call (batch size 1) per sentence of each example,
    with the draws (mask, cuts), prompts and stop rule of the batched path; `n_tokens`: image tokens per example
    id."""
    from mmstudy.data.bdhs import SENTENCE_STOPS, draw_iteration
    from mmstudy.models.generation import chat_prompt, generate

    texts = []
    for ex in examples:
        draw = draw_iteration(ex, 1, n_tokens[ex.id], cfg, guided=True)
        base = chat_prompt(processor, ex.prompt)
        sentences = []
        for context, cut in draw.prefixes:
            assistant = " ".join(t for t in (context, cut) if t)
            prompt = f"{base} {assistant}" if assistant else base
            cont = generate(model, processor, [images(ex)], [prompt], max_new_tokens=cfg.max_sentence_tokens,
                            batch_size=1, image_keep=[draw.keep], stop_after=SENTENCE_STOPS, progress=False)[0]
            sentences.append(f"{cut} {cont.strip()}".strip() if cut else cont.strip())
        texts.append(" ".join(s for s in sentences if s))
    return texts

