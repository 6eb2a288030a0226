"""GeneChat: a gene's DNA -> a description of its function.

Faithful to the published GeneChat (protocol.py quotes its prompts and questions; docs/FIDELITY.md compares
every setting), then batched (model.py): frozen DNABERT-2 (model.encoder; remote code with its Triton
flash-attention switched off, so its plain attention runs on any Triton) encodes the gene in windows that
start every options.windowSize nt (512) and reach options.windowOverlap nt (10) back, each mean-pooled; genes
longer than 160,000 nt are cut to 159,999 as the reference cuts them (at most 313 windows; options.maxWindows
lowers that cap). An adapter Linear(768 -> 5120), frozen at its seeded initialisation as in the released
configs (options.trainAdapter: true trains it, as the README describes), projects them into Vicuna-13B-v1.5
(model.name, bf16; 4-bit with qlora), which carries LoRA (r 8, α 16, q/v, dropout 0.05). Training prompt
as the reference's (protocol.py), loss on the answer and its closing ### only, answers capped at
options.maxTextTokens (512) tokens; the loss is each sample's mean over its answer tokens, averaged over
samples (the reference: batch 1, token mean per sample, accumulation sums samples).

Tiny: a 2-layer BertModel (vocab 4096, hidden 64) with a nucleotide BPE tokenizer built locally in
DNABERT-2's special-token layout, a 2-layer LlamaForCausalLM (hidden 64) with a locally trained
SentencePiece-style BPE text tokenizer, windows of data.maxSequenceLength (64) nt. Its data: genes of four
families, each family's motif running through its DNA and its own description and symbol as the answers.

Data (data.format genechat-json; data.path the folder `prepare` writes, see prepare.py): `train/` and `val/`
with `seq.json`, `qa_summary_rule.json` and `qa_kw.json`. Every summary and every keyword QA is one sample
per epoch (the reference's rates 1:1). A summary sample asks one of the two summary questions, drawn per
sample; a keyword sample asks its own question, which must be one of the reference's six. A gene without a
sequence, with non-ACGTN letters, an empty answer or an unknown question: a DataError naming the file and
item (data.options.onError: skip counts and logs them instead). data.options.limitGenes (or preset: smoke =
100) trains on the first N genes: the seed's test mode is that plus training.maxSteps 1000.

Evaluation during training (cheap): loss over the val QA, then generation for up to options.evalGenerate
(64) summary QA with the training prompt (greedy, or options.evalBeams beams; options.maxNewTokens 512),
scored as GeneChat's eval.py: BLEU-1..4 (per-sentence NLTK, no smoothing, averaged) and METEOR (NLTK +
WordNet; evaluation/text.py). The paper-comparable evaluation is `predict --split DATA/test` (__main__.py):
the reference's chat prompt, 4 beams, repetition penalty 1.9, the ### stop. Paper: BLEU-1 0.1937, BLEU-4
0.0816, METEOR 0.2725.

Commands (helixrun-train <command> genechat ...): `prepare` (NCBI inputs -> splits), `predict --model
CHECKPOINTS/final --split DATA/test` (scores, with the settings beside them) or `--fasta gene.fa`.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from helixrun_trainer.errors import DataError
from helixrun_trainer.recipes.adapters import add_lora, base_load_kwargs, method_of
from helixrun_trainer.recipes.base import LossOutput, RecipeBase, RecipeData, resolve_data_path
from helixrun_trainer.recipes.dna_tokenizer import cached_tokenizer
from helixrun_trainer.recipes.genechat import protocol
from helixrun_trainer.recipes.genechat.model import GeneChat

log = logging.getLogger(__name__)

DNA_LETTERS = set("ACGTN")
PRESETS = {"smoke": {"limitGenes": 100}}
GENERATION_INPUTS = ("prompt_ids", "prompt_mask", "prompt_slot", "windows", "window_mask", "window_valid")


@dataclass(frozen=True)
class QA:
    """One training sample: a gene and a question about it. A summary QA's question is drawn when batched."""

    gene_id: str
    sequence: str
    kind: str  # "summary" or "keyword"
    answer: str
    question: str | None = None  # keyword QA: the question with its suffix


# -- windows and samples ------------------------------------------------------------


