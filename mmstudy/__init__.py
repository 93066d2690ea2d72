"""mmstudy: preference alignment of multimodal LLMs and their image-grounded hallucinations.

A reproduction and extension of Amirloo et al., "Understanding Alignment in Multimodal LLMs: A Comprehensive
Study" (arXiv 2407.02477), that runs end to end on a laptop CPU on a synthetic image world with exact ground
truth, and on any local Hugging Face LLaVA checkpoint at full scale. The sub-packages and their layers:
docs/package.md.

Importing mmstudy caps torch's CPU kernels at AVX2 on x86-64 (`runs.cap_vector_isa`; MMSTUDY_NATIVE_ISA=1 keeps
the machine's own), so that one seed trains the same model on AVX-512 and AVX2 machines alike (across CPU
vendors it need not: docs/reliability.md); import it before torch.
"""

import logging
import sys

from mmstudy.runs import cap_vector_isa

__version__ = "0.1.0"

if cap_vector_isa() and "torch" in sys.modules:
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "DEFAULT"):
        logging.getLogger(__name__).warning(
            "torch was imported before mmstudy and already runs %s kernels: results may differ from an AVX2 "
            "machine's (import mmstudy first; docs/reliability.md)", capability)
