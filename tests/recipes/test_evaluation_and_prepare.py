"""Metrics as the papers compute them, and GeneChat's data preparation from NCBI-style inputs."""

from __future__ import annotations

import gzip
import json
import math
import warnings

import numpy as np
import pytest

from helixrun_trainer.evaluation.classification import classification_scores, scalar_scores
from helixrun_trainer.evaluation.text import BLEU_WEIGHTS, bleu, meteor, wordnet

from tests.debian import require


def test_bleu_is_the_mean_of_unsmoothed_per_sentence_nltk_bleu():
    from nltk.translate.bleu_score import sentence_bleu

    hyps = ["this gene encodes a protein kinase involved in the cell cycle", "a b c", ""]
    refs = ["this gene encodes a kinase that is involved in the cell cycle", "a b c d", "x y"]
    got = bleu(hyps, refs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, weights in BLEU_WEIGHTS.items():
            per = [sentence_bleu([r.split()], h.split(), weights=weights) if h else 0.0 for h, r in zip(hyps, refs)]
            assert math.isclose(got[name], sum(per) / len(per)), name
    assert got["bleu1"] > got["bleu4"]
    assert bleu(["Same words here"], ["same words here"])["bleu1"] < 1.0, "BLEU must be case-sensitive"
    same = "the same five words here"
    assert bleu([same], [same])["bleu4"] == pytest.approx(1.0)


def test_meteor_uses_wordnet_synonyms(monkeypatch):
    monkeypatch.setenv("HELIXRUN_WORDNET_DIR", require("wordnet"))  # the WordNet `make demo` hands the trainer
    wordnet.cache_clear()  # a reader an earlier test cached may be another WordNet
    exact = meteor(["the dog runs fast"], ["the dog runs fast"])
    synonym = meteor(["the hound runs fast"], ["the dog runs fast"])  # hound ~ dog in WordNet
    other = meteor(["the cow runs fast"], ["the dog runs fast"])
    assert exact == synonym > other, (exact, synonym, other)
    assert wordnet().get_version() == "3.0"


def test_classification_scores_match_scikit_learn():
    from sklearn.metrics import f1_score, matthews_corrcoef, roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    probs = rng.dirichlet([1, 1, 1], 60)
    probs[np.arange(60), labels] += 0.5
    probs /= probs.sum(1, keepdims=True)
    scores = classification_scores(labels, probs, ["a", "b", "c"])
    pred = probs.argmax(1)
    assert scores["macro_f1"] == pytest.approx(f1_score(labels, pred, average="macro"))
    assert scores["mcc"] == pytest.approx(matthews_corrcoef(labels, pred))
    assert scores["auroc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"))
    assert np.array(scores["confusion_matrix"]["counts"]).sum() == 60
    assert set(scalar_scores(scores)) == {"accuracy", "macro_f1", "mcc", "auroc"}


def test_auroc_only_for_few_classes_all_present():
    probs = np.full((4, 12), 1 / 12)
    assert "auroc" not in classification_scores([0, 1, 2, 3], probs, [str(i) for i in range(12)])
    probs = np.array([[0.9, 0.1], [0.8, 0.2]])
    assert "auroc" not in classification_scores([0, 0], probs, ["x", "y"]), "AUROC is undefined with one class present"


# -- GeneChat prepare -----------------------------------------------------------------------

GENE_INFO_HEADER = ("#tax_id\tGeneID\tSymbol\tLocusTag\tSynonyms\tdbXrefs\tchromosome\tmap_location\tdescription\t"
                    "type_of_gene\tSymbol_from_nomenclature_authority\tFull_name_from_nomenclature_authority\t"
                    "Nomenclature_status\tOther_designations\tModification_date\tFeature_type\n")


def ncbi_inputs(tmp_path, n=60):
    rows = "".join(f"9606\t{g}\tGENE{g}\t-\t-\t-\t1\t1p1\tgene {g}\tprotein-coding\tGENE{g}\tgene number {g}\tO\t-\t"
                   f"20240101\t-\n" for g in range(1, n + 1))
    info = tmp_path / "Homo_sapiens.gene_info.gz"
    info.write_bytes(gzip.compress((GENE_INFO_HEADER + rows).encode()))
    summaries = tmp_path / "summaries.tsv"
    summaries.write_text("GeneID\tSummary\n" + "".join(
        f"{g}\t{'' if g == 5 else f'This gene encodes protein {g}.'}\n" for g in range(1, n + 1)))
    seqs = {str(g): ["ACGT" * 30] for g in range(1, n + 1) if g != 7}
    seqs["9"] = ["ACGTXX"]
    seq_path = tmp_path / "seq.json"
    seq_path.write_text(json.dumps(seqs))
    return info, summaries, seq_path


def test_prepare_builds_recorded_deterministic_splits(tmp_path):
    from helixrun_trainer.recipes.genechat import read_split
    from helixrun_trainer.recipes.genechat.__main__ import main

    info, summaries, seqs = ncbi_inputs(tmp_path)
    out = tmp_path / "out"
    args = ["prepare", "--gene-info", str(info), "--summaries", str(summaries), "--sequences", str(seqs),
            "--out", str(out), "--test-size", "5", "--val-size", "4"]
    assert main(args) == 0
    mapping = json.loads((out / "split_mapping.json").read_text())
    assert mapping["sizes"] == {"test": 5, "val": 4, "train": 48}
    assert mapping["skipped"] == {"no-summary": 1, "no-sequence": 1, "invalid-sequence": 1}
    assert {"5", "7", "9"}.isdisjoint(mapping["genes"])
    train = read_split(out / "train", "raise")
    summary = [i for i in train if i.kind == "summary"]
    assert len(summary) == 48 and all(i.question is None for i in summary), "summary questions are drawn per sample"
    # organism (from the file name), locus type, chromosome, symbol, full name; no exon counts were given
    assert len(train) - len(summary) == 5 * 48
    qa = json.loads((out / "train" / "qa_summary_rule.json").read_text())
    assert qa[0]["Name"].startswith("GENE")
    again = tmp_path / "again"
    assert main([*args[:-5], str(again), "--test-size", "5", "--val-size", "4"]) == 0
    assert json.loads((again / "split_mapping.json").read_text())["genes"] == mapping["genes"]


def test_prepare_smoke_preset_keeps_100_genes(tmp_path):
    from helixrun_trainer.recipes.genechat.__main__ import main

    info, summaries, seqs = ncbi_inputs(tmp_path, n=150)
    assert main(["prepare", "--gene-info", str(info), "--summaries", str(summaries), "--sequences", str(seqs),
                 "--out", str(tmp_path / "smoke"), "--preset", "smoke"]) == 0
    sizes = json.loads((tmp_path / "smoke" / "split_mapping.json").read_text())["sizes"]
    assert sum(sizes.values()) == 100


def test_prepare_names_a_bad_input(tmp_path, capsys):
    from helixrun_trainer.recipes.genechat.__main__ import main

    bad = tmp_path / "gene_info"
    bad.write_text("not a header\n")
    info, summaries, seqs = ncbi_inputs(tmp_path)
    assert main(["prepare", "--gene-info", str(bad), "--summaries", str(summaries), "--sequences", str(seqs),
                 "--out", str(tmp_path / "o")]) == 2
    assert "gene_info:1: not an NCBI gene_info header" in capsys.readouterr().err
