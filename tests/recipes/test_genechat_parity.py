"""GeneChat against its reference, fact by fact, and proof that `make demo` learns (the recipe's overfit test
is in test_learning.py).

Reference: the public GeneChat repository (Shashi-Sekar/GeneChat head = fdkevin0/GeneChat@1703458). The
strings below are quoted from it on purpose: a test that read them from the recipe could not catch a wrong
prompt. Files: datasets/datasets/seq_dataset.py (questions, training prompt), models/genechat.py (how the
prompt is tokenised, windows, loss), common/conversation.py + inference_all.py (evaluation prompt and
generate arguments), configs/genechat_stage1.yaml + runners/runner_iter.py + tasks/base_task.py +
common/optims.py (schedule), eval.py (BLEU)."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from tests.recipes.conftest import REPO, metrics, tiny_config
from tests.recipes.test_evaluation_and_prepare import GENE_INFO_HEADER
from tests.trainer.harness import trainer_env

SUMMARY_QUESTIONS = ["Tell me about this gene.", "Please provide a detailed description of the gene."]
KEYWORD_QUESTIONS = [
    "Which organism does the gene belong to?",
    "What is the locus type of the gene?",
    "On which chromosome is the gene located?",
    "How many exons does the gene contain?",
    "What is the official symbol of the gene?",
    "What is the official full name of the gene?",
]
KEYWORD_SUFFIX = " Limit your answer to one or two words."
CHAT_HEAD = "Give the following gene: <gene>geneContent</gene>. Please answer my questions.###Human: <gene>"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny recipe as `--tiny` builds it (example settings: LoRA, frozen adapter), data and model."""
    from helixrun_trainer.recipes.genechat import GeneChatRecipe

    workdir = tmp_path_factory.mktemp("genechat")
    cfg = tiny_config("genechat", workdir)
    recipe = GeneChatRecipe()
    data = recipe.build_data(cfg, True, Path(cfg.paths.data))
    torch.manual_seed(0)
    model = recipe.build_model(cfg, True)
    return recipe, data, model


def text_runs(recipe, ids: list[int], gene: list[bool]) -> list[list[int]]:
    """The token ids between gene vectors: [before the gene, after it]."""
    first, last = gene.index(True), len(gene) - 1 - gene[::-1].index(True)
    assert all(gene[first:last + 1]), "the gene's vectors are not contiguous"
    return [ids[:first], ids[last + 1:]]


def decode(recipe, ids: list[int]) -> str:
    return recipe.text_tokenizer.decode(ids)


# -- prompts and generation ---------------------------------------------------------------------


def test_evaluation_asks_the_reference_chat_prompt_with_its_beam_search(tiny):
    """A stub around the tiny LLM's generate records what GeneChat's evaluation passes it."""
    from helixrun_trainer.recipes.genechat import gene_windows, protocol
    from helixrun_trainer.recipes.genechat.__main__ import answer

    recipe, data, model = tiny
    item = replace(next(i for i in data.eval if i.kind == "summary"), question=SUMMARY_QUESTIONS[0])
    calls = []
    real_generate = model.llm.generate

    def recording(**kwargs):
        calls.append(kwargs)
        return real_generate(**{**kwargs, "max_new_tokens": 2})

    model.llm.generate = recording
    try:
        answer(model, recipe, torch.device("cpu"), [item], protocol.PAPER_GENERATION, batch_size=1)
    finally:
        del model.llm.generate
    (kwargs,) = calls
    got = {k: kwargs.get(k) for k in ("num_beams", "repetition_penalty", "length_penalty", "min_length",
                                      "max_new_tokens", "do_sample", "stop_strings")}
    assert got == {"num_beams": 4, "repetition_penalty": 1.9, "length_penalty": 1.0, "min_length": 1,
                   "max_new_tokens": 512, "do_sample": False, "stop_strings": ["###"]}, got
    assert kwargs["tokenizer"] is recipe.text_tokenizer, "stop_strings needs the tokenizer to find ### in text"

    # The prompt, read back from the embeddings generate received: rows equal to a token's embedding are text.
    embeds, table = kwargs["inputs_embeds"][0], model.llm.get_input_embeddings().weight
    ids = [next((t for t in range(table.shape[0]) if torch.equal(row, table[t])), -1) for row in embeds]
    gene = [i == -1 for i in ids]
    assert sum(gene) == len(gene_windows(item.sequence, 64, 10, 313)), "one vector per window of the gene"
    head, tail = text_runs(recipe, ids, gene)
    bos = recipe.text_tokenizer.bos_token_id
    assert head[0] == bos and bos not in head[1:] + tail, "one <s>, at the start, as Chat.get_context_emb adds"
    assert decode(recipe, head[1:]) == CHAT_HEAD
    assert decode(recipe, tail) == "</gene> Tell me about this gene. ###Assistant:"


