"""A byte-level tokenizer (256 bytes + PAD/BOS/EOS) that saves and loads like any HF one."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

PAD, BOS, EOS = "<pad>", "<s>", "</s>"


def build_byte_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """Return a lossless byte tokenizer: ids 0-255 are bytes, then PAD=256, BOS=257, EOS=258.

    No merges are learned, so it needs no training data and every string round-trips.
    """
    byte_chars = bytes_to_unicode()  # byte value -> printable unicode char
    vocab = {byte_chars[b]: b for b in range(256)}
    for i, special in enumerate((PAD, BOS, EOS)):
        vocab[special] = 256 + i
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], ignore_merges=True))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        model_max_length=model_max_length,
        padding_side="left",
    )
    tok.add_special_tokens({"pad_token": PAD, "bos_token": BOS, "eos_token": EOS})
    return tok
