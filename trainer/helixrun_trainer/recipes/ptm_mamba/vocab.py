"""PTM-Mamba's 59-token vocabulary: 8 specials, 25 residues, a PTM marker, 25 PTM tokens.

A post-translationally modified residue is written as one token in angle
brackets that replaces the residue (`MK<Phosphoserine>LL...`, UniProt's
modified-residue names). The same residues and specials map onto ESM-2's
33-token alphabet for the ESM branch, where PTM tokens become <mask>.
"""

from __future__ import annotations

import re

SPECIALS = ("<cls>", "<pad>", "<eos>", "<unk>", "<mask>", "<null_1>", ".", "-")
# ESM-2's residue letters: 20 standard, X unknown, B/Z ambiguous, U selenocysteine, O pyrrolysine.
RESIDUES = tuple("LAGVSERTIDPKQNFYMHWCXBUZO")
PTM_MARKER = "PTM"
# The 25 most frequent Swiss-Prot modified-residue annotations.
PTM_TOKENS = (
    "<Phosphoserine>", "<Phosphothreonine>", "<Phosphotyrosine>", "<N6-acetyllysine>", "<N-acetylmethionine>",
    "<N-acetylserine>", "<N-acetylalanine>", "<N-acetylthreonine>", "<N6-methyllysine>", "<N6,N6-dimethyllysine>",
    "<N6,N6,N6-trimethyllysine>", "<Omega-N-methylarginine>", "<Asymmetric dimethylarginine>",
    "<Symmetric dimethylarginine>", "<N6-succinyllysine>", "<N6-crotonyllysine>", "<N6-malonyllysine>",
    "<Citrulline>", "<Pyrrolidone carboxylic acid>", "<4-hydroxyproline>", "<Hydroxyproline>", "<Sulfotyrosine>",
    "<Cysteine sulfenic acid (-SOH)>", "<S-nitrosocysteine>", "<Deamidated asparagine>",
)
TOKENS = (*SPECIALS, *RESIDUES, PTM_MARKER, *PTM_TOKENS)
assert len(TOKENS) == 59 and len(set(TOKENS)) == 59

ID = {t: i for i, t in enumerate(TOKENS)}
CLS, PAD, EOS, UNK, MASK = (ID[t] for t in ("<cls>", "<pad>", "<eos>", "<unk>", "<mask>"))
RESIDUE_IDS = tuple(ID[r] for r in RESIDUES[:20])  # standard residues: what random masking may substitute
PTM_IDS = frozenset(ID[t] for t in PTM_TOKENS)
SPECIAL_IDS = frozenset(ID[t] for t in SPECIALS)
VOCAB_SIZE = len(TOKENS)

# ESM-2's alphabet ids (facebook/esm2_* vocab.txt) for our tokens; PTM tokens and <mask> -> ESM <mask>.
_ESM = ("<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N",
        "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>")
ESM_ID = {t: i for i, t in enumerate(_ESM)}
TO_ESM = [ESM_ID.get(t, ESM_ID["<mask>"]) for t in TOKENS]
TO_ESM[ID[PTM_MARKER]] = ESM_ID["<mask>"]

_PIECE = re.compile(r"<[^<>]*>|.", re.S)


class UnknownToken(ValueError):
    def __init__(self, token: str, position: int):
        self.token, self.position = token, position
        super().__init__(f"unknown token {token!r} at position {position}")


def tokenize(sequence: str) -> list[int]:
    """'MK<Phosphoserine>L' -> ids (without <cls>/<eos>); raises UnknownToken naming the first bad piece."""
    ids = []
    for position, match in enumerate(_PIECE.finditer(sequence.strip()), 1):
        piece = match.group(0)
        if piece.isspace():
            raise UnknownToken(piece, position)
        token = ID.get(piece if len(piece) > 1 else piece.upper())
        if token is None or token in SPECIAL_IDS:
            raise UnknownToken(piece, position)
        ids.append(token)
    return ids


def encode(sequence: str) -> list[int]:
    return [CLS, *tokenize(sequence), EOS]


def decode(ids) -> str:
    return "".join(TOKENS[int(i)] for i in ids if int(i) not in (CLS, EOS, PAD))