def test_training_prompt_is_the_references_for_summary_and_keyword_qa(tiny):
    from helixrun_trainer.recipes.genechat import QA

    recipe, data, _ = tiny
    summary = next(i for i in data.train if i.kind == "summary")
    keyword = QA(summary.gene_id, summary.sequence, "keyword", "KIN1", KEYWORD_QUESTIONS[4] + KEYWORD_SUFFIX)
    batch = data.collate([summary, keyword], torch.Generator().manual_seed(0))
    bos = recipe.text_tokenizer.bos_token_id
    for row, (tag, question, answer) in enumerate([
            (":wq", batch["questions"][0], summary.answer),
            (summary.gene_id, KEYWORD_QUESTIONS[4] + KEYWORD_SUFFIX, "KIN1")]):
        ids = batch["input_ids"][row][batch["attention_mask"][row] == 1].tolist()
        gene = (batch["gene_slot"][row][batch["attention_mask"][row] == 1] >= 0).tolist()
        head, rest = text_runs(recipe, ids, gene)
        labels = batch["labels"][row][batch["attention_mask"][row] == 1]
        answer_ids = labels[labels != -100].tolist()
        tail = rest[:len(rest) - len(answer_ids)]
        # <s> "###Human: <gene>{tag}" genes <s> "</gene> {question} ###Assistant:" "{answer}###"
        assert head[0] == bos and decode(recipe, head[1:]) == f"###Human: <gene>{tag}"
        assert tail[0] == bos and decode(recipe, tail[1:]) == f"</gene> {question} ###Assistant:"
        assert rest[len(tail):] == answer_ids and decode(recipe, answer_ids) == answer + "###", "loss on answer+### only"
    asked = {data.collate([summary], torch.Generator().manual_seed(s))["questions"][0] for s in range(40)}
    assert asked == set(SUMMARY_QUESTIONS), f"summary QA draws from the reference's two questions, got {asked}"


# -- schedule --------------------------------------------------------------------------------------


def reference_lr(iteration: int, iters_per_data_epoch: int = 94_550) -> float:
    """The LR LAVIS's linear_warmup_cosine_lr sets before `iteration` under runner_iter with
    genechat_stage1.yaml: inner epochs of 5,000 iterations, lr_scheduler.step(inner_epoch, i), warmup 2,500
    from 1e-6, cosine to 1e-6 over max_epoch (2,000,000 / 5,000 = 400) x iters_per_epoch, where
    iters_per_epoch is the training loader's length (any large value: it only shifts within an inner epoch)."""
    inner_epoch, i = divmod(iteration, 5000)
    total = inner_epoch * iters_per_data_epoch + i
    if total < 2500:
        return min(1e-4, 1e-6 + (1e-4 - 1e-6) * i / 2500)
    return (1e-4 - 1e-6) * 0.5 * (1 + math.cos(math.pi * total / (400 * iters_per_data_epoch))) + 1e-6


@pytest.mark.parametrize("step", [0, 1, 100, 312, 624, 625, 1250, 10_000, 21_250, 33_333, 42_499])
def test_example_learning_rate_is_the_references_at_named_steps(step, tmp_path):
    """Optimizer step k of the published run is the update after iterations 4k..4k+3: it uses the LR set
    for iteration 4k+3. Ours stays within 0.1% of the peak (1e-7) of it at every named step."""
    from helixrun_trainer.cli import resolve_local
    from helixrun_trainer.optim import lr_at, schedule_kwargs

    cfg = resolve_local(yaml.safe_load((REPO / "examples" / "run-genechat.yaml").read_text()), tmp_path)
    training = cfg.typed_spec.training
    assert training.max_steps * training.global_batch.samples == 170_000, "the published run: 170k samples"
    ours = lr_at(step, **schedule_kwargs(training, training.max_steps))
    assert ours == pytest.approx(reference_lr(4 * step + 3), abs=1e-7)


