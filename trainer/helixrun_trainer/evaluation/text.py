"""Text-generation metrics as GeneChat reports them: BLEU-1..4 and METEOR.

BLEU follows GeneChat's eval.py exactly: NLTK `sentence_bleu` per sentence over
whitespace tokens (case-sensitive), cumulative weights (1,0,0,0) ... (1/4 x 4),
no smoothing, averaged over sentences (not corpus BLEU). Without smoothing a
sentence with no matching n-gram scores 0 for that order, as in the reference.

METEOR is NLTK's `meteor_score` (exact, Porter-stem and WordNet-synonym
matching; alpha 0.9, beta 3, gamma 0.5) on the same whitespace tokens, averaged
over sentences. It is not the canonical METEOR 1.5 jar, so figures differ from a
jar-based paper number by a few hundredths; GeneChat did not publish which it
used. WordNet comes from, in order:

1. `$HELIXRUN_WORDNET_DIR` (a directory with WordNet 3.0's dict files), which
   `make demo` sets to the WordNet that `make debian-packages` unpacked,
2. NLTK's own `corpora/wordnet` if installed in an nltk_data path,
3. Debian's `wordnet-base` package (/usr/share/wordnet), the default in our
   images: `apt-get install wordnet-base`. Its dict files are the WordNet 3.0
   database NLTK reads; the package lacks the `lexnames` table (compiled into
   libwordnet), so we write it (a fixed list of 45 lexicographer file names,
   lexnames(5WN)) beside a copy of the files in a cache directory
   ($XDG_CACHE_HOME or the temp directory, `helixrun-wordnet/`).
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from helixrun_trainer.files import write_atomically

BLEU_WEIGHTS = {
    "bleu1": (1.0, 0.0, 0.0, 0.0),
    "bleu2": (0.5, 0.5, 0.0, 0.0),
    "bleu3": (1 / 3, 1 / 3, 1 / 3, 0.0),
    "bleu4": (0.25, 0.25, 0.25, 0.25),
}

DEBIAN_WORDNET = Path("/usr/share/wordnet")

# WordNet 3.0's lexicographer files, numbered as in lexnames(5WN); last column the syntactic category.
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


class WordNetMissing(RuntimeError):
    pass


def tokens(text: str) -> list[str]:
    """GeneChat's tokenisation: split on whitespace, case kept."""
    return text.split()


def sentence_bleu_scores(hypothesis: str, reference: str) -> dict[str, float]:
    from nltk.translate.bleu_score import sentence_bleu

    hyp, ref = tokens(hypothesis), tokens(reference)
    out = {}
    for name, weights in BLEU_WEIGHTS.items():
        if not hyp or not ref:
            out[name] = 0.0
            continue
        # No smoothing: NLTK warns on zero n-gram counts and returns 0, as GeneChat's eval.py does.
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[name] = float(sentence_bleu([ref], hyp, weights=weights))
    return out


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean per-sentence cumulative BLEU-1..4 (GeneChat eval.py)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not hypotheses:
        return {name: 0.0 for name in BLEU_WEIGHTS}
    totals = dict.fromkeys(BLEU_WEIGHTS, 0.0)
    for hyp, ref in zip(hypotheses, references):
        for name, value in sentence_bleu_scores(hyp, ref).items():
            totals[name] += value
    return {name: total / len(hypotheses) for name, total in totals.items()}


def _debian_layout(source: Path) -> Path:
    """A directory NLTK's WordNetCorpusReader accepts: Debian's files (copied once, ~30 MB) plus lexnames."""
    target = Path(os.environ.get("XDG_CACHE_HOME") or Path(tempfile.gettempdir())) / "helixrun-wordnet"
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if not item.is_file():
            continue
        copy = target / item.name
        if not copy.exists() or copy.stat().st_size != item.stat().st_size:
            # Copies, not symlinks: NLTK refuses files whose real path leaves the corpus root.
            write_atomically(copy, lambda staging, item=item: shutil.copyfile(item, staging))
    if not (target / "lexnames").exists():
        write_lexnames(target)
    return target


def write_lexnames(directory: Path) -> None:
    """WordNet's `lexnames` table into `directory`, completing Debian's dict files for NLTK's reader."""
    text = "".join(f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES))
    write_atomically(directory / "lexnames", lambda staging: staging.write_text(text))


@functools.cache
def wordnet():
    """NLTK's WordNet reader over the first WordNet found (see the module docstring)."""
    import warnings

    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root: Path | None = None
    if os.environ.get("HELIXRUN_WORDNET_DIR"):
        root = Path(os.environ["HELIXRUN_WORDNET_DIR"])
    else:
        try:
            import nltk

            root = Path(nltk.data.find("corpora/wordnet"))
        except LookupError:
            if (DEBIAN_WORDNET / "data.noun").exists():
                root = _debian_layout(DEBIAN_WORDNET)
    if root is None or not (root / "data.noun").exists() and not str(root).endswith(".zip"):
        raise WordNetMissing(
            "METEOR needs WordNet 3.0: install Debian's wordnet-base (apt-get install wordnet-base), "
            "or point HELIXRUN_WORDNET_DIR at a directory holding WordNet's dict files "
            "(`make demo` points it at the one `make debian-packages` unpacks)"
        )
    if (root / "data.noun").exists() and not (root / "lexnames").exists():
        root = _debian_layout(root)
    import nltk

    # NLTK only opens files under its data paths: admit the directory we chose.
    if str(root.resolve()) not in nltk.data.path:
        nltk.data.path.append(str(root.resolve()))
    class WordNet30(WordNetCorpusReader):
        # NLTK maps synsets from its own "wordnet" download onto a reader of another version; these dict
        # files are WordNet 3.0, the version NLTK's wordnet is, so the mapping is the identity.
        def map_wn(self, version="wordnet"):
            return None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": not needed for METEOR
        return WordNet30(str(root), None)


def meteor(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean per-sentence NLTK METEOR over whitespace tokens."""
    from nltk.stem.porter import PorterStemmer
    from nltk.translate.meteor_score import single_meteor_score

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not hypotheses:
        return 0.0
    reader, stemmer = wordnet(), PorterStemmer()
    total = 0.0
    for hyp, ref in zip(hypotheses, references):
        h, r = tokens(hyp), tokens(ref)
        if h and r:
            total += single_meteor_score(r, h, stemmer=stemmer, wordnet=reader)
    return total / len(hypotheses)


def generation_scores(hypotheses: Sequence[str], references: Sequence[str],
                      metrics: Iterable[str] = ("bleu", "meteor")) -> dict[str, float]:
    """{"bleu1".."bleu4", "bleu" (= BLEU-4), "meteor"} for the metrics asked for."""
    metrics = set(metrics)
    out: dict[str, float] = {}
    if "bleu" in metrics or any(m.startswith("bleu") for m in metrics):
        out.update(bleu(hypotheses, references))
        out["bleu"] = out["bleu4"]
    if "meteor" in metrics:
        out["meteor"] = meteor(hypotheses, references)
    return out