def gene_windows(sequence: str, size: int, overlap: int, max_windows: int) -> list[str]:
    """The reference's windows: one starting every `size` nt, each but the first reaching `overlap` nt back,
    over the gene cut as the reference cuts it (a gene over 160,000 nt keeps its first 159,999)."""
    if overlap >= size:
        raise ValueError(f"windowOverlap {overlap} must be smaller than windowSize {size}")
    if len(sequence) > protocol.MAX_GENE_LENGTH:
        sequence = sequence[:protocol.MAX_GENE_LENGTH - 1]
    starts = range(0, len(sequence), size)[:max_windows]
    return [sequence[max(0, start - overlap):start + size] for start in starts]


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc


def read_split(folder: Path, on_error: str) -> list[QA]:
    """The QA samples of one split folder (GeneChat's JSON layout): summary QA, then keyword QA."""
    seq_path = folder / "seq.json"
    if not seq_path.is_file():
        raise DataError(f"{seq_path} does not exist (run `helixrun-train prepare genechat`)")
    sequences = _load_json(seq_path)
    manual = folder / "qa_text_manual.json"
    if manual.is_file() and json.loads(manual.read_text() or "[]"):
        raise DataError(f"{manual}: must be empty (GeneChat's builder refuses manual QA too)")
    summary_path = folder / "qa_summary_rule.json"
    if not summary_path.is_file():
        raise DataError(f"{summary_path} does not exist")
    items: list[QA] = []
    skipped = 0
    for path, kind in ((summary_path, "summary"), (folder / "qa_kw.json", "keyword")):
        if not path.is_file():
            continue
        for i, item in enumerate(_load_json(path)):
            gene_id = str(item.get("Gene Id", ""))
            answer = " ".join(str(item.get("Summary" if kind == "summary" else "A") or "").split())
            question = str(item.get("Q") or "")
            seqs = sequences.get(gene_id)
            seq = ((seqs[0] if isinstance(seqs, list) and seqs else seqs if isinstance(seqs, str) else "") or "").upper()
            problem = None
            if not gene_id:
                problem = "has no 'Gene Id'"
            elif not answer:
                problem = "has an empty answer"
            elif kind == "keyword" and question not in protocol.KEYWORD_QUESTIONS:
                problem = f"asks {question!r}, not one of GeneChat's keyword questions {protocol.KEYWORD_QUESTIONS}"
            elif not seq:
                problem = f"has no sequence in {seq_path.name}"
            elif not set(seq) <= DNA_LETTERS:
                bad = "".join(sorted(set(seq) - DNA_LETTERS))[:10]
                problem = f"has a sequence with letters outside ACGTN: {bad!r}"
            if problem:
                if on_error == "skip":
                    skipped += 1
                    continue
                raise DataError(f"{path}: item {i} (gene {gene_id!r}) {problem}")
            items.append(QA(gene_id, seq, kind, answer,
                            protocol.keyword_question(question) if kind == "keyword" else None))
    if skipped:
        log.warning("%s: skipped %d QA items (no sequence, bad letters, unknown question or empty answer)",
                    folder, skipped)
    return items


# Tiny data: four gene families, each with a motif that makes up its DNA, a description and a symbol. The
# descriptions share no words, so answering with a random family's scores BLEU-4 0.25 on average.
FAMILIES = (
    ("ATGAAACGC", "Serine kinase in signaling pathways.", "KIN1"),
    ("GGCCTTAAG", "Glucose transporter across cell membranes.", "GLUT2"),
    ("TTTACGGAT", "Transcription factor regulating embryonic development.", "TFX3"),
    ("CCGATCGTA", "Ribosomal protein binding large subunit.", "RPL4"),
)
TINY_KEYWORD_QUESTION = protocol.KEYWORD_QUESTIONS[4]  # the official symbol: the family's, in one word


