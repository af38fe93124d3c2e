"""The tiny CLIP tokenizer every tiny model uses: the byte alphabet plus a few whole words, built offline."""

from __future__ import annotations

from typing import Any

from transformers import CLIPTokenizer

# Words the tiny tokenizer knows whole; anything else falls back to single characters.
TINY_WORDS = ("a", "cat", "dog", "photo", "of", "the", "red", "blue", "house", "ugly", "blurry", "tree")


def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer with the byte alphabet plus a few whole words (a few hundred entries)."""
    alphabet = _byte_alphabet()
    tokens = [*alphabet, *(char + "</w>" for char in alphabet)]
    merges: list[str] = []
    for word in TINY_WORDS:
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            tokens.append(pieces[0])
    vocab: dict[str, int] = {}
    for token in [*tokens, "<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    pairs = [tuple(merge.split(" ")) for merge in dict.fromkeys(merges)]
    # transformers types `merges` as strings; the tokenizer also takes (left, right) pairs, which keep spaces safe.
    return CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=77)  # type: ignore[arg-type]


def _byte_alphabet() -> list[str]:
    """GPT-2 style byte alphabet: printable bytes as themselves, the rest shifted past 255, printable ones first."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = 256 - len(keep)
    return [chr(code) for code in keep] + [chr(256 + n) for n in range(shifted)]