def test_example_learning_rate_ends_nearly_constant(tmp_path):
    from helixrun_trainer.cli import resolve_local
    from helixrun_trainer.optim import lr_at, schedule_kwargs

    cfg = resolve_local(yaml.safe_load((REPO / "examples" / "run-genechat.yaml").read_text()), tmp_path)
    training = cfg.typed_spec.training
    kwargs = schedule_kwargs(training, training.max_steps)
    last = lr_at(training.max_steps - 1, **kwargs)
    assert 9.8e-5 < last < 9.9e-5, f"the reference ends at 9.83e-5 (cosine 8.5% into its 2M iterations), got {last}"
    assert training.gradient_clip in (None, 0), "the reference does not clip gradients"


# -- data ------------------------------------------------------------------------------------------

def test_prepare_writes_the_references_keyword_questions_beside_each_summary(tmp_path):
    from helixrun_trainer.recipes.genechat import read_split
    from helixrun_trainer.recipes.genechat.__main__ import main

    n = 30
    info = tmp_path / "all.gene_info.gz"
    info.write_bytes(gzip.compress((GENE_INFO_HEADER + "".join(
        f"9606\t{g}\tG{g}\t-\t-\t-\t{g % 22 + 1}\t-\tdesc {g}\tprotein-coding\tGENE{g}\tgene number {g}\tO\t-\t-\t-\n"
        for g in range(1, n + 1))).encode()))
    names = tmp_path / "names.dmp"
    names.write_text("9606\t|\tHomo sapiens\t|\t\t|\tscientific name\t|\n9606\t|\thuman\t|\t\t|\tgenbank common name\t|\n")
    exons = tmp_path / "exons.tsv"
    exons.write_text("GeneID\texons\n" + "".join(f"{g}\t{g + 3}\n" for g in range(1, n + 1)))
    summaries = tmp_path / "summaries.tsv"
    summaries.write_text("GeneID\tSummary\n" + "".join(f"{g}\tThis gene encodes protein {g}.\n" for g in range(1, n + 1)))
    seqs = tmp_path / "seq.json"
    seqs.write_text(json.dumps({str(g): ["ACGT" * 20] for g in range(1, n + 1)}))
    out = tmp_path / "out"
    assert main(["prepare", "--gene-info", str(info), "--summaries", str(summaries), "--sequences", str(seqs),
                 "--taxonomy", str(names), "--exon-counts", str(exons), "--out", str(out),
                 "--test-size", "5", "--val-size", "5"]) == 0

    kw = json.loads((out / "train" / "qa_kw.json").read_text())
    by_gene: dict[str, dict[str, str]] = {}
    for item in kw:
        by_gene.setdefault(item["Gene Id"], {})[item["Q"]] = item["A"]
    assert len(by_gene) == 20 and all(list(qa) == KEYWORD_QUESTIONS for qa in by_gene.values())
    g = int(min(by_gene))
    assert by_gene[str(g)] == dict(zip(KEYWORD_QUESTIONS, ["Homo sapiens", "protein-coding", str(g % 22 + 1),
                                                           str(g + 3), f"GENE{g}", f"gene number {g}"]))
    samples = read_split(out / "train", "raise")
    summary = [s for s in samples if s.kind == "summary"]
    keyword = [s for s in samples if s.kind == "keyword"]
    # seq_dataset.py's rates {kw: 1, rule: 1}: every keyword and every summary QA is one sample per epoch.
    assert len(summary) == 20 and len(keyword) == 6 * 20
    assert {s.question for s in keyword} == {q + KEYWORD_SUFFIX for q in KEYWORD_QUESTIONS}
    assert all(s.question is None for s in summary), "a summary QA's question is drawn per sample"
    assert json.loads((out / "split_mapping.json").read_text())["qa"]["train"] == {"summary": 20, "keyword": 120}


