"""Tokenizers of the CLIP track: turn captions and prompts into the int64 token rows a CLIP text encoder
reads (start-of-text, tokens, end-of-text, zero padding).

``words``: a word-level tokenizer over the small closed vocabulary of ``captions.yaml``, for the tiny
offline CLIP whose text tower should stay small. ``bpe``: open_clip's byte-pair tokenizer (the one of
OpenAI's CLIP, Radford et al. 2021, section 2.4; its vocabulary ships with open_clip, so it works offline),
for pretrained towers. In both, END-OF-TEXT has the largest id of the vocabulary: open_clip's text encoder
takes the feature at ``argmax`` of the token ids as the sentence embedding, which is the EOT position only if
no other id is larger.
"""

from __future__ import annotations

import functools

import torch

from dormant.clip.captions import split_words
from dormant.errors import ConfigError

WORD_CONTEXT = 16
TOKENIZER_KINDS = ("bpe", "words")
PAD_ID, SOT_ID, UNK_ID = 0, 1, 2
FIRST_WORD_ID = 3


@functools.cache
def vocabulary() -> tuple[str, ...]:
    """The word tokenizer's words in id order (sorted): every word of ``captions.yaml`` and the CIFAR-10
    class names (dormant.clip.captions.caption_words). Words of other prompts, such as the ``openai``
    templates, are deliberately left out to keep the text tower small; they map to the unknown id."""
    from dormant.clip.captions import caption_words

    return tuple(sorted(caption_words()))


def vocabulary_size() -> int:
    """The word tokenizer's vocabulary size (pad, start, unknown, the words, end-of-text): the number of
    token embeddings a text tower for it needs."""
    return FIRST_WORD_ID + len(vocabulary()) + 1


def _check_context_length(context_length) -> int:
    if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 3:
        raise ConfigError(f"clip.context_length: expected an integer >= 3 (start, at least one token, end), "
                          f"got {context_length!r}")
    return context_length


def _text_list(texts) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}]: expected a string, got {type(t).__name__}")
    return texts


class WordTokenizer:
    """Word-level tokenizer over :func:`vocabulary`. Ids: 0 pad, 1 start-of-text, 2 unknown word, 3.. the
    words in sorted order, and end-of-text = ``vocab_size - 1`` (the largest id, see the module docstring).
    Text is split as :func:`dormant.clip.captions.split_words` does (lower case, punctuation dropped).
    Calling it on n texts gives a LongTensor [n, context_length]: start, word ids, end, zeros; a text with
    more than ``context_length - 2`` words keeps its first ones and still ends with end-of-text."""

    def __init__(self, context_length: int = WORD_CONTEXT):
        self.context_length = _check_context_length(context_length)
        self.words = vocabulary()
        self.word_ids = {w: FIRST_WORD_ID + i for i, w in enumerate(self.words)}
        self.pad_id, self.sot_id, self.unk_id = PAD_ID, SOT_ID, UNK_ID
        self.eot_id = FIRST_WORD_ID + len(self.words)
        self.vocab_size = self.eot_id + 1

    def encode(self, text: str) -> list[int]:
        """The word ids of ``text`` without start, end or truncation."""
        return [self.word_ids.get(w, UNK_ID) for w in split_words(text)]

    def __call__(self, texts: list[str]) -> torch.Tensor:
        texts = _text_list(texts)
        keep = self.context_length - 2
        rows = []
        for t in texts:
            ids = [SOT_ID, *self.encode(t)[:keep], self.eot_id]
            rows.append(ids + [PAD_ID] * (self.context_length - len(ids)))
        if not rows:
            return torch.zeros(0, self.context_length, dtype=torch.long)
        return torch.tensor(rows, dtype=torch.long)


class BpeTokenizer:
    """open_clip's byte-pair tokenizer (``open_clip.tokenizer.SimpleTokenizer``, its vocabulary of 49,408 ids
    shipped with the package) at ``context_length``: LongTensor [n, context_length] rows of start, tokens,
    end-of-text (id 49,407, the largest), zeros; too long a text is cut and ends with end-of-text."""

    def __init__(self, context_length: int):
        self.context_length = _check_context_length(context_length)
        from open_clip.tokenizer import SimpleTokenizer

        self._tokenizer = SimpleTokenizer(context_length=self.context_length)
        self.vocab_size = len(self._tokenizer.encoder)
        self.pad_id = 0
        self.sot_id = self._tokenizer.sot_token_id
        self.eot_id = self._tokenizer.eot_token_id

    def __call__(self, texts: list[str]) -> torch.Tensor:
        texts = _text_list(texts)
        if not texts:
            return torch.zeros(0, self.context_length, dtype=torch.long)
        return self._tokenizer(texts, context_length=self.context_length).to(torch.long)


def build_tokenizer(kind: str, context_length: int):
    """The tokenizer ``kind`` (``words``: :class:`WordTokenizer`, ``bpe``: :class:`BpeTokenizer`) with rows of
    ``context_length`` tokens; both have ``vocab_size``, ``context_length`` and ``eot_id``."""
    if kind == "words":
        return WordTokenizer(context_length)
    if kind == "bpe":
        return BpeTokenizer(context_length)
    raise ConfigError(f"clip.tokenizer: unknown tokenizer {kind!r} (expected one of: {', '.join(TOKENIZER_KINDS)})")
