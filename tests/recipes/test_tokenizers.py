"""Tokenizers, windows and masking: properties that must hold for any input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helixrun_trainer.recipes.genechat import gene_windows
from helixrun_trainer.recipes.ptm_mamba import mask_batch, vocab
from helixrun_trainer.recipes.ptm_mamba.model import reverse_within_length

pieces = st.sampled_from(list(vocab.RESIDUES) + list(vocab.PTM_TOKENS))
ptm_sequences = st.lists(pieces, min_size=1, max_size=80).map("".join)
dna = st.text(alphabet="ACGTN", min_size=1, max_size=3000)


def test_vocabulary_has_59_tokens_in_the_published_layout():
    assert vocab.VOCAB_SIZE == 59
    assert len(vocab.SPECIALS) == 8 and len(vocab.RESIDUES) == 25 and len(vocab.PTM_TOKENS) == 25
    assert vocab.TOKENS[len(vocab.SPECIALS) + len(vocab.RESIDUES)] == vocab.PTM_MARKER


@given(ptm_sequences)
def test_ptm_tokenizer_round_trips(sequence):
    ids = vocab.encode(sequence)
    assert ids[0] == vocab.CLS and ids[-1] == vocab.EOS
    assert vocab.decode(ids) == sequence
    assert all(i not in vocab.SPECIAL_IDS for i in ids[1:-1])


@given(st.text(min_size=1, max_size=30))
def test_ptm_tokenizer_accepts_only_its_vocabulary(text):
    try:
        ids = vocab.tokenize(text)
    except vocab.UnknownToken as exc:
        assert exc.position >= 1
        return
    assert vocab.decode(ids) == text.strip().upper() or vocab.decode(ids) == "".join(
        p if p.startswith("<") else p.upper() for p in vocab._PIECE.findall(text.strip()))


@given(st.lists(ptm_sequences, min_size=1, max_size=6), st.integers(0, 2**31 - 1))
def test_ptm_masking_targets_ptms_and_never_specials(sequences, seed):
    encoded = [vocab.encode(s) for s in sequences]
    width = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), width), vocab.PAD)
    for row, e in enumerate(encoded):
        ids[row, :len(e)] = torch.tensor(e)
    gen = torch.Generator().manual_seed(seed)
    inputs, labels = mask_batch(ids, gen, plain_probability=0.0)  # always the PTM-targeted mode
    special = (ids == vocab.CLS) | (ids == vocab.EOS) | (ids == vocab.PAD)
    masked = labels != -100
    assert not (masked & special).any(), "a special token was masked"
    assert masked.any(), "the batch has no target"
    is_ptm = torch.isin(ids, torch.tensor(sorted(vocab.PTM_IDS)))
    assert masked[is_ptm].all(), "PTM-targeted masking left a PTM token visible"
    assert (inputs[masked] == vocab.MASK).all() and torch.equal(labels[masked], ids[masked])
    again = mask_batch(ids, torch.Generator().manual_seed(seed), plain_probability=0.0)
    assert torch.equal(again[0], inputs), "masking is not a function of the generator"


@given(dna, st.sampled_from([(512, 10), (64, 10), (10, 3)]))
def test_gene_windows_cover_the_gene_reaching_back_by_the_overlap(sequence, shape):
    size, overlap = shape
    windows = gene_windows(sequence, size, overlap, max_windows=10**6)
    assert windows[0] == sequence[:size] and len(windows) == -(-len(sequence) // size)
    assert all(len(w) <= size + overlap for w in windows)
    for a, b in zip(windows, windows[1:]):
        assert a[-overlap:] == b[:overlap]
    rebuilt = windows[0] + "".join(w[overlap:] for w in windows[1:])
    assert rebuilt == sequence, "the windows do not cover the gene exactly"


def test_gene_windows_stop_at_max_windows():
    assert len(gene_windows("A" * 160_000 * 2, 512, 10, 313)) == 313
    assert len(gene_windows("A" * 160_000 * 2, 512, 10, 100)) == 100


@settings(deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=5))
def test_reverse_within_length_is_an_involution_that_keeps_padding_in_place(lengths):
    width = max(lengths) + 2
    x = torch.arange(len(lengths) * width, dtype=torch.float32).view(len(lengths), width)
    lens = torch.tensor(lengths)
    y = reverse_within_length(x, lens)
    assert torch.equal(reverse_within_length(y, lens), x)
    for row, n in enumerate(lengths):
        assert torch.equal(y[row, :n], x[row, :n].flip(0)) and torch.equal(y[row, n:], x[row, n:])


@pytest.fixture(scope="module")
def metagene_tok(tmp_path_factory):
    from helixrun_trainer.recipes.dna_tokenizer import metagene_tokenizer
    from helixrun_trainer.recipes.metagene_classification import tiny_reads

    return metagene_tokenizer([s for _, s, _ in tiny_reads(0)], cache=tmp_path_factory.mktemp("tok"))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet="ACGT", min_size=1, max_size=400))
def test_nucleotide_bpe_round_trips_and_fits_metagene_vocab(metagene_tok, sequence):
    ids = metagene_tok(sequence, add_special_tokens=False)["input_ids"]
    assert all(0 <= i < 1024 for i in ids)
    assert metagene_tok.decode(ids).replace(" ", "") == sequence
    # the pretraining tokenizer's ids (metagene-pretrain mgfm-1024): [PAD] 0, [BOS] 4, [EOS] 5
    assert metagene_tok.pad_token_id == 0 and metagene_tok.bos_token_id == 4 and metagene_tok.eos_token_id == 5
