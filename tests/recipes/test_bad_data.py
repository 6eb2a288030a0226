"""Bad data never crashes deep in a model: each recipe's reader names the file and the record (or row,
or gene), or skips and counts the record when the run asks for it."""

from __future__ import annotations

import json
import logging

import pytest

from helixrun_trainer.errors import DataError
from helixrun_trainer.recipes import get_recipe
from tests.recipes.conftest import tiny_config


def build(recipe: str, tmp_path, *sets: str, tiny: bool = False):
    if recipe == "metagene-classification":  # a local tokenizer: nothing is downloaded
        sets = (*sets, f"data.options.tokenizer={metagene_tokenizer_dir(tmp_path)}")
    cfg = tiny_config(recipe, tmp_path, *sets)
    return get_recipe(recipe).__class__().build_data(cfg, tiny, tmp_path / "data")


# -- METAGENE-1 classification ------------------------------------------------------------


def metagene_tokenizer_dir(tmp_path):
    from helixrun_trainer.recipes.dna_tokenizer import metagene_tokenizer
    from helixrun_trainer.recipes.metagene_classification import tiny_reads

    folder = tmp_path / "metagene-tokenizer"
    if not folder.exists():
        metagene_tokenizer([s for _, s, _ in tiny_reads(0)]).save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("text, message", [
    (">r1 label=A\nACGT\n>r2 label=B\nACJT\n", r"reads.fasta:3: record 2 \('r2'\) has characters outside"),
    (">r1 label=A\nACGT\n>r2\nACGT\n", r"reads.fasta: record 2 \('r2'\) has no label"),
    (">r1 label=A\nACGT\n>r2 label=B\n>r3 label=A\nAA\n", r"reads.fasta:3: record 2 \('r2'\) has an empty sequence"),
    ("", r"reads.fasta: contains no FASTA records"),
    ("ACGT\n>r1 label=A\nAC\n", r"reads.fasta:1: text before the first '>'"),
])
def test_metagene_bad_reads_are_named(tmp_path, text, message):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "reads.fasta").write_text(text)
    with pytest.raises(DataError, match=message):
        build("metagene-classification", tmp_path, "data.path=reads.fasta")


def test_metagene_skips_and_counts_bad_reads_on_request(tmp_path, caplog):
    (tmp_path / "data").mkdir()
    good = "".join(f">g{i} label={'AB'[i % 2]}\n{'ACGT' * 10}\n" for i in range(20))
    (tmp_path / "data" / "reads.fasta").write_text(good + ">bad1 label=A\nACJT\n>bad2\nACGT\n")
    with caplog.at_level(logging.WARNING):
        data = build("metagene-classification", tmp_path, "data.path=reads.fasta", "data.options.onError=skip")
    assert len(data.train) + len(data.eval or []) == 20
    assert "1 invalid-character" in caplog.text and "1 missing-label" in caplog.text


def test_metagene_labels_from_a_mapping_file_and_long_reads_truncated(tmp_path):
    (tmp_path / "data").mkdir()
    reads = "".join(f">g{i}\n{'ACGT' * 300}\n" for i in range(12))
    (tmp_path / "data" / "reads.fasta").write_text(reads)
    (tmp_path / "data" / "labels.csv").write_text("id,label\n" + "".join(f"g{i},{'XY'[i % 2]}\n" for i in range(12)))
    data = build("metagene-classification", tmp_path, "data.path=reads.fasta", "data.options.labels=labels.csv",
                 "data.maxSequenceLength=32")
    assert max(data.lengths) <= 32  # truncated to the model's budget, never passed on too long
    assert data.split_mapping["classes"] == ["X", "Y"]


def test_metagene_label_file_errors_name_the_line_a_person_sees(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "reads.fasta").write_text(">g1\nACGT\n>g2\nGGCC\n")
    (tmp_path / "data" / "labels.csv").write_text('id,label\n\ng1,"X\nY"\n\ng2,\n')
    with pytest.raises(DataError, match=r"labels\.csv:6: empty id or label"):
        build("metagene-classification", tmp_path, "data.path=reads.fasta", "data.options.labels=labels.csv")
    (tmp_path / "data" / "labels.csv").write_text("id,label\n")
    with pytest.raises(DataError, match=r"labels\.csv: no labels below the header"):
        build("metagene-classification", tmp_path, "data.path=reads.fasta", "data.options.labels=labels.csv")


def test_metagene_eval_label_unknown_to_training_is_an_error(tmp_path):
    folder = tmp_path / "data" / "reads"
    folder.mkdir(parents=True)
    (folder / "train.fasta").write_text(">a label=A\nACGT\n>b label=B\nGGCC\n")
    (folder / "val.fasta").write_text(">c label=C\nACGT\n")
    with pytest.raises(DataError, match="read 'c' has label 'C', not among the training labels"):
        build("metagene-classification", tmp_path)


