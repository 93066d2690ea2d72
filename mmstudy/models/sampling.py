"""Sampling backends for online alignment: k responses per prompt from the current policy.

    hf     Hugging Face `generate` on the training model itself (batched, KV cache): the default, and the only
           backend tested on this project's machines.
    vllm   a vLLM engine (GPU only; `pip install vllm`, an optional dependency) loaded from the base model's
           directory; before each sampling call whose policy changed, the policy's weights (LoRA merged in) are
           copied into the engine. Import-guarded: without vLLM, asking for it raises an ImportError that says so.

Both return, for n prompts, n lists of k texts, and derive their randomness from the seed they are given.

    >>> sampler = make_sampler("vllm", model_dir="models/llava-1.6-7b", gpu_memory_utilization=0.3)
    >>> texts = sampler(policy, processor, images, questions, k=2, temperature=1.0, max_new_tokens=256, seed=7,
    ...                 step=0)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol, Sequence

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from PIL import Image

from mmstudy.models.generation import chat_prompt, generate
from mmstudy.runs import derive_seed

logger = logging.getLogger(__name__)

SAMPLERS = ("hf", "vllm")


class Sampler(Protocol):
    def __call__(self, model, processor, images: Sequence[Image.Image], questions: Sequence[str], *, k: int,
                 temperature: float, max_new_tokens: int, seed: int, step: int) -> list[list[str]]: ...


class HFSampler:
    """k samples per question with Hugging Face `generate` on the policy itself, all in one batch."""

    def __call__(self, model, processor, images, questions, *, k, temperature, max_new_tokens, seed, step):
        texts = generate(model, processor, [im for im in images for _ in range(k)],
                         [chat_prompt(processor, q) for q in questions for _ in range(k)],
                         max_new_tokens=max_new_tokens, batch_size=max(1, len(questions) * k), do_sample=True,
                         temperature=temperature, seed=seed, progress=False)
        return [texts[i * k:(i + 1) * k] for i in range(len(questions))]


@torch.no_grad()
def policy_weights(model) -> dict:
    """The policy's full weights as Hugging Face checkpoint names -> tensors, LoRA adapters merged in: each adapted
    weight is W + the adapter's delta, computed beside the model (merging in place and back would leave rounding
    error in the weights being trained)."""
    if not isinstance(model, PeftModel):
        return {k: v.detach() for k, v in model.state_dict().items()}
    base = model.get_base_model()
    out = {name.replace(".base_layer.", "."): tensor.detach() for name, tensor in base.state_dict().items()
           if "lora_" not in name}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and not module.merged:
            weight = out[f"{name}.weight"].clone()
            for adapter in module.active_adapters:
                weight += module.get_delta_weight(adapter).to(weight.dtype)
            out[f"{name}.weight"] = weight
    return out


class VLLMSampler:
    """k samples per question from a vLLM engine holding a copy of the policy (see the module docstring).

    The engine is built from `model_dir` (the checkpoint training started from) with `engine_kwargs` passed to
    `vllm.LLM`; `sync` copies the policy's weights in through the engine's model `load_weights`."""

    def __init__(self, model_dir: str | Path, **engine_kwargs):
        try:
            import vllm
        except ImportError as e:
            raise ImportError("the vllm sampler needs vLLM (GPU only): pip install vllm; or use --sampler hf") from e
        self.vllm = vllm
        self.llm = vllm.LLM(model=str(model_dir), **{"limit_mm_per_prompt": {"image": 1}, **engine_kwargs})
        self.synced_step: int | None = None

    def engine_model(self):
        """The engine's torch module (vLLM's single-process layout)."""
        return self.llm.llm_engine.model_executor.driver_worker.model_runner.model

    def sync(self, model) -> None:
        weights = policy_weights(model)
        self.engine_model().load_weights(weights=weights.items())
        logger.info("copied %d policy tensors into the vLLM engine", len(weights))

    def __call__(self, model, processor, images, questions, *, k, temperature, max_new_tokens, seed, step):
        if step != self.synced_step:      # the policy changes once per optimizer step
            self.sync(model)
            self.synced_step = step
        requests = [{"prompt": chat_prompt(processor, q), "multi_modal_data": {"image": im}}
                    for q, im in zip(questions, images)]
        params = [self.vllm.SamplingParams(n=k, temperature=temperature, max_tokens=max_new_tokens,
                                           seed=derive_seed(seed, i)) for i in range(len(requests))]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [[c.text.strip() for c in out.outputs] for out in outputs]


def make_sampler(name: str, model_dir: str | Path | None = None, **engine_kwargs) -> Sampler:
    """"hf" or "vllm" (which needs `model_dir`, the checkpoint training started from)."""
    if name == "hf":
        return HFSampler()
    if name == "vllm":
        if model_dir is None:
            raise ValueError("the vllm sampler needs model_dir, the checkpoint training started from")
        return VLLMSampler(model_dir, **engine_kwargs)
    raise ValueError(f"unknown sampler {name!r}; choose from {list(SAMPLERS)}")
