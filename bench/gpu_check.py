"""GPU check: what mmstudy does per GPU-hour on a LLaVA-1.6-7B-shaped model (one GPU, under 8 minutes on an H100/H200).

The model is built from its config with random weights (bf16 on a GPU), nothing downloaded: the CLIP ViT-L/14-336
vision tower, the Vicuna-7B / Llama-2-7B language model (hidden 4096, 32 layers, 32 heads, MLP 11008, vocabulary
32064, as llava-v1.6-vicuna-7b-hf), AnyRes with LLaVA-1.6's grid pinpoints. Its tokenizer is mmstudy's word-level
one over the smoke world's words, padded with filler words to the 32064 ids, so every id the random model picks
decodes to a word. The data are a smoke world's, its images resized to COCO's 640 x 480 (2,340 image tokens each
under AnyRes, as the paper's COCO images have). Random weights never stop early, so every generation runs to its
token budget: the rates are of full-length work; accuracies are meaningless and not reported.

    dpo     LoRA DPO steps per second through `mmstudy.training.dpo.train_dpo` (what `mmstudy train-dpo` runs),
            the paper's LoRA (r 128, alpha 256, projector trained), reference = adapters disabled, computed each step;
            and the model FLOP utilisation: FLOPs of the measured steps (counted from their token counts) per second,
            divided by this GPU's bf16 matmul rate measured in the same run (float32 on a CPU)
    bdhs    generated tokens per second of mmstudy's batched BDHS (`bdhs_generate`, one guided iteration, rho 0.99)
            against `common.loop_generate`, one `model.generate` call per sentence of each example, same prompts,
            masks and cuts
    eval    POPE and caption (CHAIR) items per second through `mmstudy.evaluation.evaluate.evaluate` on the smoke world
    launch  one `accelerate launch -m mmstudy train-dpo` subprocess on the saved model: wall time and exit status

    python bench/gpu_check.py [--out gpu_check.json] [--device cuda] [--tiny]

`--tiny` runs the same code on a tiny LLaVA-NeXT (CPU: well under a minute). The JSON summary (device, versions,
each measurement, total wall time) is written atomically; a section that fails records its error and the others
still run. The last line is `gpu_check: ok ...` with the key rates, or `gpu_check: FAILED ...` (exit status 1).
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from common import loop_generate

logger = logging.getLogger("gpu_check")

# llava-v1.6-vicuna-7b-hf: AnyRes resolutions, (height, width)
PAPER_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


@dataclass(frozen=True)
class Scale:
    """Model shape and workload sizes of one run."""

    name: str
    vision: dict                     # CLIPVisionConfig keyword arguments
    text: dict                       # LlamaConfig keyword arguments (vocab_size included)
    pinpoints: list
    image_seq_length: int            # image tokens of the base view (the config's image_seq_length)
    lora_r: int = 128
    lora_alpha: int = 256
    dpo_batch: int = 4               # pairs per optimizer step
    dpo_steps: int = 4               # the first is warm-up, the rest are timed
    bdhs_examples: int = 8
    bdhs_batch: int = 8
    eval_items: int = 16             # first N items of each POPE split and of the caption prompts
    matmul_n: int = 8192
    matmul_reps: int = 50
    launch_timeout_s: int = 300
    image_resize: tuple[int, int] | None = (640, 480)   # world images resized to COCO's size; None: 48 px kept


PAPER = Scale(
    name="llava-1.6-7b",
    vision=dict(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                num_attention_heads=16, projection_dim=768),
    text=dict(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
              num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5),
    pinpoints=PAPER_PINPOINTS, image_seq_length=576,
)

TINY = Scale(
    name="tiny",
    vision=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                num_attention_heads=2, projection_dim=32),
    text=dict(vocab_size=512, hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5),
    pinpoints=[[32, 64], [64, 32], [64, 64]], image_seq_length=16,
    lora_r=8, lora_alpha=16, dpo_batch=2, dpo_steps=3, bdhs_examples=4, bdhs_batch=4, eval_items=3,
    matmul_n=512, matmul_reps=10, launch_timeout_s=240, image_resize=(64, 48),
)

SECTIONS = ("matmul", "dpo", "bdhs", "eval", "launch")


# ---------------------------------------------------------------------------------------------------- the model


def build_tokenizer_of_size(vocab_size: int):
    """mmstudy's word-level tokenizer over the world's words, padded with filler words (w00000, ...) to exactly
    `vocab_size` ids."""
    from mmstudy.models.llava import build_tokenizer
    from mmstudy.world.text import vocabulary_text

    words = len(build_tokenizer([vocabulary_text()]))
    if vocab_size < words:
        raise ValueError(f"vocab_size {vocab_size} is below the world's {words} tokens")
    filler = " ".join(f"w{i:05d}" for i in range(vocab_size - words))
    tok = build_tokenizer([vocabulary_text(), filler])
    if len(tok) != vocab_size:
        raise RuntimeError(f"tokenizer has {len(tok)} ids, wanted {vocab_size}")
    return tok


def build_processor(scale: Scale, tokenizer):
    """A LlavaNextProcessor (PIL AnyRes image processor, CLIP normalisation) with mmstudy's chat template."""
    from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

    from mmstudy.models.llava import CHAT_TEMPLATE, IMAGE_TOKEN

    side = scale.vision["image_size"]
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": side},
                                                 crop_size={"height": side, "width": side},
                                                 image_grid_pinpoints=scale.pinpoints)
    return LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer,
                              patch_size=scale.vision["patch_size"], vision_feature_select_strategy="default",
                              num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN)


