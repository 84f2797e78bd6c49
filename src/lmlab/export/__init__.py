"""To and from the Hugging Face format: lmlab's GPT as ``LlamaForCausalLM`` or ``GPT2LMHeadModel`` folders that
transformers, vLLM, TGI and lm-evaluation-harness load, and such folders back into lmlab's GPT.

    export_hf(model, tokenizer, "out/")          # config.json, model.safetensors, generation_config.json, tokenizer
    model, tokenizer, info = import_hf("out/")   # lmlab's GPT again (export then import is the identity)

What maps to what, and what is refused: :mod:`lmlab.models.hf_architecture`.
"""

from lmlab.export.writer import DTYPES, export_hf
from lmlab.models.hf_architecture import UnmappableError, family_of, gpt_config, hf_config
from lmlab.models.pretrained import import_hf, pretrained_architecture

__all__ = ["DTYPES", "UnmappableError", "export_hf", "family_of", "gpt_config", "hf_config", "import_hf",
           "pretrained_architecture"]
