"""Tiny offline tokenizer and random models for integration tests (no download)."""

from __future__ import annotations

import functools

import torch

CORPUS = [
    "Answer in French. Use at most twenty words. Reply in JSON with a key named answer.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat.",
    "Write a short poem about the sea, the wind and the stars at night.",
    "Summarise the following document in three bullet points and end with a question.",
    "system user assistant <|im_start|> <|im_end|> hello world rules must always be followed",
]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@functools.lru_cache(maxsize=None)
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "<unk>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def model(kind: str = "llama", layers: int = 2, seed: int = 0, std: float = 0.02, **overrides):
    import transformers as tf

    vocab = len(tokenizer())
    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=4,
        initializer_range=std,
    )
    if kind == "llama":
        cfg = tf.LlamaConfig(**common)
    elif kind == "qwen2":
        cfg = tf.Qwen2Config(**common)
    elif kind == "qwen3":
        cfg = tf.Qwen3Config(head_dim=16, **common)
    elif kind == "mistral":
        cfg = tf.MistralConfig(sliding_window=8, **common)
    elif kind == "gemma2":
        cfg = tf.Gemma2Config(
            head_dim=16,
            sliding_window=8,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=None,
            query_pre_attn_scalar=16,
            **common,
        )
    elif kind == "gemma3":
        cfg = tf.Gemma3TextConfig(head_dim=16, sliding_window=8, query_pre_attn_scalar=16, **common)
    elif kind == "phi3":
        cfg = tf.Phi3Config(**common)
    else:
        raise ValueError(kind)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    torch.manual_seed(seed)
    m = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    return m