def tiny_genes(seed: int, n: int = 56) -> list[tuple[str, str, int]]:
    """(gene_id, sequence, family): the family's motif repeated over a random length (80-220 nt). A random
    tiny encoder tells families apart by such repeats; a random phase or point mutations blur them."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        family = i % len(FAMILIES)
        motif = FAMILIES[family][0]
        length = rng.randint(80, 220)
        out.append((f"{1000 + i}", (motif * (length // len(motif) + 1))[:length], family))
    return out


def tiny_items(genes) -> list[QA]:
    """Per gene its summary QA and its keyword QA (the official symbol), as prepare writes them."""
    out = []
    for gene_id, seq, family in genes:
        _, summary, symbol = FAMILIES[family]
        out.append(QA(gene_id, seq, "summary", summary))
        out.append(QA(gene_id, seq, "keyword", symbol, protocol.keyword_question(TINY_KEYWORD_QUESTION)))
    return out


class Collate:
    """Samples -> the batch GeneChat's forward and generate take (windows padded with a mask).

    prompt "train" lays out the reference's training prompt, "chat" its evaluation prompt (protocol.py);
    a summary sample's question is drawn from the batch's generator, so a resumed run draws the same."""

    def __init__(self, dna_tokenizer, text_tokenizer, window: int, overlap: int, max_windows: int,
                 max_answer_tokens: int, prompt: str = "train"):
        self.dna, self.text = dna_tokenizer, text_tokenizer
        self.window, self.overlap, self.max_windows = window, overlap, max_windows
        self.max_answer = max_answer_tokens
        self.prompt = prompt

    def _ids(self, text: str) -> list[int]:
        return self.text(text, add_special_tokens=False)["input_ids"]

    def question(self, item: QA, generator: torch.Generator | None) -> str:
        if item.question is not None:
            return item.question
        pick = int(torch.randint(len(protocol.SUMMARY_QUESTIONS), (1,), generator=generator)) if generator else 0
        return protocol.SUMMARY_QUESTIONS[pick]

    def prompt_pieces(self, item: QA, question: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the gene vectors (each piece tokenised on its own, as the reference)."""
        bos = self.text.bos_token_id
        if self.prompt == "chat":
            return [bos, *self._ids(protocol.CHAT_HEAD)], self._ids(protocol.TAIL.format(question=question))
        head = self._ids(protocol.train_head(item.kind, item.gene_id))
        return [bos, *head], [bos, *self._ids(protocol.TAIL.format(question=question))]

    def __call__(self, samples: list[QA], generator: torch.Generator | None = None) -> dict[str, Any]:
        pad = self.text.pad_token_id
        windows = [gene_windows(s.sequence, self.window, self.overlap, self.max_windows) for s in samples]
        flat = [w for ws in windows for w in ws]
        enc = self.dna(flat, add_special_tokens=True, padding=True, return_tensors="pt")
        t = enc["input_ids"].shape[1]
        w_max = max(len(ws) for ws in windows)
        b = len(samples)
        win_ids = torch.full((b, w_max, t), self.dna.pad_token_id, dtype=torch.long)
        win_mask = torch.zeros((b, w_max, t), dtype=torch.long)
        valid = torch.zeros((b, w_max), dtype=torch.bool)
        k = 0
        for row, ws in enumerate(windows):
            n = len(ws)
            win_ids[row, :n] = enc["input_ids"][k:k + n]
            win_mask[row, :n] = enc["attention_mask"][k:k + n]
            valid[row, :n] = True
            k += n
        full, prompts, questions = [], [], []
        for item, ws in zip(samples, windows):
            question = self.question(item, generator)
            questions.append(question)
            head, tail = self.prompt_pieces(item, question)
            ans = self._ids(item.answer + protocol.ANSWER_END)[:self.max_answer] if item.answer else []
            prompt = [*head, *([pad] * len(ws)), *tail]
            slots = [-1] * len(head) + list(range(len(ws))) + [-1] * len(tail)
            prompts.append((prompt, slots))
            full.append((prompt + ans, slots + [-1] * len(ans), [-100] * len(prompt) + ans))
        width = max(len(ids) for ids, _, _ in full)
        input_ids = torch.full((b, width), pad, dtype=torch.long)
        attention = torch.zeros((b, width), dtype=torch.long)
        gene_slot = torch.full((b, width), -1, dtype=torch.long)
        labels = torch.full((b, width), -100, dtype=torch.long)
        for row, (ids, slots, lab) in enumerate(full):  # right padding for training
            n = len(ids)
            input_ids[row, :n], attention[row, :n] = torch.tensor(ids), 1
            gene_slot[row, :n], labels[row, :n] = torch.tensor(slots), torch.tensor(lab)
        p_width = max(len(ids) for ids, _ in prompts)
        prompt_ids = torch.full((b, p_width), pad, dtype=torch.long)
        prompt_mask = torch.zeros((b, p_width), dtype=torch.long)
        prompt_slot = torch.full((b, p_width), -1, dtype=torch.long)
        for row, (ids, slots) in enumerate(prompts):  # left padding for generation
            n = len(ids)
            prompt_ids[row, p_width - n:], prompt_mask[row, p_width - n:] = torch.tensor(ids), 1
            prompt_slot[row, p_width - n:] = torch.tensor(slots)
        return {"input_ids": input_ids, "attention_mask": attention, "gene_slot": gene_slot, "labels": labels,
                "windows": win_ids, "window_mask": win_mask, "window_valid": valid,
                "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "prompt_slot": prompt_slot,
                "answers": [s.answer for s in samples], "gene_ids": [s.gene_id for s in samples],
                "kinds": [s.kind for s in samples], "questions": questions}