def write_split_files(folder, *names):
    folder.mkdir(parents=True)
    (folder / "train.fasta").write_text(">a label=A\nACGT\n>b label=B\nGGCC\n")
    for name in names:
        stem = name.split(".")[0]
        (folder / name).write_text(f">{stem}-1 label=A\nACGT\n>{stem}-2 label=B\nGGCC\n")


def test_metagene_evaluates_on_val_not_test_when_both_exist(tmp_path, caplog):
    write_split_files(tmp_path / "data" / "reads", "test.fasta", "val.fasta", "eval.fasta")
    with caplog.at_level(logging.WARNING):
        data = build("metagene-classification", tmp_path)
    assert data.split_mapping["eval_ids"] == ["val-1", "val-2"]
    assert "test.fasta" not in caplog.text


def test_metagene_evaluates_on_test_only_when_nothing_else_exists_and_says_so(tmp_path, caplog):
    write_split_files(tmp_path / "data" / "reads", "test.fasta")
    with caplog.at_level(logging.WARNING):
        data = build("metagene-classification", tmp_path)
    assert data.split_mapping["eval_ids"] == ["test-1", "test-2"]
    assert "test.fasta" in caplog.text


# -- PTM-Mamba ------------------------------------------------------------------------------


def write_csv(path, rows, header="unique_id,ptm_seq"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(f"{a},{b}\n" for a, b in rows))


@pytest.mark.parametrize("rows, message", [
    ([("p1", "MKL"), ("p2", "MKJL")], r"mamba.csv:3 \(id 'p2'\): unknown token 'J' at position 3"),
    ([("p1", "MKL"), ("p2", "MK<Phosphofoo>L")], r"mamba.csv:3 \(id 'p2'\): unknown token '<Phosphofoo>'"),
    ([("p1", "MKL"), ("p2", "")], r"mamba.csv:3 \(id 'p2'\): empty sequence"),
    ([("p1", "MKL"), ("p1", "MKL")], r"mamba.csv:3 \(id 'p1'\): duplicate unique_id"),
])
def test_ptm_mamba_bad_rows_are_named(tmp_path, rows, message):
    write_csv(tmp_path / "data" / "mamba.csv", rows)
    with pytest.raises(DataError, match=message):
        build("ptm-mamba", tmp_path)


def test_ptm_mamba_names_the_line_of_a_bad_row_after_a_quoted_field_over_two_lines(tmp_path):
    path = tmp_path / "data" / "mamba.csv"
    path.parent.mkdir(parents=True)
    path.write_text('unique_id,ptm_seq,note\np1,MKL,"a note\nover two lines"\np2,MKJL,\n')
    with pytest.raises(DataError, match=r"mamba.csv:4 \(id 'p2'\): unknown token 'J'"):
        build("ptm-mamba", tmp_path)


def test_ptm_mamba_missing_column_and_too_long(tmp_path):
    write_csv(tmp_path / "data" / "mamba.csv", [("p1", "MKL")], header="unique_id,sequence")
    with pytest.raises(DataError, match="no column 'ptm_seq'"):
        build("ptm-mamba", tmp_path)
    write_csv(tmp_path / "data" / "mamba.csv",  # distinct sequences: a repeated one is kept once, as the reference
              [(f"p{i}", "MK" * (5 + 40 * (i == 3)) + "A" * i * (i != 3)) for i in range(10)])
    data = build("ptm-mamba", tmp_path, "data.options.valSize=2", "data.options.testSize=2",
                 "data.maxSequenceLength=64")
    assert data.split_mapping["sizes"] == {"train": 5, "val": 2, "test": 2}  # the 90-residue one skipped
    with pytest.raises(DataError, match=r"mamba.csv:5 \(id 'p3'\): 90 residues, more than the 62 allowed"):
        build("ptm-mamba", tmp_path, "data.options.valSize=2", "data.options.testSize=2",
              "data.maxSequenceLength=64", "data.options.tooLong=error")


def test_ptm_mamba_split_is_by_sizes_and_seed(tmp_path):
    write_csv(tmp_path / "data" / "mamba.csv", [(f"p{i}", "MKL" + "A" * i) for i in range(50)])
    a = build("ptm-mamba", tmp_path, "data.options.valSize=5", "data.options.testSize=3")
    b = build("ptm-mamba", tmp_path, "data.options.valSize=5", "data.options.testSize=3")
    c = build("ptm-mamba", tmp_path, "data.options.valSize=5", "data.options.testSize=3", "data.options.splitSeed=7")
    assert a.split_mapping["splits"] == b.split_mapping["splits"] != c.split_mapping["splits"]
    assert a.split_mapping["sizes"] == {"train": 42, "val": 5, "test": 3}


