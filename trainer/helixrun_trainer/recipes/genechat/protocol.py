"""GeneChat's protocol as the reference fixes it: the question set, the two prompt layouts, the answer's end
mark and the generation settings of its evaluation.

Reference: the public GeneChat repository (Shashi-Sekar/GeneChat, head 2025-06-07 = fdkevin0/GeneChat@1703458).
These strings are facts of the protocol, quoted so that a trained model sees what the published one saw and
an evaluation asks what the paper asked (docs/FIDELITY.md lists each with its file).

Training prompt (`datasets/datasets/seq_dataset.py` builds the text, `models/genechat.py` embeds it):

    <s> "###Human: <gene>{tag}" [gene vectors] <s> "</gene> {question} ###Assistant:" "{answer}###"

`tag` is the stray ":wq" for summary QA and the gene id for keyword QA; the second <s> comes from
tokenising the text after the gene with special tokens on. Each piece is tokenised on its own.

Evaluation prompt (`common/conversation.py`: CONV_VISION, Chat.ask/answer; `inference_all.py`):

    <s> "Give the following gene: <gene>geneContent</gene>. Please answer my questions.###Human: <gene>"
        [gene vectors] "</gene> {question} ###Assistant:"
"""

from __future__ import annotations

ANSWER_END = "###"  # genechat_stage1.yaml end_sym: closes every answer, and generation stops at it

# A summary QA asks one of these, drawn uniformly per sample (seq_dataset.py, inference_all.py).
SUMMARY_QUESTIONS = ("Tell me about this gene.", "Please provide a detailed description of the gene.")
# A keyword QA asks one of these, plus KEYWORD_SUFFIX (seq_dataset.py q_map).
KEYWORD_QUESTIONS = (
    "Which organism does the gene belong to?",
    "What is the locus type of the gene?",
    "On which chromosome is the gene located?",
    "How many exons does the gene contain?",
    "What is the official symbol of the gene?",
    "What is the official full name of the gene?",
)
KEYWORD_SUFFIX = " Limit your answer to one or two words."

SUMMARY_TAG = ":wq"  # what the reference's summary prompt carries before the gene vectors
TRAIN_HEAD = "###Human: <gene>{tag}"
CHAT_HEAD = "Give the following gene: <gene>geneContent</gene>. Please answer my questions.###Human: <gene>"
TAIL = "</gene> {question} ###Assistant:"

# Chat.answer as inference_all.py calls it for the paper's test set. Its temperature 1e-3 and top_p 0.9 are
# inert without sampling and are not passed; its max_length 1500 only trims a context longer than
# 1500 - 512 tokens, which 313 gene vectors and the prompt never reach.
PAPER_GENERATION = {"num_beams": 4, "repetition_penalty": 1.9, "length_penalty": 1.0, "min_length": 1,
                    "max_new_tokens": 512, "do_sample": False}

MAX_GENE_LENGTH = 160_000  # seq_dataset.py: a longer gene is cut to its first 159,999 nt
WINDOW, WINDOW_OVERLAP = 512, 10  # genechat.py encode_gene: windows start every 512 nt and reach 10 nt back


def keyword_question(question: str) -> str:
    return question + KEYWORD_SUFFIX


def train_head(kind: str, gene_id: str) -> str:
    return TRAIN_HEAD.format(tag=SUMMARY_TAG if kind == "summary" else gene_id)


def answer_text(generated: str) -> str:
    """The answer in generated text, as Chat.answer cuts it: before the first ###, after any 'Assistant:'."""
    return generated.split(ANSWER_END)[0].split("Assistant:")[-1].strip()