def build_model(scale: Scale, processor, device: str, dtype: torch.dtype):
    """A randomly initialised LlavaNextForConditionalGeneration of `scale`'s shape, made directly on `device` in
    `dtype` (initialising 7 B parameters on a CPU would take minutes)."""
    from transformers import (
        CLIPVisionConfig,
        GenerationConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
    )

    from mmstudy.models.llava import IMAGE_TOKEN

    tok = processor.tokenizer
    text = LlamaConfig(**scale.text, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    config = LlavaNextConfig(vision_config=CLIPVisionConfig(**scale.vision), text_config=text,
                             image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                             image_grid_pinpoints=scale.pinpoints, image_seq_length=scale.image_seq_length,
                             vision_feature_layer=-2, vision_feature_select_strategy="default",
                             tie_word_embeddings=False)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaNextForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id)
    return model.eval()


def model_summary(model) -> dict:
    """Parameter counts of the whole model, the language model and the vision tower."""
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    return {"params": count(model), "lm_params": count(model.model.language_model),
            "vision_params": count(model.model.vision_tower), "dtype": str(model.dtype).split(".")[-1]}


# ---------------------------------------------------------------------------------------------------- helpers


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gb(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None


def device_info(device: str) -> dict:
    """Device name and the versions of the libraries the rates depend on."""
    import accelerate
    import peft
    import transformers

    info = {"device": device, "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "peft": peft.__version__, "python": platform.python_version()}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update({"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
                     "cuda": torch.version.cuda, "device_count": torch.cuda.device_count()})
    else:
        info.update({"name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()})
    return info


# ---------------------------------------------------------------------------------------------------- measurements


def measure_matmul(device: str, n: int, reps: int) -> dict:
    """This device's matmul rate: an n x n by n x n product timed `reps` times, bf16 on a GPU, float32 on a CPU."""
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    seconds = time.perf_counter() - start
    del a, b
    free_memory(device)
    return {"ok": True, "dtype": str(dtype).split(".")[-1], "n": n, "reps": reps, "seconds": round(seconds, 4),
            "tflops": round(2 * n ** 3 * reps / seconds / 1e12, 3)}


def dpo_pair_flops(config, lora_r: int, pair) -> float:
    """Matmul FLOPs of one pair in one DPO step of `train_dpo` under LoRA with the reference computed on the fly.

    The pair's prompt (image tokens included) runs once and its responses continue from its KV cache. Counted, 2
    FLOPs per multiply-add: the LM's projections on every token (and LoRA's, rank r), causal attention (QK^T and
    AV), the LM head on the response tokens, the vision tower on every crop (patches + CLS) and the projector.
    Policy forward; policy backward = input gradients of the frozen layers (1x their forward), LoRA's and the
    projector's weight gradients, attention 2x its forward, nothing through the frozen vision tower; reference
    forward = the policy forward without LoRA."""
    text, vision = config.text_config, config.vision_config
    h, layers, vocab = text.hidden_size, text.num_hidden_layers, text.vocab_size
    kv = text.num_key_value_heads * (h // text.num_attention_heads)
    mlp = text.intermediate_size
    linear = layers * (2 * h * h + 2 * h * kv + 3 * h * mlp)                    # q, o; k, v; gate, up, down
    lora = layers * lora_r * (2 * (h + h) + 2 * (h + kv) + 3 * (h + mlp))       # A (in x r) + B (r x out)
    prompt = len(pair.prompt_ids)
    lengths = [len(r) for r in pair.responses]
    tokens = prompt + sum(lengths)
    attention = 4 * h * layers * (prompt * prompt / 2 + sum(n * (prompt + n / 2) for n in lengths))
    head = 2 * h * vocab * sum(lengths)
    pixels = pair.pixel_values
    crops = pixels.shape[1] if pixels.dim() == 5 else 1
    d, v_layers, v_mlp = vision.hidden_size, vision.num_hidden_layers, vision.intermediate_size
    per_crop = (vision.image_size // vision.patch_size) ** 2 + 1
    vision_fwd = crops * v_layers * (2 * per_crop * (4 * d * d + 2 * d * v_mlp) + 4 * d * per_crop ** 2)
    projector = 2 * (d * h + h * h) * crops * (per_crop - 1)
    policy_fwd = 2 * linear * tokens + 2 * lora * tokens + attention + head + vision_fwd + projector
    policy_bwd = 2 * linear * tokens + 4 * lora * tokens + 2 * attention + head + projector
    reference_fwd = 2 * linear * tokens + attention + head + vision_fwd + projector
    return float(policy_fwd + policy_bwd + reference_fwd)


def _dpo_run(model_dir: Path, world: Path, pairs: list[dict], batch: int, scale: Scale, device: str,
             out: Path) -> dict:
    """One `train_dpo` run of `scale.dpo_steps` steps of `batch` pairs; per-step times from its metrics.jsonl."""
    from mmstudy import io
    from mmstudy.training.dpo import DPOTrainConfig, train_dpo

    cfg = DPOTrainConfig(lora_r=scale.lora_r, lora_alpha=scale.lora_alpha, batch_size=batch, epochs=1,
                         checkpoint_every=0, merge=False, lr=1e-6, projector_lr=2e-5)
    summary = train_dpo(model_dir, pairs[:batch * scale.dpo_steps], cfg, out, world / "images", device=device,
                        progress=False)
    seconds = [r["seconds"] for r in io.read_jsonl(out / "metrics.jsonl")]
    return {"cfg": cfg, "summary": summary, "step_end_seconds": seconds}


def measure_dpo(model_dir: Path, processor, config, world: Path, pairs: list[dict], scale: Scale, device: str,
                matmul_tflops: float, work: Path) -> dict:
    """LoRA DPO steps per second through `train_dpo` (the first step is warm-up, the rest are timed) and the model
    FLOP utilisation against the measured matmul rate. Halves the batch on a CUDA out-of-memory error."""
    from mmstudy.training.checkpoints import epoch_order
    from mmstudy.training.dpo import encode_pairs

    oom = []
    batch = scale.dpo_batch
    while True:
        reset_peak(device)
        try:
            run = _dpo_run(model_dir, world, pairs, batch, scale, device, work / f"dpo_b{batch}")
            break
        except torch.cuda.OutOfMemoryError as e:
            if batch == 1:
                raise
            oom.append({"batch": batch, "error": str(e).splitlines()[0]})
            logger.warning("DPO at batch %d ran out of memory; retrying at batch %d", batch, batch // 2)
        free_memory(device)          # after the except block, which holds the failed step's frames
        batch //= 2
    peak = peak_memory_gb(device)
    free_memory(device)
    ends = run["step_end_seconds"]
    steps = len(ends)
    timed = steps - 1 if steps > 1 else 1
    timed_seconds = ends[-1] - ends[0] if steps > 1 else ends[0]
    encoded, _ = encode_pairs(processor, pairs[:batch * scale.dpo_steps], world / "images", 10**9, "error", False)
    order = epoch_order(len(encoded), run["cfg"].seed, 0)
    first = 1 if steps > 1 else 0
    timed_pairs = [encoded[i] for i in order[first * batch:steps * batch]]
    flops = sum(dpo_pair_flops(config, scale.lora_r, p) for p in timed_pairs)
    tokens = sum(len(p.prompt_ids) + sum(map(len, p.responses)) for p in timed_pairs)
    achieved = flops / timed_seconds / 1e12
    return {
        "ok": True, "batch": batch, "steps": steps, "timed_steps": timed, "lora_r": scale.lora_r,
        "lora_alpha": scale.lora_alpha, "precompute_ref": False, "train_projector": True,
        "image_tokens_per_pair": int(sum(p.prompt_ids.count(config.image_token_id) for p in encoded) / len(encoded)),
        "first_step_seconds": round(ends[0], 3), "timed_seconds": round(timed_seconds, 3),
        "setup_seconds": run["summary"]["setup_seconds"],
        "steps_per_s": round(timed / timed_seconds, 4), "pairs_per_s": round(len(timed_pairs) / timed_seconds, 4),
        "tokens_per_s": round(tokens / timed_seconds, 1), "flops_per_step": float(f"{flops / timed:.4g}"),
        "achieved_tflops": float(f"{achieved:.4g}"), "mfu": round(achieved / matmul_tflops, 4),
        "peak_gpu_mem_gb": peak, "oom_retries": oom,
    }


class AcceptAll:
    """Stands in for BDHS's sentence embedder: similarity 0, so every rejection is accepted after one iteration
    (the embedder's own cost is not generation and is not measured)."""

    name = "accept-all"

    def similarity(self, a, b) -> np.ndarray:
        return np.zeros(len(a))


def _generated_tokens(tokenizer, texts: list[str], examples, cfg, n_tokens: dict) -> int:
    """Tokens the model generated in `texts` (each example's rejected response): its tokens less those of the
    guidance cuts, which are copied from y+."""
    from mmstudy.data.bdhs import draw_iteration

    count = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"]) if s else 0  # noqa: E731
    total = 0
    for text, ex in zip(texts, examples):
        cuts = sum(count(cut) for _, cut in draw_iteration(ex, 1, n_tokens[ex.id], cfg, guided=True).prefixes)
        total += max(0, count(text) - cuts)
    return total


def measure_bdhs(model, processor, world: Path, scale: Scale, device: str) -> dict:
    """Generated tokens per second of batched BDHS (`bdhs_generate`: one prefill per example, every sentence of
    every example in one decode loop) against the per-example `generate` loop, on the same examples; one guided
    iteration at rho 0.99 (LLaVA-1.6 keeps about 1 % of its image tokens)."""
    from mmstudy.data.bdhs import BDHSConfig, ImageLoader, bdhs_generate, draw_iteration, load_examples
    from mmstudy.models.generation import chat_prompt, image_token_counts

    examples = load_examples(world / "llava_instruct_train.json", world / "images", n=scale.bdhs_examples, seed=0)
    images = ImageLoader(world / "images")
    cfg = BDHSConfig(rho_th=0.99, iterations=1)
    n_tokens = {ex.id: image_token_counts(processor, [images(ex)], [chat_prompt(processor, ex.prompt)])[0]
                for ex in examples}
    sentences = sum(len(draw_iteration(ex, 1, n_tokens[ex.id], cfg, True).prefixes) for ex in examples)
    embedder = AcceptAll()
    bdhs_generate(model, processor, examples[:1], cfg, embedder, images, scale.bdhs_batch, progress=False)  # warm-up
    reset_peak(device)
    sync(device)
    start = time.perf_counter()
    batched = [r.rejected for r in bdhs_generate(model, processor, examples, cfg, embedder, images, scale.bdhs_batch,
                                                 progress=False)]
    sync(device)
    t_batched = time.perf_counter() - start
    peak = peak_memory_gb(device)
    start = time.perf_counter()
    loop = loop_generate(model, processor, examples, cfg, images, n_tokens)
    sync(device)
    t_loop = time.perf_counter() - start
    tok = processor.tokenizer
    n_batched = _generated_tokens(tok, batched, examples, cfg, n_tokens)
    n_loop = _generated_tokens(tok, loop, examples, cfg, n_tokens)
    return {
        "ok": True, "examples": len(examples), "sentences": sentences, "rho_th": cfg.rho_th,
        "max_sentence_tokens": cfg.max_sentence_tokens, "batch_size": scale.bdhs_batch,
        "image_tokens_mean": round(float(np.mean(list(n_tokens.values()))), 1),
        "batched_seconds": round(t_batched, 3), "loop_seconds": round(t_loop, 3),
        "batched_tokens": n_batched, "loop_tokens": n_loop,
        "batched_tokens_per_s": round(n_batched / t_batched, 2), "loop_tokens_per_s": round(n_loop / t_loop, 2),
        "speedup": round(t_loop / t_batched, 3), "identical_outputs": sum(a == b for a, b in zip(batched, loop)),
        "peak_gpu_mem_gb": peak,
    }


def measure_eval(model, processor, world: Path, scale: Scale, device: str) -> dict:
    """POPE and caption (CHAIR) items per second through `mmstudy.evaluation.evaluate.evaluate` on the first
    `eval_items` items of each POPE split and of the caption prompts (batch = eval_items;
    registry budgets: 16 and 96 tokens)."""
    from mmstudy.evaluation.evaluate import evaluate

    out = {"ok": True, "items_per_benchmark_limit": scale.eval_items}
    for name in ("pope", "chair"):
        reset_peak(device)
        sync(device)
        start = time.perf_counter()
        _, samples = evaluate(model, processor, world, benchmarks=(name,), limit=scale.eval_items,
                              batch_size=scale.eval_items, progress=False)
        sync(device)
        seconds = time.perf_counter() - start
        out[name] = {"items": len(samples), "seconds": round(seconds, 3),
                     "items_per_s": round(len(samples) / seconds, 3), "peak_gpu_mem_gb": peak_memory_gb(device)}
    return out


def measure_launch(model_dir: Path, world: Path, pairs: list[dict], batch: int, scale: Scale, device: str,
                   out: Path) -> dict:
    """One `accelerate launch --num_processes 1 -m mmstudy train-dpo` subprocess (LoRA, one epoch of `pairs` in
    steps of `batch`, adapter saved) on the saved model: wall time, exit status, steps logged; the error text when
    it fails."""
    from mmstudy import io

    prefs = out.with_name(out.name + "_prefs.jsonl")
    io.write_jsonl(prefs, pairs)
    steps = math.ceil(len(pairs) / batch)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mmstudy", "-q", "train-dpo",
               "--model", str(model_dir), "--prefs", str(prefs), "--image-root", str(world / "images"),
               "--out", str(out), "--epochs", "1", "--batch-size", str(batch), "--lora-r", str(scale.lora_r),
               "--lora-alpha", str(scale.lora_alpha), "--lr", "1e-6", "--checkpoint-every", "0", "--adapter-only",
               "--device", "cuda" if device.startswith("cuda") else "cpu"]
    result = {"command": " ".join(command[1:]), "expected_steps": steps}
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=scale.launch_timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {**result, "ok": False, "status": "error", "returncode": None,
                "wall_seconds": round(time.perf_counter() - start, 2), "error": f"{type(e).__name__}: {e}"}
    wall = time.perf_counter() - start
    metrics = out / "metrics.jsonl"
    logged = len(io.read_jsonl(metrics)) if metrics.is_file() else 0
    ok = proc.returncode == 0 and logged == steps and (out / "model").is_dir()
    result.update({"ok": ok, "status": "ok" if ok else "failed", "returncode": proc.returncode,
                   "wall_seconds": round(wall, 2), "steps_logged": logged})
    if (out / "train_summary.json").is_file():
        summary = io.read_json(out / "train_summary.json")
        result["train_seconds"] = summary["seconds"]
        result["setup_seconds"] = summary["setup_seconds"]
    if not ok:
        result["error"] = (proc.stderr or proc.stdout)[-4000:]
    return result


# ---------------------------------------------------------------------------------------------------- driver


def run_section(results: dict, name: str, fn, *args) -> dict:
    """Run one measurement into results[name]; an exception is recorded (type, message, traceback tail) instead
    of ending the run."""
    logger.info("--- %s", name)
    start = time.perf_counter()
    try:
        results[name] = fn(*args)
    except Exception as e:  # noqa: BLE001 - one failing section must not lose the others' numbers
        logger.exception("%s failed", name)
        results[name] = {"ok": False, "status": "error", "error": f"{type(e).__name__}: {e}",
                         "traceback": traceback.format_exc()[-3000:]}
    gc.collect()                     # a failed section's tensors go with its traceback
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    results[name]["section_seconds"] = round(time.perf_counter() - start, 2)
    logger.info("%s: %s", name, {k: v for k, v in results[name].items() if k not in ("traceback", "command")})
    return results[name]


def resize_images(image_dir: Path, size: tuple[int, int]) -> int:
    """Resize every PNG under `image_dir` to `size` (width, height) in place; returns how many. At paper scale the
    smoke world's 48 px images become COCO-sized (640 x 480: 2,340 image tokens under AnyRes, as the paper's
    COCO images have); their ground-truth boxes no longer match, which rates do not care about."""
    from PIL import Image

    paths = sorted(image_dir.rglob("*.png"))
    for path in paths:
        with Image.open(path) as im:
            big = im.convert("RGB").resize(size, Image.BILINEAR)
        big.save(path, compress_level=1)
    return len(paths)


def check(results: dict, scale: Scale, device: str, work: Path) -> None:
    """Every measurement on one model, into `results` (filled as it goes, so a fatal error keeps what came
    before)."""
    from mmstudy.editions.povid import povid_like_pairs
    from mmstudy.models.llava import save_llava
    from mmstudy.world.files import write_world
    from mmstudy.world.scene import WorldSpec

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    matmul = run_section(results, "matmul", measure_matmul, device, scale.matmul_n, scale.matmul_reps)

    start = time.perf_counter()
    world = work / "world"
    write_world(world, WorldSpec.for_profile("smoke"), seed=0, progress=False)
    results["data"] = {"world": "smoke", "image_size": [48, 48]}
    if scale.image_resize:
        results["data"].update(image_size=list(scale.image_resize),
                               images_resized=resize_images(world / "images", scale.image_resize))
    results["data"]["seconds"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    processor = build_processor(scale, build_tokenizer_of_size(scale.text["vocab_size"]))
    model = build_model(scale, processor, device, dtype)
    results["model"] = {**model_summary(model), "build_seconds": round(time.perf_counter() - start, 2)}
    start = time.perf_counter()
    model_dir = save_llava(model, processor, work / "model")
    results["model"]["save_seconds"] = round(time.perf_counter() - start, 2)
    config = model.config

    run_section(results, "bdhs", measure_bdhs, model, processor, world, scale, device)
    run_section(results, "eval", measure_eval, model, processor, world, scale, device)
    del model
    free_memory(device)

    pairs = povid_like_pairs(world, n=scale.dpo_batch * scale.dpo_steps, seed=0, progress=False)
    dpo = run_section(results, "dpo", measure_dpo, model_dir, processor, config, world, pairs, scale, device,
                      matmul.get("tflops") or math.nan, work)
    free_memory(device)
    batch = dpo.get("batch", scale.dpo_batch)
    run_section(results, "launch", measure_launch, model_dir, world, pairs[:batch * scale.dpo_steps], batch, scale,
                device, work / "launch")


def per_gpu_hour(results: dict) -> dict:
    """The rates as work per hour of this device."""
    def hour(section: str, *keys: str) -> int | None:
        rate = _dig(results.get(section, {}), keys)
        return round(3600 * rate) if rate else None

    bdhs = results.get("bdhs", {})
    examples = (3600 * bdhs["examples"] / bdhs["batched_seconds"]) if bdhs.get("ok") else None
    return {"dpo_pairs": hour("dpo", "pairs_per_s"), "dpo_steps": hour("dpo", "steps_per_s"),
            "bdhs_examples": round(examples) if examples else None,
            "bdhs_tokens": hour("bdhs", "batched_tokens_per_s"), "pope_items": hour("eval", "pope", "items_per_s"),
            "caption_items": hour("eval", "chair", "items_per_s")}


def final_line(results: dict) -> str:
    """`gpu_check: ok|FAILED` and the key rates."""
    get = lambda section, *keys: _dig(results.get(section, {}), keys)  # noqa: E731
    failed = [k for k in SECTIONS if not results.get(k, {}).get("ok")] + (["fatal"] if "fatal" in results else [])
    head = "gpu_check: ok" if not failed else f"gpu_check: FAILED ({', '.join(failed)})"
    return (f"{head} device={results['info'].get('name')!r} scale={results['scale']} "
            f"matmul_tflops={get('matmul', 'tflops')} dpo_steps_per_s={get('dpo', 'steps_per_s')} "
            f"mfu={get('dpo', 'mfu')} bdhs_tokens_per_s={get('bdhs', 'batched_tokens_per_s')} "
            f"bdhs_speedup={get('bdhs', 'speedup')} pope_items_per_s={get('eval', 'pope', 'items_per_s')} "
            f"caption_items_per_s={get('eval', 'chair', 'items_per_s')} "
            f"launch={get('launch', 'status')}/{get('launch', 'wall_seconds')}s wall={results.get('wall_seconds')}s")


def _dig(d: dict, keys: tuple):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="JSON summary (default: %(default)s)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--tiny", action="store_true", help="a tiny LLaVA-NeXT instead of the 7B shape (CPU: seconds)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: OMP_NUM_THREADS, else the cores allowed); exported to the "
                             "launched training")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the world, the saved model and the runs go (default: a temporary directory, "
                             "removed at the end; the 7B model takes 15 GB)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO)
    scale = TINY if args.tiny else PAPER
    if not args.tiny and not args.device.startswith("cuda"):
        parser.error(f"the 7B-shaped check needs a GPU (device {args.device!r}); use --tiny on a CPU")
    from mmstudy import io
    from mmstudy.runs import use_cpu_threads

    os.environ.setdefault("HF_HUB_OFFLINE", "1")     # nothing is downloaded, here or in the launched training
    use_cpu_threads(args.threads)
    start = time.perf_counter()
    results: dict = {"scale": scale.name, "info": device_info(args.device),
                     "config": {"vision": scale.vision, "text": scale.text, "pinpoints": scale.pinpoints}}
    try:
        with tempfile.TemporaryDirectory(prefix="gpu_check.", dir=args.workdir) as tmp:
            check(results, scale, args.device, Path(tmp))
    except Exception as e:  # noqa: BLE001 - the JSON keeps what was measured and why the rest was not
        logger.exception("gpu_check stopped")
        results["fatal"] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    results["per_gpu_hour"] = per_gpu_hour(results)
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    results["ok"] = "fatal" not in results and all(results.get(k, {}).get("ok") for k in SECTIONS)
    io.write_json(args.out, results)
    logger.info("summary in %s", args.out)
    print(final_line(results), flush=True)  # noqa: T201
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
