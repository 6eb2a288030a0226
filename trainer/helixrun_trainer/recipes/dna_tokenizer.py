"""Small byte-pair tokenizers over nucleotides, built locally: the tiny stand-ins for
METAGENE-1's and DNABERT-2's BPE tokenizers (production loads theirs by name).

Same kind of tokenizer (BPE over the raw sequence, no pre-tokenisation), same
special-token ids as the real ones, a vocabulary the real model's embedding
table can index; trained on the generated tiny corpus, cached beside it so a
resumed run reads identical ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from helixrun_trainer.files import write_atomically

# METAGENE-1's pretraining tokenizer (metagene-pretrain train/minbpe/mgfm-1024/tokenizer.json): [PAD] 0, [UNK] 1,
# [CLS] 2, [SEP] 3, [BOS] 4, [EOS] 5, [MASK] 6; vocab 1024. Pretraining appended id 5 to every read (nao.py),
# although the model's config.json says bos 3, eos 4, mask 5.
METAGENE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[BOS]", "[EOS]", "[MASK]")
# DNABERT-2: [UNK] 0, [CLS] 1, [SEP] 2, [PAD] 3, [MASK] 4; vocab 4096.
DNABERT2_SPECIALS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")
NUCLEOTIDES = "ACGTN"


def cached_tokenizer(cache: Path | None, train: Callable[[], "Tokenizer"]) -> "Tokenizer":  # noqa: F821
    """`cache`/tokenizer.json when it exists, else `train()` saved there atomically: a resumed run reads the same ids."""
    from tokenizers import Tokenizer

    path = Path(cache) / "tokenizer.json" if cache else None
    if path is not None and path.exists():
        return Tokenizer.from_file(str(path))
    tok = train()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Every rank of a tiny run trains and saves the same tokenizer: atomically, so none reads a half file.
        write_atomically(path, lambda staging: tok.save(str(staging)))
    return tok


def build_bpe(sequences: Iterable[str], vocab_size: int, specials: tuple[str, ...], cache: Path | None = None,
              max_token_length: int | None = None, **special_roles):
    """A PreTrainedTokenizerFast trained on `sequences` (or loaded from `cache`/tokenizer.json)."""
    from tokenizers import Tokenizer, models, trainers
    from transformers import PreTrainedTokenizerFast

    def train() -> Tokenizer:
        tok = Tokenizer(models.BPE(unk_token=special_roles.get("unk_token", "[UNK]")))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials),
                                      initial_alphabet=list(NUCLEOTIDES), show_progress=False,
                                      max_token_length=max_token_length)
        tok.train_from_iterator(sequences, trainer=trainer)
        return tok

    return PreTrainedTokenizerFast(tokenizer_object=cached_tokenizer(cache, train), **special_roles)


def metagene_tokenizer(sequences: Iterable[str], cache: Path | None = None, vocab_size: int = 1024):
    # Tokens of at most 6 nt: 1024 merges over a tiny corpus would otherwise grow tokens as long as whole reads
    # (about 5 per read), where the real tokenizer, trained on a vast corpus, keeps mostly short k-mers.
    return build_bpe(sequences, vocab_size, METAGENE_SPECIALS, cache, max_token_length=6, pad_token="[PAD]",
                     unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", bos_token="[BOS]", eos_token="[EOS]",
                     mask_token="[MASK]")


def dnabert2_tokenizer(sequences: Iterable[str], cache: Path | None = None, vocab_size: int = 4096):
    return build_bpe(sequences, vocab_size, DNABERT2_SPECIALS, cache, unk_token="[UNK]", cls_token="[CLS]",
                     sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]")
