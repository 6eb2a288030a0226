"""FASTA and FASTQ records, read fast and checked, with errors that name the file and record.

Every recipe reads its sequences through here. FASTA is scanned by pyfastx's C
parser (a pinned dependency) and every record then passes the same checks in a
few C-level byte operations; without pyfastx, a pure-Python reader works on
large binary chunks split at record boundaries (`\\n>`) and also tracks header
lines. Either way memory stays at about one chunk plus one record, and
bench/fasta_reader.py compares both with Biopython's `SeqIO.parse` on a
generated 1 GB file.

Bad records, and what happens to them (`on_error`):

    "raise" (default)  FastaError naming the file, the record's 1-based index,
                       its id and the line of its header.
    "skip"             the record is dropped and counted in `Skips` under its
                       reason; a recipe logs the counts once the file is read.

Reasons: `empty-header` (a `>` line with no id), `empty-sequence`,
`invalid-character` (outside the alphabet given; sequences are upper-cased
first), `too-long` (over `max_length`), and for FASTQ `bad-quality` (missing
`+` line or a quality string of another length). Text before the first header,
a file with no records at all, and a truncated FASTQ record always raise: they
mean the file is not what it claims to be, not that one record is bad.
"""

from __future__ import annotations

import gzip
import io
import os
from collections import Counter
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import IO, Iterator, Literal, NamedTuple

try:  # C-speed scanning when available; the pure-Python reader below is the reference and the fallback
    import pyfastx as _pyfastx
except ImportError:  # pragma: no cover
    _pyfastx = None

OnError = Literal["raise", "skip"]

DNA = "ACGTN"
# IUPAC nucleotide ambiguity codes, for readers that want to accept them.
DNA_IUPAC = "ACGTNRYSWKMBDHV"
# The 20 standard residues plus X (unknown), B, Z, U (selenocysteine), O (pyrrolysine): ESM-2's 25 letters.
PROTEIN = "ACDEFGHIKLMNPQRSTVWYXBZUO"

_CHUNK = 8 << 20
_WHITESPACE = b"\n\r \t"
# Upper-casing and whitespace removal in a single bytes.translate pass.
_UPPER = bytes.maketrans(b"abcdefghijklmnopqrstuvwxyz", b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_new = tuple.__new__  # Record(...) without the Python-level __new__: ~1 µs less per record
_FAST_ANY = bytes(b for b in range(33, 127) if not (97 <= b <= 122))


class Record(NamedTuple):
    """One sequence record (a tuple: cheap to build in the hot loop, read by attribute)."""

    id: str
    description: str  # the header line after `>` (or `@`), id included
    sequence: str
    quality: str | None = None  # FASTQ only
    index: int = 0  # 1-based position of the record in the file
    line: int = 0  # 1-based line of its header (0: not tracked, the pyfastx engine; errors still name it)


class FastaError(ValueError):
    """A record (or the file) that cannot be read, located precisely."""

    def __init__(self, path: str | os.PathLike, message: str, *, line: int | None = None,
                 index: int | None = None, record_id: str | None = None, reason: str = "malformed"):
        self.path = str(path)
        self.line = line
        self.index = index
        self.record_id = record_id
        self.reason = reason
        where = self.path + (f":{line}" if line else "")
        what = ""
        if index is not None:
            what = f" record {index}" + (f" ({record_id!r})" if record_id else "")
        super().__init__(f"{where}:{what} {message}".replace(": ", ": ", 1))


@dataclass
class Skips:
    """Counts of records dropped under on_error="skip", by reason, with the first few located."""

    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    keep_examples: int = 5

    def add(self, error: FastaError) -> None:
        self.counts[error.reason] += 1
        if len(self.examples) < self.keep_examples:
            self.examples.append(str(error))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.total:
            return "no records skipped"
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items()))
        return f"skipped {self.total} records ({reasons}); first: {self.examples[0]}"


def open_text_or_gzip(path: str | os.PathLike) -> IO[bytes]:
    """Binary handle on a plain or gzip file (detected by its magic bytes, not its name)."""
    handle = open(path, "rb")
    if handle.peek(2)[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=handle)  # type: ignore[return-value]
    return handle


class _Checker:
    """Shared per-record checks; returns the cleaned sequence bytes or raises/records a FastaError."""

    def __init__(self, path, alphabet: str | None, max_length: int | None, on_error: OnError, skips: Skips | None):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.path = path
        self.allowed = alphabet.upper().encode("ascii") if alphabet else None
        self.max_length = max_length
        self.on_error = on_error
        self.skips = skips if skips is not None else Skips()

    def fail(self, message: str, **where) -> None:
        error = FastaError(self.path, message, **where)
        if self.on_error == "raise":
            raise error
        self.skips.add(error)

    def check(self, seq: bytes, *, index: int, line: int, record_id: str) -> bool:
        where = dict(line=line, index=index, record_id=record_id)
        if not seq:
            self.fail("has an empty sequence", reason="empty-sequence", **where)
            return False
        if self.allowed is not None:
            bad = seq.translate(None, self.allowed)
            if bad:
                letters = "".join(sorted(set(bad.decode("latin-1"))))
                offset = next(i for i, b in enumerate(seq) if b in bad) + 1
                self.fail(f"has characters outside the alphabet {self.allowed.decode()}: {letters!r} "
                          f"(first at residue {offset})", reason="invalid-character", **where)
                return False
        if self.max_length is not None and len(seq) > self.max_length:
            self.fail(f"is {len(seq)} long; at most {self.max_length} allowed", reason="too-long", **where)
            return False
        return True


