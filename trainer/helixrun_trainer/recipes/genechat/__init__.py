"""GeneChat: a gene's DNA -> a description of its function.

Faithful to the published GeneChat, then batched (model.py): frozen DNABERT-2
(model.encoder; remote code with its Triton flash-attention switched off, so
its plain attention runs on any Triton) encodes the gene in windows of
options.windowSize nt (512) overlapping by options.windowOverlap (10), at most
options.maxWindows (313, the reference's 160 kb cap), each mean-pooled; a
trainable adapter Linear(768 -> 5120) (options.trainAdapter) projects them into
Vicuna-13B-v1.5 (model.name, bf16; 4-bit with qlora), which carries LoRA (r 8,
α 16, q/v, dropout 0.05). Prompt, as the reference:
`<s>###Human: <gene>{windows}</gene> {question} ###Assistant: {answer}###`,
loss on the answer (and its closing ###) only, answers capped at
options.maxTextTokens (405) tokens.

Tiny: a 2-layer BertModel (vocab 4096, hidden 64) with a nucleotide BPE
tokenizer built locally in DNABERT-2's special-token layout, a 2-layer
LlamaForCausalLM (hidden 64) with a locally trained SentencePiece-style BPE
text tokenizer, windows of data.maxSequenceLength (64) nt.

Data (data.format genechat-json; data.path the folder `prepare` writes, see
prepare.py): `train/` and `val/` with `seq.json` and `qa_summary_rule.json`
(+ `qa_kw.json` keyword QA, whose question adds "Limit your answer to one or
two words."). A gene without a sequence, with non-ACGTN letters, or with an
empty answer: a DataError naming the file and gene (data.options.onError: skip
counts and logs them instead). data.options.limitGenes (or preset: smoke =
100) trains on the first N genes: the seed's test mode is that plus
training.maxSteps 1000.

Evaluation: loss over the val answers, then generation (greedy, or
options.evalBeams beams; options.evalGenerate samples, 64; options.maxNewTokens
512) scored as GeneChat's eval.py: BLEU-1..4 (per-sentence NLTK, no smoothing,
averaged) and METEOR (NLTK + WordNet; evaluation/text.py). Paper: BLEU-1
0.1937, BLEU-4 0.0816, METEOR 0.2725.

Commands (python -m helixrun_trainer.recipes.genechat ...): `prepare` (NCBI
inputs -> splits), `predict --model CHECKPOINTS/final --fasta gene.fa`
(4 beams, as the reference's inference).
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from helixrun_trainer.errors import DataError
from helixrun_trainer.recipes.adapters import add_lora, base_load_kwargs, method_of
from helixrun_trainer.recipes.base import LossOutput, RecipeBase, RecipeData, resolve_data_path
from helixrun_trainer.recipes.dna_tokenizer import cached_tokenizer
from helixrun_trainer.recipes.genechat.model import GeneChat

log = logging.getLogger(__name__)

PROMPT_HEAD = "###Human: <gene>"
PROMPT_TAIL = "</gene> {question} ###Assistant:"
ANSWER_END = "###"
SUMMARY_QUESTION = "Please predict the function of this gene."
KEYWORD_SUFFIX = " Limit your answer to one or two words."
DNA_LETTERS = set("ACGTN")
PRESETS = {"smoke": {"limitGenes": 100}}


# -- windows and samples ------------------------------------------------------------


def gene_windows(sequence: str, size: int, overlap: int, max_windows: int) -> list[str]:
    """Windows of `size` nt, consecutive ones sharing `overlap` nt; a tail wholly inside the overlap is dropped."""
    stride = size - overlap
    if stride <= 0:
        raise ValueError(f"windowOverlap {overlap} must be smaller than windowSize {size}")
    out = []
    for start in range(0, len(sequence), stride):
        if start and len(sequence) - start <= overlap:
            break
        out.append(sequence[start:start + size])
        if len(out) == max_windows:
            break
    return out


def read_split(folder: Path, on_error: str) -> list[tuple[str, str, str, str]]:
    """[(gene_id, sequence, question, answer)] of one split folder (GeneChat's JSON layout)."""
    seq_path = folder / "seq.json"
    if not seq_path.is_file():
        raise DataError(f"{seq_path} does not exist (run `python -m helixrun_trainer.recipes.genechat prepare`)")
    try:
        sequences = json.loads(seq_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{seq_path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
    manual = folder / "qa_text_manual.json"
    if manual.is_file() and json.loads(manual.read_text() or "[]"):
        raise DataError(f"{manual}: must be empty (GeneChat's builder refuses manual QA too)")
    items: list[tuple[str, str, str, str]] = []
    skipped = 0
    for name, question_for in (("qa_summary_rule.json", lambda item: SUMMARY_QUESTION),
                               ("qa_kw.json", lambda item: (item.get("Q") or "") + KEYWORD_SUFFIX)):
        path = folder / name
        if not path.is_file():
            if name == "qa_summary_rule.json":
                raise DataError(f"{path} does not exist")
            continue
        try:
            qa = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
        for i, item in enumerate(qa):
            gene_id = str(item.get("Gene Id", ""))
            answer = " ".join(str(item.get("Summary") if "Summary" in item else item.get("A") or "").split())
            seqs = sequences.get(gene_id)
            seq = (seqs[0] if isinstance(seqs, list) and seqs else seqs if isinstance(seqs, str) else "") or ""
            seq = seq.upper()
            problem = None
            if not gene_id:
                problem = "has no 'Gene Id'"
            elif not answer:
                problem = "has an empty answer"
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
            items.append((gene_id, seq, question_for(item), answer))
    if skipped:
        log.warning("%s: skipped %d QA items (no sequence, bad letters or empty answer)", folder, skipped)
    return items


FAMILIES = (
    ("ATGAAACGC", "This gene encodes a protein kinase that phosphorylates serine residues in signaling pathways."),
    ("GGCCTTAAG", "This gene encodes a membrane transporter that moves glucose across the cell membrane."),
    ("TTTACGGAT", "This gene encodes a transcription factor that binds DNA and regulates development."),
    ("CCGATCGTA", "This gene encodes a ribosomal protein that is part of the large ribosomal subunit."),
)


def tiny_genes(seed: int, n: int = 48) -> list[tuple[str, str, str, str]]:
    """Genes of four families: family motifs in the DNA, the family's function as the answer."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        motif, summary = FAMILIES[i % len(FAMILIES)]
        length = rng.randint(80, 220)
        seq = ""
        while len(seq) < length:
            seq += motif if rng.random() < 0.6 else rng.choice("ACGT") * rng.randint(1, 3)
        out.append((f"{1000 + i}", seq[:length], SUMMARY_QUESTION, summary))
    return out


class Collate:
    """Samples -> the batch GeneChat.forward and .generate take (windows padded with a mask)."""

    def __init__(self, dna_tokenizer, text_tokenizer, window: int, overlap: int, max_windows: int,
                 max_answer_tokens: int):
        self.dna, self.text = dna_tokenizer, text_tokenizer
        self.window, self.overlap, self.max_windows = window, overlap, max_windows
        self.max_answer = max_answer_tokens
        self.head = text_tokenizer(PROMPT_HEAD, add_special_tokens=False)["input_ids"]

    def __call__(self, samples: list, generator: torch.Generator | None = None) -> dict[str, Any]:
        tok = self.text
        pad, bos = tok.pad_token_id, tok.bos_token_id
        windows = [gene_windows(seq, self.window, self.overlap, self.max_windows) for _, seq, _, _ in samples]
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
        full, prompts = [], []
        for (_, _, question, answer), ws in zip(samples, windows):
            tail = tok(PROMPT_TAIL.format(question=question), add_special_tokens=False)["input_ids"]
            ans = tok(" " + answer + ANSWER_END, add_special_tokens=False)["input_ids"][:self.max_answer]
            prompt = [bos, *self.head, *([pad] * len(ws)), *tail]
            slots = [-1] * (1 + len(self.head)) + list(range(len(ws))) + [-1] * len(tail)
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
                "answers": [answer for _, _, _, answer in samples], "gene_ids": [g for g, _, _, _ in samples]}


def answer_text(text: str) -> str:
    """Generated text up to the answer's closing ###, whitespace-normalised."""
    return " ".join(text.split(ANSWER_END)[0].split())


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


def tiny_corpus(genes) -> list[str]:
    texts = [PROMPT_HEAD, PROMPT_TAIL.format(question=SUMMARY_QUESTION), ANSWER_END, KEYWORD_SUFFIX]
    return texts + [" " + a + ANSWER_END for _, _, _, a in genes]


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
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, intermediate_size=172,
                                        max_position_embeddings=2048, bos_token_id=1, eos_token_id=2,
                                        pad_token_id=2, tie_word_embeddings=False))


# -- recipe -----------------------------------------------------------------------------


class GeneChatRecipe(RecipeBase):
    name = "genechat"

    def __init__(self):
        self.dna_tokenizer = None
        self.text_tokenizer = None
        self.settings: dict = {}
        self._tiny_genes = None

    def _settings(self, cfg, tiny: bool) -> dict:
        opts = dict((cfg.spec.get("model") or {}).get("options") or {})
        data = cfg.spec.get("data") or {}
        window = int(opts.get("windowSize", 512))
        if data.get("maxSequenceLength"):
            window = min(window, int(data["maxSequenceLength"]))
        return {"window": window, "overlap": int(opts.get("windowOverlap", 10)),
                "max_windows": int(opts.get("maxWindows", 313)),
                "max_answer": int(opts.get("maxTextTokens", 405)),
                "eval_generate": int(opts.get("evalGenerate", 16 if tiny else 64)),
                "eval_beams": int(opts.get("evalBeams", 1)),
                "max_new_tokens": int(opts.get("maxNewTokens", 32 if tiny else 512)),
                "train_adapter": bool(opts.get("trainAdapter", True))}

    def _tokenizers(self, cfg, tiny: bool, data_dir: Path):
        if self.text_tokenizer is not None:
            return
        if tiny:
            from helixrun_trainer.recipes.dna_tokenizer import dnabert2_tokenizer

            genes = tiny_genes((cfg.spec.get("training") or {}).get("seed", 42))
            self._tiny_genes = genes
            scratch = Path(data_dir)
            self.dna_tokenizer = dnabert2_tokenizer([s for _, s, _, _ in genes], cache=scratch / "tiny-dnabert2-tokenizer")
            self.text_tokenizer = tiny_text_tokenizer(tiny_corpus(genes), scratch / "tiny-text-tokenizer")
            return
        from transformers import AutoTokenizer

        model = cfg.spec.get("model") or {}
        self.text_tokenizer = AutoTokenizer.from_pretrained(model["name"], revision=model.get("revision"),
                                                            cache_dir=cfg.paths.model_cache)
        if self.text_tokenizer.pad_token_id is None:  # as the reference: pad = eos
            self.text_tokenizer.pad_token = self.text_tokenizer.eos_token
        self.dna_tokenizer = load_dnabert2_tokenizer(dnabert2_name(model), None, cfg.paths.model_cache)

    def build_model(self, cfg, tiny: bool) -> nn.Module:
        self.settings = self._settings(cfg, tiny)
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
        elif method == "full":
            pass
        model = GeneChat(encoder, llm, encoder.config.hidden_size, llm.config.hidden_size,
                         train_adapter=self.settings["train_adapter"])
        model._tiny = tiny
        return model

    def build_data(self, cfg, tiny: bool, data_dir: Path) -> RecipeData:
        self.settings = self.settings or self._settings(cfg, tiny)
        self._tokenizers(cfg, tiny, data_dir)
        data = cfg.spec.get("data") or {}
        opts = dict(data.get("options") or {})
        opts = {**PRESETS.get(opts.get("preset", ""), {}), **opts}
        on_error = opts.get("onError", "raise")
        if tiny:
            genes = self._tiny_genes or tiny_genes((cfg.spec.get("training") or {}).get("seed", 42))
            train, evals, source = genes[:40], genes[40:], "tiny"
        else:
            root = resolve_data_path(cfg, data_dir)
            train = read_split(root / "train", on_error)
            evals = read_split(root / "val", on_error) if (root / "val").is_dir() else []
            source = str(root)
        if opts.get("limitGenes"):
            keep = sorted({g for g, _, _, _ in train}, key=lambda g: (len(g), g))[:int(opts["limitGenes"])]
            keep_set = set(keep)
            train = [item for item in train if item[0] in keep_set]
        if not train:
            raise DataError(f"{source}: no training genes")
        s = self.settings
        collate = Collate(self.dna_tokenizer, self.text_tokenizer, s["window"], s["overlap"], s["max_windows"],
                          s["max_answer"])
        return RecipeData(train=train, eval=evals or None, collate=collate,
                          split_mapping={"source": source, "train": sorted({g for g, *_ in train}),
                                         "eval": sorted({g for g, *_ in evals})})

    def compute_loss(self, model, batch: dict[str, Any], generator: torch.Generator) -> LossOutput:
        loss, _ = model(batch["input_ids"], batch["attention_mask"], batch["gene_slot"], batch["labels"],
                        batch["windows"], batch["window_mask"], batch["window_valid"])
        units = int((batch["labels"][:, 1:] != -100).sum())
        return LossOutput(loss=loss, loss_units=units, num_tokens=int(batch["attention_mask"].sum()),
                          num_samples=int(batch["input_ids"].shape[0]))

    def generate(self, model, batch, num_beams: int, max_new_tokens: int) -> list[str]:
        tok = self.text_tokenizer
        out = model.generate(batch["prompt_ids"], batch["prompt_mask"], batch["prompt_slot"], batch["windows"],
                             batch["window_mask"], batch["window_valid"], max_new_tokens=max_new_tokens,
                             num_beams=num_beams, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        return [answer_text(t) for t in tok.batch_decode(out, skip_special_tokens=True)]

    def evaluate(self, model, eval_batches: Iterable[dict[str, Any]]) -> dict[str, float]:
        from helixrun_trainer.evaluation.text import WordNetMissing, bleu, meteor

        s = self.settings
        total, units = 0.0, 0
        hyps, refs = [], []
        for batch in eval_batches:
            loss, _ = model(batch["input_ids"], batch["attention_mask"], batch["gene_slot"], batch["labels"],
                            batch["windows"], batch["window_mask"], batch["window_valid"])
            n = int((batch["labels"][:, 1:] != -100).sum())
            total, units = total + float(loss.float()) * n, units + n
            if len(hyps) < s["eval_generate"]:
                hyps += self.generate(model, batch, s["eval_beams"], s["max_new_tokens"])
                refs += batch["answers"]
        scores = {"loss": total / max(units, 1)}
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
        return {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}

    def export(self, model, cfg, out_dir: Path) -> None:
        """final/: genechat.json + adapter.safetensors + LoRA (llm/) + tokenizers; tiny: the whole model."""
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