def test_ptm_mamba_incomplete_precomputed_embeddings_name_the_missing_file_and_the_precompute_command(tmp_path):
    from helixrun_trainer.recipes.ptm_mamba import PTMMambaRecipe, embeddings

    write_csv(tmp_path / "data" / "mamba.csv", [(f"p{i}", "MKL" + "A" * i) for i in range(10)])
    emb = tmp_path / "emb"
    sets = ("data.options.valSize=2", "data.options.testSize=2", "model.options.esmEmbeddings=precomputed",
            f"data.options.embeddingsDir={emb}")
    with pytest.raises(DataError, match=r"train_embeddings\.done\.\* is missing; run `helixrun-train precompute "
                                        r"ptm-mamba`"):
        build("ptm-mamba", tmp_path, *sets)
    model = PTMMambaRecipe().build_model(tiny_config("ptm-mamba", tmp_path), tiny=True)
    embeddings.precompute_split(model, [("p0", "MKL")], emb, "train", rank=0, world=2)  # rank 1 never finished
    with pytest.raises(DataError, match=r"train_embeddings\.done\.1of2 is missing; run `helixrun-train precompute"):
        build("ptm-mamba", tmp_path, *sets)


# -- StructDiff -----------------------------------------------------------------------------


def test_structdiff_bad_peptides_are_named_or_counted(tmp_path, caplog):
    path = tmp_path / "data" / "peptides.csv"
    path.parent.mkdir(parents=True)
    path.write_text("sequence\nGIGKFLKK\nGIGBXK\n")
    with pytest.raises(DataError, match=r"peptides.csv:3: non-standard residues 'BX'"):
        build("structdiff", tmp_path)
    path.write_text("seq\nGIGK\n")
    with pytest.raises(DataError, match="no column 'sequence'"):
        build("structdiff", tmp_path)


def test_structdiff_without_cached_structures_and_gpu_says_how_to_fix(tmp_path):
    path = tmp_path / "data" / "peptides.csv"
    path.parent.mkdir(parents=True)
    path.write_text("sequence\nGIGKFLKK\n" + "K" * 60 + "\n")
    with pytest.raises(RuntimeError, match="need ESMFold structures and there is no GPU"):
        build("structdiff", tmp_path)


def test_structdiff_reads_structures_from_the_cache_only(tmp_path):
    from helixrun_trainer.recipes.structdiff.structure import StructureCache, fake_features

    path = tmp_path / "data" / "peptides.csv"
    path.parent.mkdir(parents=True)
    peptides = [f"GIGK{'L' * i}K" for i in range(12)]
    path.write_text("sequence\n" + "\n".join(peptides) + "\n" + "K" * 60 + "\n")  # the 60-mer is skipped (> 50)
    cache = StructureCache(tmp_path / "cache" / "structdiff-structures")
    for p in peptides:
        cache.put(p, fake_features(p))
    data = build("structdiff", tmp_path)
    assert len(data.train) + len(data.eval or []) == 12
    batch = data.collate(data.train[:2], None)
    assert batch["structure"].shape[:2] == batch["input_ids"].shape


# -- GeneChat -------------------------------------------------------------------------------


def genechat_split(root, seqs, qa):
    (root / "train").mkdir(parents=True)
    (root / "train" / "seq.json").write_text(json.dumps(seqs))
    (root / "train" / "qa_summary_rule.json").write_text(json.dumps(qa))


@pytest.mark.parametrize("seqs, qa, message", [
    ({"1": ["ACGT"]}, [{"Gene Id": "2", "Summary": "x"}], r"item 0 \(gene '2'\) has no sequence in seq.json"),
    ({"1": ["ACXT"]}, [{"Gene Id": "1", "Summary": "x"}], r"item 0 \(gene '1'\) has a sequence with letters outside"),
    ({"1": ["ACGT"]}, [{"Gene Id": "1", "Summary": ""}], r"item 0 \(gene '1'\) has an empty answer"),
])
def test_genechat_bad_genes_are_named(tmp_path, seqs, qa, message):
    genechat_split(tmp_path / "data" / "ncbi", seqs, qa)
    with pytest.raises(DataError, match=message):
        _genechat_data(tmp_path)


def _genechat_data(tmp_path, *sets):
    from helixrun_trainer.recipes.genechat import read_split

    opts = dict(s.split("=", 1) for s in sets)
    return read_split(tmp_path / "data" / "ncbi" / "train", opts.get("onError", "raise"))


def test_genechat_skips_and_counts_bad_genes_on_request(tmp_path, caplog):
    genechat_split(tmp_path / "data" / "ncbi", {"1": ["ACGT"], "2": ["ACXT"]},
                   [{"Gene Id": "1", "Summary": "a kinase"}, {"Gene Id": "2", "Summary": "b"},
                    {"Gene Id": "3", "Summary": "c"}])
    with caplog.at_level(logging.WARNING):
        items = _genechat_data(tmp_path, "onError=skip")
    assert [i.gene_id for i in items] == ["1"] and "skipped 2 QA items" in caplog.text


def test_genechat_missing_split_points_at_prepare(tmp_path):
    from helixrun_trainer.recipes.genechat import read_split

    with pytest.raises(DataError, match="run `helixrun-train prepare genechat`"):
        read_split(tmp_path / "nowhere" / "train", "raise")