def read_fasta(path: str | os.PathLike, *, alphabet: str | None = None, max_length: int | None = None,
               on_error: OnError = "raise", skips: Skips | None = None,
               engine: Literal["auto", "pyfastx", "python"] = "auto") -> Iterator[Record]:
    """Yield the records of a FASTA file (plain or gzip); sequences upper-cased, whitespace removed.

    engine "pyfastx" scans with pyfastx's C parser (kseq) and applies the same checks; "python" is the
    pure-Python chunked reader, which also tracks each record's header line. Both yield the same records
    and raise the same errors; a raised error is located to its line either way (by a second scan).
    """
    if engine == "auto":
        engine = "pyfastx" if _pyfastx is not None else "python"
    if engine == "python":
        return _read_fasta_python(path, alphabet=alphabet, max_length=max_length, on_error=on_error, skips=skips)
    return _read_fasta_pyfastx(path, alphabet=alphabet, max_length=max_length, on_error=on_error, skips=skips)


def _preamble(path) -> None:
    """Refuse an empty file or text before the first header (pyfastx would refuse both without naming why)."""
    with open_text_or_gzip(path) as handle:
        head = handle.read(1 << 16)
        line = 1
        while head and not head.lstrip(b"\n\r \t"):
            line += head.count(b"\n")
            head = handle.read(1 << 16)
    stripped = head.lstrip(b"\n\r \t")
    if not stripped:
        raise FastaError(path, "contains no FASTA records (empty file?)", reason="empty-file")
    if not stripped.startswith(b">"):
        line += head[: len(head) - len(stripped)].count(b"\n")
        raise FastaError(path, "text before the first '>' header: not a FASTA file", line=line)


def _read_fasta_pyfastx(path, *, alphabet, max_length, on_error, skips, batch: int = 4096) -> Iterator[Record]:
    _preamble(path)
    checker = _Checker(path, alphabet, max_length, on_error, skips)
    fast = checker.allowed if checker.allowed is not None else _FAST_ANY
    # A generator around it: pyfastx.Fasta.__iter__ rewinds the file, so islice must call it only once.
    records = (record for record in _pyfastx.Fasta(str(path), build_index=False, full_name=True))
    index = 0
    try:
        while True:
            chunk = list(islice(records, batch))
            if not chunk:
                break
            # One C-level pass decides for the whole chunk; per-record checks only run on a suspect chunk.
            seqs = [text for _, text in chunk]
            lengths = list(map(len, seqs))
            clean = min(lengths) > 0 and (max_length is None or max(lengths) <= max_length) \
                and not "".join(seqs).encode("latin-1", "replace").translate(None, fast)
            for description, text in chunk:
                index += 1
                record_id = description.split(None, 1)[0] if description else ""
                if not clean or not record_id:
                    seq = text.encode("latin-1", "replace")
                    if not seq or not record_id or seq.translate(None, fast) or (max_length and len(seq) > max_length):
                        description = description.rstrip()
                        try:
                            if not record_id:
                                checker.fail("has an empty header", reason="empty-header", index=index)
                                continue
                            seq = seq.translate(_UPPER, _WHITESPACE)
                            if not checker.check(seq, index=index, line=None, record_id=record_id):
                                continue
                        except FastaError as error:  # raising: name the line too, found by the line-tracking reader
                            raise _located(path, error, alphabet, max_length) from None
                        text = seq.decode("latin-1")
                yield _new(Record, (record_id, description, text, None, index, 0))
    except RuntimeError as error:  # pyfastx's own refusal of a file it cannot parse
        raise FastaError(path, f"cannot be parsed as FASTA ({error})") from None


def _located(path, error: FastaError, alphabet, max_length) -> FastaError:
    for _ in _read_fasta_python(path, alphabet=alphabet, max_length=max_length, on_error="raise", skips=None):
        pass
    return error  # not reproduced (cannot happen: both readers apply the same checks)


