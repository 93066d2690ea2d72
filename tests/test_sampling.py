"""Sampling backends of online alignment: Hugging Face generate, and the import-guarded vLLM engine (driven here
through a stand-in `vllm` module: vLLM itself needs a GPU and is not installed on this machine)."""

import sys
import types

import pytest
import torch

from mmstudy import io
from mmstudy.editions.povid import povid_like_pairs
from mmstudy.judges.registry import make_judge
from mmstudy.models.sampling import HFSampler, VLLMSampler, make_sampler, policy_weights
from mmstudy.training.online import OnlineConfig, OnlinePairs, world_scenes


@pytest.fixture(scope="module")
def inputs(smoke_world):
    pairs = povid_like_pairs(smoke_world, n=3, seed=0, partner_share=0.0)
    return pairs, [io.load_image(smoke_world / "images" / p["image"]) for p in pairs], [p["prompt"] for p in pairs]


def test_hf_sampler_gives_k_seeded_samples_per_question(smoke_model, inputs):
    model, processor, _ = smoke_model
    _, images, questions = inputs
    kwargs = {"k": 3, "temperature": 1.0, "max_new_tokens": 12, "step": 0}
    texts = HFSampler()(model.eval(), processor, images, questions, seed=5, **kwargs)
    assert [len(t) for t in texts] == [3, 3, 3]
    assert texts == HFSampler()(model, processor, images, questions, seed=5, **kwargs)
    assert texts != HFSampler()(model, processor, images, questions, seed=6, **kwargs)


def test_vllm_sampler_says_how_to_get_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)          # as if it were not installed
    with pytest.raises(ImportError, match="pip install vllm"):
        make_sampler("vllm", model_dir="models/base")
    with pytest.raises(ValueError, match="needs model_dir"):
        make_sampler("vllm")
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("sglang")


def _lora_policy(model):
    from peft import LoraConfig, get_peft_model

    from mmstudy.models.llava import lora_target_modules

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=lora_target_modules()))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)      # a trained adapter (B starts at zero)
    return peft_model


def test_policy_weights_merge_lora_under_checkpoint_names(base_dir):
    from mmstudy.models.llava import load_llava

    base, _ = load_llava(base_dir)
    names = set(base.state_dict())
    policy = _lora_policy(load_llava(base_dir)[0])
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    weights = policy_weights(policy)
    assert set(weights) == names                              # the checkpoint's own names, nothing of LoRA
    merged = _lora_policy(load_llava(base_dir)[0])
    merged.load_state_dict(before)
    expected = merged.merge_and_unload().state_dict()
    for name in names:
        assert torch.allclose(weights[name], expected[name], atol=1e-6), name
    changed = [n for n in names if not torch.equal(weights[n], base.state_dict()[n])]
    assert changed and all("language_model" in n for n in changed)
    after = policy.state_dict()                               # the policy itself is untouched
    assert all(torch.equal(before[k], after[k]) for k in before)


class FakeEngineModel:
    def __init__(self):
        self.loads = []

    def load_weights(self, weights):
        self.loads.append(dict(weights))


class FakeLLM:
    """What VLLMSampler uses of `vllm.LLM`: the constructor, generate and the engine's model."""

    def __init__(self, model, **kwargs):
        self.model_dir, self.kwargs, self.requests = model, kwargs, []
        engine_model = FakeEngineModel()
        runner = types.SimpleNamespace(model=engine_model)
        self.llm_engine = types.SimpleNamespace(
            model_executor=types.SimpleNamespace(driver_worker=types.SimpleNamespace(model_runner=runner)))

    def generate(self, requests, params, use_tqdm=True):
        self.requests.append((requests, params))
        return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f" {r['prompt'][-8:]} #{j} s{p.seed}")
                                               for j in range(p.n)]) for r, p in zip(requests, params)]


def _fake_vllm(monkeypatch):
    fake = types.ModuleType("vllm")
    fake.LLM = FakeLLM
    fake.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", fake)


def test_vllm_sampler_syncs_the_policy_once_per_step(monkeypatch, smoke_model, inputs):
    _fake_vllm(monkeypatch)
    model, processor, _ = smoke_model
    _, images, questions = inputs
    sampler = make_sampler("vllm", model_dir="models/base", gpu_memory_utilization=0.3)
    assert isinstance(sampler, VLLMSampler)
    assert sampler.llm.kwargs == {"limit_mm_per_prompt": {"image": 1}, "gpu_memory_utilization": 0.3}
    kwargs = {"k": 2, "temperature": 0.7, "max_new_tokens": 16}
    texts = sampler(model, processor, images, questions, seed=3, step=0, **kwargs)
    sampler(model, processor, images, questions, seed=4, step=0, **kwargs)
    sampler(model, processor, images, questions, seed=5, step=1, **kwargs)
    loads = sampler.engine_model().loads
    assert len(loads) == 2 and set(loads[0]) == set(model.state_dict())
    requests, params = sampler.llm.requests[0]
    expected = [[f"{r['prompt'][-8:]} #{j} s{p.seed}".strip() for j in range(2)] for r, p in zip(requests, params)]
    assert texts == expected
    assert [r["multi_modal_data"]["image"] for r in requests] == images
    assert all("<image>" in r["prompt"] for r in requests)
    assert {p.temperature for p in params} == {0.7} and len({p.seed for p in params}) == 3


def test_online_pairs_sample_through_the_given_backend(monkeypatch, smoke_model, smoke_world, inputs):
    _fake_vllm(monkeypatch)
    model, processor, _ = smoke_model
    pairs = inputs[0]
    online = OnlinePairs(OnlineConfig(mode="online_dpo", k=2), judge=make_judge("oracle"),
                         scenes=world_scenes(smoke_world), image_root=smoke_world / "images",
                         sampler=make_sampler("vllm", model_dir="models/base"))
    made, stats = online.make(0, pairs, model, processor)
    assert stats["online/pairs"] == len(made) == len(pairs)
    assert all(" #" in p["chosen"] and " #" in p["rejected"] for p in made)     # the engine's samples