# -- tokenizers and models -------------------------------------------------------------


def tiny_text_tokenizer(texts: list[str], cache: Path | None):
    """A SentencePiece-style BPE (Metaspace) with Llama's specials <unk> 0, <s> 1, </s> 2; pad = </s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    def train() -> Tokenizer:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        return tok

    tok = cached_tokenizer(cache, train)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")


def tiny_corpus(items: Iterable[QA]) -> list[str]:
    """Every text the tiny tokenizer will see: both prompt layouts, all questions, the answers, the gene ids."""
    items = list(items)
    questions = [*protocol.SUMMARY_QUESTIONS, *(protocol.keyword_question(q) for q in protocol.KEYWORD_QUESTIONS)]
    texts = [protocol.CHAT_HEAD, protocol.train_head("summary", ""), protocol.ANSWER_END]
    texts += [protocol.TAIL.format(question=q) for q in questions]
    texts += [protocol.train_head(i.kind, i.gene_id) for i in items]
    return texts + [i.answer + protocol.ANSWER_END for i in items]


def dnabert2_name(model_spec: dict) -> str:
    return model_spec.get("encoder") or "zhihan1996/DNABERT-2-117M"


def load_dnabert2_tokenizer(name: str, revision: str | None, cache_dir: str | None):
    """DNABERT-2's tokenizer by name, on its own: the data (built before the model) needs it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name, revision=revision, cache_dir=cache_dir, trust_remote_code=True)


def load_dnabert2(name: str, revision: str | None, cache_dir: str | None):
    """DNABERT-2 by name, remote code, with its Triton flash-attention disabled (its plain attention runs)."""
    import sys

    from transformers import AutoModel, BertConfig

    # transformers > 4.28 needs the config passed explicitly (DNABERT-2's README).
    config = BertConfig.from_pretrained(name, revision=revision, cache_dir=cache_dir)
    model = AutoModel.from_pretrained(name, revision=revision, cache_dir=cache_dir, trust_remote_code=True,
                                      config=config)
    # bert_layers.py falls back to plain attention when flash_attn_qkvpacked_func is None; its Triton kernel
    # breaks on current Triton (DNABERT-2 issues #57, #19).
    for module_name, module in list(sys.modules.items()):
        if hasattr(module, "flash_attn_qkvpacked_func") and "bert_layers" in module_name:
            module.flash_attn_qkvpacked_func = None
    return model


def tiny_encoder():
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(vocab_size=4096, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=128, max_position_embeddings=512, pad_token_id=3),
                     add_pooling_layer=False)