def _read_fasta_python(path, *, alphabet, max_length, on_error, skips, chunk_size: int = _CHUNK) -> Iterator[Record]:
    checker = _Checker(path, alphabet, max_length, on_error, skips)
    # Bytes that need no cleaning: the alphabet, or (without one) any upper-case printable byte.
    fast = checker.allowed if checker.allowed is not None else _FAST_ANY
    index = 0
    line = 1  # line number of the next unread byte
    pending = b""
    seen_any = False
    with open_text_or_gzip(path) as handle:
        first = True
        while True:
            chunk = handle.read(chunk_size)
            data = pending + chunk if pending else chunk
            if first:  # leading blank lines, then the first '>'
                stripped = data.lstrip(b"\n\r \t")
                line += data[: len(data) - len(stripped)].count(b"\n")
                if stripped and not stripped.startswith(b">"):
                    raise FastaError(path, "text before the first '>' header: not a FASTA file", line=line)
                if stripped:
                    first = False
                data = stripped[1:]
            if not chunk:
                blocks = [data] if data.strip() else []
                pending = b""
            else:
                cut = data.rfind(b"\n>")
                if cut < 0:
                    pending = data
                    continue
                blocks = data[:cut].split(b"\n>")
                pending = data[cut + 2:]
            seen_any = seen_any or bool(blocks)
            for block in blocks:
                index += 1
                header, newline, body = block.partition(b"\n")
                seq = body.replace(b"\n", b"")
                header_line = line
                # Lines in this block, counted for free from what replace removed; +1 for the split's newline.
                line += len(newline) + len(body) - len(seq) + 1
                description = header.rstrip(b"\r \t").decode("utf-8", "replace")
                record_id = description.split(None, 1)[0] if description else ""
                # Fast path: one C-level translate decides. Anything outside the fast alphabet (lower case,
                # '\r', spaces, bad letters) or an odd length sends the record through the full checks.
                if not seq or not record_id or seq.translate(None, fast) or (max_length and len(seq) > max_length):
                    if not record_id:
                        checker.fail("has an empty header", reason="empty-header", line=header_line, index=index)
                        continue
                    seq = seq.translate(_UPPER, _WHITESPACE)
                    if not checker.check(seq, index=index, line=header_line, record_id=record_id):
                        continue
                yield _new(Record, (record_id, description, seq.decode("latin-1"), None, index, header_line))
            if not chunk:
                break
    if not seen_any:
        raise FastaError(path, "contains no FASTA records (empty file?)", reason="empty-file")


def read_fastq(path: str | os.PathLike, *, alphabet: str | None = None, max_length: int | None = None,
               on_error: OnError = "raise", skips: Skips | None = None) -> Iterator[Record]:
    """Yield the records of a 4-line FASTQ file (plain or gzip)."""
    checker = _Checker(path, alphabet, max_length, on_error, skips)
    index = 0
    with open_text_or_gzip(path) as raw:
        handle = io.BufferedReader(raw, 1 << 20) if isinstance(raw, gzip.GzipFile) else raw
        lineno = 0
        while True:
            header = handle.readline()
            lineno += 1
            if not header:
                break
            if not header.strip():
                continue
            index += 1
            header_line = lineno
            if not header.startswith(b"@"):
                raise FastaError(path, f"expected a '@' header, got {header[:30]!r}", line=lineno, index=index)
            seq, plus, qual = handle.readline(), handle.readline(), handle.readline()
            lineno += 3
            description = header[1:].rstrip(b"\r\n").decode("utf-8", "replace")
            record_id = description.split(None, 1)[0] if description.strip() else ""
            if not qual:
                raise FastaError(path, "is truncated (fewer than 4 lines)", line=header_line, index=index,
                                 record_id=record_id, reason="truncated")
            if not record_id:
                checker.fail("has an empty header", reason="empty-header", line=header_line, index=index)
                continue
            seq = seq.translate(_UPPER, _WHITESPACE)
            qual = qual.rstrip(b"\r\n")
            if not plus.startswith(b"+") or len(qual) != len(seq):
                checker.fail(f"has a bad quality line (a '+' line then {len(seq)} quality characters expected)",
                             reason="bad-quality", line=header_line, index=index, record_id=record_id)
                continue
            if checker.check(seq, index=index, line=header_line, record_id=record_id):
                yield Record(record_id, description, seq.decode("latin-1"), qual.decode("latin-1"), index, header_line)
    if index == 0:
        raise FastaError(path, "contains no FASTQ records (empty file?)", reason="empty-file")


FASTQ_SUFFIXES = (".fq", ".fastq", ".fq.gz", ".fastq.gz")


def read_sequences(path: str | os.PathLike, **kwargs) -> Iterator[Record]:
    """FASTA or FASTQ by the file's name (.fq/.fastq, optionally .gz, is FASTQ; anything else FASTA)."""
    name = Path(path).name.lower()
    if name.endswith(FASTQ_SUFFIXES):
        return read_fastq(path, **kwargs)
    return read_fasta(path, **kwargs)


def write_fasta(records, path: str | os.PathLike, width: int = 60) -> None:
    """Write (id_or_description, sequence) pairs as FASTA, wrapped at `width` (0: one line)."""
    with open(path, "w") as out:
        for name, seq in records:
            out.write(f">{name}\n")
            if width:
                for i in range(0, len(seq), width):
                    out.write(seq[i:i + width] + "\n")
            else:
                out.write(seq + "\n")
