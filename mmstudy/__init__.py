"""mmstudy: preference alignment of multimodal LLMs and their image-grounded hallucinations.

A reproduction and extension of Amirloo et al., "Understanding Alignment in Multimodal LLMs: A Comprehensive
Study" (arXiv 2407.02477), that runs end to end on a laptop CPU on a synthetic image world with exact ground
truth, and on any local Hugging Face LLaVA checkpoint at full scale.

Modules (data flows top to bottom):
    world       synthetic scenes, rendering, and their text in the real formats
    model       build / load LLaVA models, tokenizer, processor, chat template
    generation  batched generation, image-attention masking during generate
    base        staged base training of the tiny world model
    benchmarks  POPE, CHAIR (pure scorers)
    evaluate    run benchmarks on a model and world
    io          atomic writes, strict JSON / JSON-lines readers
    runs        seeds and run manifests
    cli         the `mmstudy` command
"""

__version__ = "0.1.0"