def tiny_llm(vocab_size: int):
    """A 2-layer Llama whose random weights have 1/sqrt(hidden) scale: LoRA leaves the output head frozen, and
    with Llama's usual 0.02 init that head caps every logit near 1 (loss floor ~5), where a pretrained
    Vicuna's head can be confident. The tiny stand-in needs a head that can be confident too."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden = 64
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, intermediate_size=172,
                                        max_position_embeddings=2048, bos_token_id=1, eos_token_id=2,
                                        pad_token_id=2, tie_word_embeddings=False,
                                        initializer_range=hidden ** -0.5))


def settings_of(cfg, tiny: bool) -> dict:
    opts = dict((cfg.spec.get("model") or {}).get("options") or {})
    data = cfg.spec.get("data") or {}
    window = int(opts.get("windowSize", protocol.WINDOW))
    if data.get("maxSequenceLength"):
        window = min(window, int(data["maxSequenceLength"]))
    return {"window": window, "overlap": int(opts.get("windowOverlap", protocol.WINDOW_OVERLAP)),
            "max_windows": int(opts.get("maxWindows", 313)),
            "max_answer": int(opts.get("maxTextTokens", 512)),
            "eval_generate": int(opts.get("evalGenerate", 16 if tiny else 64)),
            "eval_beams": int(opts.get("evalBeams", 1)),
            "max_new_tokens": int(opts.get("maxNewTokens", 32 if tiny else 512)),
            "train_adapter": bool(opts.get("trainAdapter", False))}


# -- recipe -----------------------------------------------------------------------------


class GeneChatRecipe(RecipeBase):
    name = "genechat"

    def __init__(self):
        self.dna_tokenizer = None
        self.text_tokenizer = None
        self.settings: dict = {}

    def _tokenizers(self, cfg, tiny: bool, data_dir: Path):
        if self.text_tokenizer is not None:
            return
        if tiny:
            from helixrun_trainer.recipes.dna_tokenizer import dnabert2_tokenizer

            genes = tiny_genes((cfg.spec.get("training") or {}).get("seed", 42))
            scratch = Path(data_dir)
            self.dna_tokenizer = dnabert2_tokenizer([s for _, s, _ in genes], cache=scratch / "tiny-dnabert2-tokenizer")
            self.text_tokenizer = tiny_text_tokenizer(tiny_corpus(tiny_items(genes)), scratch / "tiny-text-tokenizer")
            return
        from transformers import AutoTokenizer

        model = cfg.spec.get("model") or {}
        self.text_tokenizer = AutoTokenizer.from_pretrained(model["name"], revision=model.get("revision"),
                                                            cache_dir=cfg.paths.model_cache)
        if self.text_tokenizer.pad_token_id is None:  # as the reference: pad = eos
            self.text_tokenizer.pad_token = self.text_tokenizer.eos_token
        self.dna_tokenizer = load_dnabert2_tokenizer(dnabert2_name(model), None, cfg.paths.model_cache)

    def build_model(self, cfg, tiny: bool) -> nn.Module:
        self.settings = settings_of(cfg, tiny)
        method = method_of(cfg)
        self._tokenizers(cfg, tiny, Path(cfg.paths.data))
        if tiny:
            encoder, llm = tiny_encoder(), tiny_llm(len(self.text_tokenizer))
        else:
            model = cfg.spec.get("model") or {}
            encoder = load_dnabert2(dnabert2_name(model), None, cfg.paths.model_cache)
            from transformers import AutoModelForCausalLM

            llm = AutoModelForCausalLM.from_pretrained(model["name"], **base_load_kwargs(cfg, method))
        if method in ("lora", "qlora"):
            llm = add_lora(llm, cfg, method=method)
        model = GeneChat(encoder, llm, encoder.config.hidden_size, llm.config.hidden_size,
                         train_adapter=self.settings["train_adapter"])
        model._tiny = tiny
        return model

    def collate_for(self, prompt: str = "train") -> Collate:
        s = self.settings
        return Collate(self.dna_tokenizer, self.text_tokenizer, s["window"], s["overlap"], s["max_windows"],
                       s["max_answer"], prompt=prompt)

    def build_data(self, cfg, tiny: bool, data_dir: Path) -> RecipeData:
        self.settings = self.settings or settings_of(cfg, tiny)
        self._tokenizers(cfg, tiny, data_dir)
        data = cfg.spec.get("data") or {}
        opts = dict(data.get("options") or {})
        opts = {**PRESETS.get(opts.get("preset", ""), {}), **opts}
        on_error = opts.get("onError", "raise")
        if tiny:
            genes = tiny_genes((cfg.spec.get("training") or {}).get("seed", 42))
            train, evals, source = tiny_items(genes[:40]), tiny_items(genes[40:]), "tiny"  # 40 genes, 16 held out
        else:
            root = resolve_data_path(cfg, data_dir)
            train = read_split(root / "train", on_error)
            evals = read_split(root / "val", on_error) if (root / "val").is_dir() else []
            source = str(root)
        if opts.get("limitGenes"):
            keep = set(sorted({i.gene_id for i in train}, key=lambda g: (len(g), g))[:int(opts["limitGenes"])])
            train = [i for i in train if i.gene_id in keep]
        if not train:
            raise DataError(f"{source}: no training genes")
        return RecipeData(train=train, eval=evals or None, collate=self.collate_for("train"),
                          split_mapping={"source": source, "train": sorted({i.gene_id for i in train}),
                                         "eval": sorted({i.gene_id for i in evals})})

    def compute_loss(self, model, batch: dict[str, Any], generator: torch.Generator) -> LossOutput:
        losses = model(batch["input_ids"], batch["attention_mask"], batch["gene_slot"], batch["labels"],
                       batch["windows"], batch["window_mask"], batch["window_valid"])
        return LossOutput(loss=losses.mean(), loss_units=int(losses.shape[0]),
                          num_tokens=int(batch["attention_mask"].sum()), num_samples=int(losses.shape[0]))

    def generate(self, model, batch, generation: dict) -> list[str]:
        """Answers for the batch's prompts: decoded, cut at the first ### (protocol.answer_text)."""
        tok = self.text_tokenizer
        out = model.generate(batch["prompt_ids"], batch["prompt_mask"], batch["prompt_slot"], batch["windows"],
                             batch["window_mask"], batch["window_valid"], eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id, stop_strings=[protocol.ANSWER_END], tokenizer=tok,
                             **generation)
        return [protocol.answer_text(t) for t in tok.batch_decode(out, skip_special_tokens=True)]

    def evaluate(self, model, eval_batches: Iterable[dict[str, Any]]) -> dict[str, float]:
        from helixrun_trainer.evaluation.text import WordNetMissing, bleu, meteor

        s = self.settings
        generation = {"num_beams": s["eval_beams"], "max_new_tokens": s["max_new_tokens"], "do_sample": False}
        losses: list[torch.Tensor] = []
        hyps, refs = [], []
        for batch in eval_batches:
            losses.append(model(batch["input_ids"], batch["attention_mask"], batch["gene_slot"], batch["labels"],
                                batch["windows"], batch["window_mask"], batch["window_valid"]).float().cpu())
            # Generation scores summary answers only, as the reference's evaluation does.
            summary = [row for row, kind in enumerate(batch["kinds"]) if kind == "summary"]
            if summary and len(hyps) < s["eval_generate"]:
                rows = {k: batch[k][summary] for k in GENERATION_INPUTS}
                hyps += self.generate(model, rows, generation)
                refs += [batch["answers"][row] for row in summary]
        scores = {"loss": float(torch.cat(losses).mean())}
        hyps, refs = hyps[:s["eval_generate"]], refs[:s["eval_generate"]]
        if hyps:
            scores.update(bleu(hyps, refs))
            scores["bleu"] = scores["bleu4"]
            try:
                scores["meteor"] = meteor(hyps, refs)
            except WordNetMissing as exc:
                log.warning("METEOR skipped: %s", exc)
        return scores

    def trainable_state(self, model) -> dict[str, torch.Tensor]:
        # The adapter even when frozen: its seeded random init is part of the model, and no hub holds it.
        return {k: p.detach() for k, p in model.named_parameters() if p.requires_grad or k.startswith("adapter.")}

    def export(self, model, cfg, out_dir: Path) -> None:
        """final/: genechat.json + genechat.safetensors (adapter + LoRA) + tokenizers; tiny: the whole model."""
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        tiny = bool(getattr(model, "_tiny", False))
        meta = {"spec": {"model": cfg.spec.get("model"), "data": {"maxSequenceLength": (cfg.spec.get("data") or {})
                                                                   .get("maxSequenceLength")}},
                "tiny": tiny, "method": method_of(cfg), "settings": self.settings}
        (out_dir / "genechat.json").write_text(json.dumps(meta, indent=1))
        state = model.state_dict() if tiny else self.trainable_state(model)
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(out_dir / "genechat.safetensors"))
        self.text_tokenizer.save_pretrained(str(out_dir / "text_tokenizer"))
        if tiny:
            self.dna_tokenizer.save_pretrained(str(out_dir / "dna_tokenizer"))


RECIPE = GeneChatRecipe()
