"""A word-level tokenizer built from the training texts, for tiny models trained from scratch.

No pretrained tokenizer can be downloaded here, so tiny text encoders use a lowercase,
whitespace-and-punctuation word vocabulary learned from the training captions and
instruction templates. It is a ``transformers.PreTrainedTokenizerFast``: it is saved with
``save_pretrained`` beside the model and loaded back with ``AutoTokenizer.from_pretrained``,
the same path full-size checkpoints use. Every sequence is ``[BOS] words [EOS]``; CLIP's
text tower pools at the first ``[EOS]``.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIALS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")


def build_word_tokenizer(texts: Iterable[str], max_length: int = 48) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIALS), min_frequency=1)
    tok.train_from_iterator(sorted(set(texts)), trainer=trainer)
    bos, eos = tok.token_to_id("[BOS]"), tok.token_to_id("[EOS]")
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", bos), ("[EOS]", eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        model_max_length=max_length,
    )
