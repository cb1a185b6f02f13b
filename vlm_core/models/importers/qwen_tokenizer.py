"""Qwen v1's ``qwen.tiktoken`` vocabulary as a transformers fast tokenizer (no remote code).

The published tokenizer (Qwen's ``tokenization_qwen.py``) is tiktoken over a file of
``base64(token) rank`` lines, with its own split pattern (single digits, unlike GPT-4's one to
three), NFC normalisation of the input, and special tokens numbered after the ranks in a fixed
order: ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``, 205 ``<|extra_i|>``, then, in Qwen-VL,
the grounding and image tags. transformers' ``TikTokenConverter`` turns ranks into a byte-level
BPE; this module gives it Qwen's pattern and tokens and adds the normaliser.
"""

from __future__ import annotations

import base64

from tokenizers import normalizers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

VOCAB_FILE = "qwen.tiktoken"
PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"
SPECIAL_TOKENS = (ENDOFTEXT, "<|im_start|>", "<|im_end|>", *(f"<|extra_{i}|>" for i in range(205)))
# Qwen-VL's tokenizer adds these after the extras (so <img> is id 151857 with the released vocabulary).
VISUAL_TOKENS = ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<img>", "</img>", "<imgpad>")


def read_ranks(path: str) -> dict[bytes, int]:
    """``qwen.tiktoken`` -> {token bytes: rank}; read here, so tiktoken's URL cache is never involved."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
            except ValueError:
                raise ValueError(f"{path}:{number}: not a `base64-token rank` line of a tiktoken vocabulary") from None
    return ranks


class _QwenConverter(TikTokenConverter):
    def __init__(self, vocab_file: str, special_tokens: tuple[str, ...]) -> None:
        super().__init__(vocab_file=vocab_file, pattern=PATTERN, extra_special_tokens=list(special_tokens))

    @staticmethod
    def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
        return read_ranks(tiktoken_url)


def qwen_fast_tokenizer(vocab_file: str, visual: bool) -> PreTrainedTokenizerFast:
    """The fast equivalent of Qwen's (``visual``: Qwen-VL's) tokenizer; pad and eos are ``<|endoftext|>``
    as in Qwen's fine-tuning code; there is no bos."""
    special = SPECIAL_TOKENS + (VISUAL_TOKENS if visual else ())
    backend = _QwenConverter(vocab_file, special).converted()
    backend.normalizer = normalizers.NFC()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=ENDOFTEXT,
        pad_token=ENDOFTEXT,
        clean_up_tokenization_spaces=False,
    )
