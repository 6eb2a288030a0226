"""PTM-Mamba's 59-token vocabulary, id for id the reference's `PTMTokenizer`.

Layout (programmablebio/ptm-mamba `protein_lm/tokenizer/tokenizer.py`): 8
specials (ids 0-7, <mask> = 7), ESM-2's 25 residue letters (8-32), the `PTM`
marker (33) and 25 PTM tokens (34-58), so a released checkpoint's embedding
rows line up with these ids. A post-translationally modified residue is one
token in angle brackets that replaces the residue (`M<N-acetylalanine>K...`,
UniProt's modified-residue names). The residues and specials map onto ESM-2's
33-token alphabet for the ESM branch, where PTM tokens become <mask>.
"""

from __future__ import annotations

import re

SPECIALS = ("<cls>", "<pad>", "<eos>", "<unk>", ".", "-", "<null_1>", "<mask>")
# ESM-2's residue letters: 20 standard, X unknown, B/Z ambiguous, U selenocysteine, O pyrrolysine.
RESIDUES = tuple("LAGVSERTIDPKQNFYMHWCXBUZO")
PTM_MARKER = "PTM"
# The reference's PTM tokens, in its order; the letter is the residue each one modifies (UniProt's name says so),
# which lets the site-table reader catch a position that points at another residue.
PTM_RESIDUE = {
    "<N-linked (GlcNAc...) asparagine>": "N",
    "<Pyrrolidone carboxylic acid>": "QE",  # pyroglutamate forms from an N-terminal Gln (or Glu)
    "<Phosphoserine>": "S",
    "<Phosphothreonine>": "T",
    "<N-acetylalanine>": "A",
    "<N-acetylmethionine>": "M",
    "<N6-acetyllysine>": "K",
    "<Phosphotyrosine>": "Y",
    "<S-diacylglycerol cysteine>": "C",
    "<N6-(pyridoxal phosphate)lysine>": "K",
    "<N-acetylserine>": "S",
    "<N6-carboxylysine>": "K",
    "<N6-succinyllysine>": "K",
    "<S-palmitoyl cysteine>": "C",
    "<O-(pantetheine 4'-phosphoryl)serine>": "S",
    "<Sulfotyrosine>": "Y",
    "<O-linked (GalNAc...) threonine>": "T",
    "<Omega-N-methylarginine>": "R",
    "<N-myristoyl glycine>": "G",
    "<4-hydroxyproline>": "P",
    "<Asymmetric dimethylarginine>": "R",
    "<N5-methylglutamine>": "Q",
    "<4-aspartylphosphate>": "D",
    "<S-geranylgeranyl cysteine>": "C",
    "<4-carboxyglutamate>": "E",
}
PTM_TOKENS = tuple(PTM_RESIDUE)
TOKENS = (*SPECIALS, *RESIDUES, PTM_MARKER, *PTM_TOKENS)
assert len(TOKENS) == 59 and len(set(TOKENS)) == 59

ID = {t: i for i, t in enumerate(TOKENS)}
CLS, PAD, EOS, UNK, MASK = (ID[t] for t in ("<cls>", "<pad>", "<eos>", "<unk>", "<mask>"))
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


def pieces(sequence: str) -> list[str]:
    """'MK<Phosphoserine>L' -> ['M', 'K', '<Phosphoserine>', 'L']: one piece per residue or bracketed token."""
    return _PIECE.findall(sequence.strip())


def tokenize(sequence: str) -> list[int]:
    """'MK<Phosphoserine>L' -> ids (without <cls>/<eos>); raises UnknownToken naming the first bad piece."""
    ids = []
    for position, piece in enumerate(pieces(sequence), 1):
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
