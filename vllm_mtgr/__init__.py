"""vllm-mtgr: generative recommenders (Meta HSTU, Meituan MTGR) served by vLLM.

`register()` is the `vllm.general_plugins` entry point. vLLM calls it in every
process it starts, so it is idempotent and imports model code only lazily.
"""

from __future__ import annotations

from pathlib import Path

# kernels/, converters/ and trt/ sit beside this folder in a checkout and
# install as its subpackages (setup.cfg `package_dir`). Run from the
# checkout's root, Python imports this folder itself: look for them beside it.
_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "setup.cfg").is_file() and (_CHECKOUT / "trt").is_dir():
    __path__.append(str(_CHECKOUT))

ARCHITECTURES = {
    "MTGRForCausalLM": "vllm_mtgr.models.retrieval:MTGRForCausalLM",
    "MTGRForRanking": "vllm_mtgr.models.ranking:MTGRForRanking",
    "MTGRForSemanticRetrieval": "vllm_mtgr.models.semantic:MTGRForSemanticRetrieval",
}


def register() -> None:
    from transformers import AutoConfig
    from vllm import ModelRegistry

    from vllm_mtgr import compat
    from vllm_mtgr.config import MTGRConfig
    from vllm_mtgr.processes import die_with_parent

    die_with_parent()
    compat.check_version()
    AutoConfig.register("mtgr", MTGRConfig, exist_ok=True)
    supported = set(ModelRegistry.get_supported_archs())
    for architecture, path in ARCHITECTURES.items():
        if architecture not in supported:
            ModelRegistry.register_model(architecture, path)
    compat.register_attention_backend()
    compat.register_tokenizer_mode()
    compat.register_model_defaults(list(ARCHITECTURES))
