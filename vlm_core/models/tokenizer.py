"""A byte-level BPE tokenizer trained on the fly, for tiny models built without a hub tokenizer."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from transformers import PreTrainedTokenizerFast

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"

# How often each bare short word (a text that is one word, like the answer "red") is repeated
# in the training stream: enough for its merges to outrank anything the corpus offers, so the
# word becomes one token both bare ("red") and after a space ("Ġred"). Short answers then cost
# one decoding step and exact-match scoring sees whole words.
_BARE_WORD_BOOST = 10_000
_BARE_WORD_MAX_CHARS = 20


def _bare_words(texts: Sequence[str]) -> list[str]:
    words = {t.strip() for t in texts}
    return sorted(w for w in words if w and len(w) <= _BARE_WORD_MAX_CHARS and not any(c.isspace() for c in w))


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int, special_tokens: Sequence[str] = ()
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` (deterministic: same texts, same tokenizer).

    Special tokens get the first ids in this order: ``<pad> <s> </s> <unk> <image>`` then
    ``special_tokens`` (e.g. ``<|im_start|>``). No BOS/EOS is added automatically: the
    conversation templates place them.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = list(texts)
    extra = [t for t in dict.fromkeys(special_tokens) if t not in (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, IMAGE_TOKEN)]
    specials = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, IMAGE_TOKEN, *extra]

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
        show_progress=False,
    )

    def stream() -> Iterable[str]:
        yield from texts
        for word in _bare_words(texts):
            # a space-joined line counts the word once per occurrence, with and without a leading space
            yield word + (" " + word) * _BARE_WORD_BOOST

    tokenizer.train_from_iterator(stream(), trainer=trainer, length=None)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        extra_special_tokens=[IMAGE_TOKEN, *extra],
        clean_up_tokenization_spaces=False,
    )