def test_keyword_qa_with_a_question_outside_the_references_is_named(tmp_path):
    from helixrun_trainer.errors import DataError
    from helixrun_trainer.recipes.genechat import read_split

    split = tmp_path / "train"
    split.mkdir()
    (split / "seq.json").write_text(json.dumps({"1": ["ACGT"]}))
    (split / "qa_summary_rule.json").write_text(json.dumps([{"Gene Id": "1", "Summary": "a kinase"}]))
    (split / "qa_kw.json").write_text(json.dumps([{"Gene Id": "1", "Q": KEYWORD_QUESTIONS[0], "A": "Homo sapiens"},
                                                  {"Gene Id": "1", "Q": "What does it do?", "A": "kinase"}]))
    with pytest.raises(DataError, match=r"qa_kw.json: item 1 \(gene '1'\) asks 'What does it do\?'"):
        read_split(split, "raise")


@pytest.mark.parametrize("length", [1, 511, 512, 513, 1034, 1035, 160_000, 160_001, 200_000])
def test_windows_start_every_512_nt_and_reach_10_back_as_the_reference(length):
    from helixrun_trainer.recipes.genechat import gene_windows

    sequence = "".join("ACGT"[(i * 7 + i // 3) % 4] for i in range(length))
    kept = sequence if length <= 160_000 else sequence[:159_999]  # seq_dataset.py's cut
    want = [kept[max(0, start - 10):start + 512] for start in range(0, len(kept), 512)]  # encode_gene's windows
    assert gene_windows(sequence, 512, 10, 313) == want
    assert len(want) <= 313


# -- objective and model -------------------------------------------------------------------------


def test_loss_is_the_mean_of_per_sample_means(tiny):
    """The reference trains batch 1 with the LLM's token mean; accumulation adds samples, each weighing the
    same whatever its answer length. Batching here must keep that weighting."""
    recipe, data, model = tiny
    long = next(i for i in data.train if i.kind == "summary")
    short = next(i for i in data.train if i.kind == "keyword")
    gen = torch.Generator().manual_seed(0)
    model.eval()
    with torch.no_grad():
        both = recipe.compute_loss(model, data.collate([long, short], gen), gen)
        alone = [recipe.compute_loss(model, data.collate([s], torch.Generator().manual_seed(0)), gen)
                 for s in (long, short)]
        batch = data.collate([long, short], torch.Generator().manual_seed(0))
    model.train()
    assert both.loss_units == 2 and both.num_samples == 2
    assert float(both.loss) == pytest.approx(sum(float(a.loss) for a in alone) / 2, abs=1e-5)
    tokens = [int((batch["labels"][r, 1:] != -100).sum()) for r in range(2)]
    assert tokens[0] != tokens[1], "the test needs answers of different lengths"
    token_mean = sum(float(a.loss) * n for a, n in zip(alone, tokens)) / sum(tokens)
    assert abs(float(both.loss) - token_mean) > 1e-3, "a token-weighted mean would weigh long answers more"


def test_adapter_is_frozen_as_the_released_configs_and_trains_on_request(tiny, tmp_path):
    from helixrun import recipes

    from helixrun_trainer.recipes.genechat import GeneChatRecipe

    recipe, _, model = tiny
    assert recipes.with_defaults({"recipe": "genechat"})["model"]["options"]["trainAdapter"] is False
    assert not model.adapter.weight.requires_grad, "genechat_stage1.yaml: freeze_adaptor True"
    state = recipe.trainable_state(model)
    assert {"adapter.weight", "adapter.bias"} <= set(state), "the frozen random adapter is saved: no hub holds it"
    assert any("lora_A" in k for k in state) and not any("encoder." in k for k in state)
    cfg = tiny_config("genechat", tmp_path, "model.options.trainAdapter=true")
    other = GeneChatRecipe()
    other.build_data(cfg, True, Path(cfg.paths.data))
    assert other.build_model(cfg, True).adapter.weight.requires_grad


# -- evaluation ----------------------------------------------------------------------------------


def test_bleu_is_eval_py_sentence_bleu_with_all_four_weights_at_once():
    from nltk.translate.bleu_score import sentence_bleu

    from helixrun_trainer.evaluation.text import bleu

    hyps = ["This gene encodes a kinase in the cell cycle .", "kinase", "", "a b c d e"]
    refs = ["This gene encodes a kinase that acts in the cell cycle .", "kinase activity", "x", "a b c d e"]
    weights = [(1.0, 0, 0, 0), (1 / 2, 1 / 2, 0, 0), (1 / 3, 1 / 3, 1 / 3, 0), (1 / 4, 1 / 4, 1 / 4, 1 / 4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per = [sentence_bleu([r.split()], h.split(), weights) for h, r in zip(hyps, refs)]
    got = bleu(hyps, refs)
    for n in range(4):
        assert got[f"bleu{n + 1}"] == pytest.approx(sum(p[n] for p in per) / len(per)), n


def test_predict_split_scores_with_its_settings_recorded(tiny, tmp_path, monkeypatch):
    """The paper-comparable evaluation is one command; its scores sit beside the settings that made them."""
    from tests.debian import require

    from helixrun_trainer.recipes.genechat import FAMILIES, tiny_genes
    from helixrun_trainer.recipes.genechat.__main__ import main

    recipe, data, model = tiny
    monkeypatch.setenv("HELIXRUN_WORDNET_DIR", require("wordnet"))
    export = tmp_path / "final"
    recipe.export(model, tiny_config("genechat", tmp_path), export)
    split = tmp_path / "test"
    split.mkdir()
    genes = tiny_genes(42)[40:43]
    (split / "seq.json").write_text(json.dumps({g: [s] for g, s, _ in genes}))
    (split / "qa_summary_rule.json").write_text(json.dumps([{"Gene Id": g, "Summary": FAMILIES[f][1]}
                                                            for g, _, f in genes]))
    out = tmp_path / "scores"
    assert main(["predict", "--model", str(export), "--split", str(split), "--output", str(out),
                 "--max-new-tokens", "3"]) == 0
    record = json.loads((out / "scores.json").read_text())
    assert set(record["scores"]) == {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "genes"}
    assert record["scores"]["genes"] == 3
    assert record["settings"]["generation"] == {"num_beams": 4, "repetition_penalty": 1.9, "length_penalty": 1.0,
                                                "min_length": 1, "max_new_tokens": 3, "do_sample": False,
                                                "stop": "###"}
    assert record["settings"]["prompt"]["head"] == CHAT_HEAD
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["gene_id"] for p in predictions] == [g for g, _, _ in genes]
    assert {p["question"] for p in predictions} <= set(SUMMARY_QUESTIONS)


# -- learning --------------------------------------------------------------------------------------


def demo_command(workdir: Path) -> str:
    """`make demo`'s training command as make would run it, for this workdir."""
    dry = subprocess.run(["make", "-n", "demo", f"RUN_DIR={workdir}"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    (line,) = [line for line in dry.splitlines() if "helixrun-train" in line]
    return line


@pytest.mark.slow
def test_make_demo_learns_its_tiny_genes(tmp_path):
    """The demo's loss falls clearly and its BLEU-4 on held-out genes ends at least halfway from chance to
    perfect. Chance: answering with a random family's description, which shares no word with the others,
    scores 1/4."""
    from helixrun_trainer.evaluation.text import bleu
    from helixrun_trainer.recipes.genechat import FAMILIES

    summaries = [summary for _, summary, _ in FAMILIES]
    chance = sum(bleu([guess], [truth])["bleu4"] for guess in summaries for truth in summaries) / len(summaries) ** 2
    assert chance == pytest.approx(0.25)
    proc = subprocess.run(["bash", "-c", demo_command(tmp_path)], cwd=REPO, env=trainer_env(), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = metrics(tmp_path)
    losses = [r["loss"] for r in records]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.2 * first, f"the demo's loss did not fall clearly: {first:.3f} -> {last:.3f}"
    evals = [r for r in records if "eval_bleu4" in r]
    assert evals[0]["eval_bleu4"] < (chance + 1) / 2 <= evals[-1]["eval_bleu4"], \
        f"BLEU-4 over the demo {[round(r['eval_bleu4'], 3) for r in evals]}, halfway {(chance + 1) / 2}"
    assert "eval_meteor" in evals[-1], "the demo fetches WordNet, so METEOR is reported"
