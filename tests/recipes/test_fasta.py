"""The FASTA/FASTQ reader: what it yields equals what was written (both engines, any wrapping, chunk
boundaries anywhere), and every bad input raises an error naming the file, the record and its line, or is
skipped and counted."""

from __future__ import annotations

import gzip

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helixrun_trainer.formats.fasta import (DNA, PROTEIN, FastaError, Skips, _read_fasta_python, read_fasta,
                                            read_fastq, read_sequences)

ENGINES = ("python", "pyfastx")
ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_|.-", min_size=1, max_size=12)
descriptions = st.text(alphabet="abcdefghij =;,:0123456789", max_size=20)
protein = st.text(alphabet=PROTEIN + PROTEIN.lower(), min_size=1, max_size=300)
records = st.lists(st.tuples(ids, descriptions, protein), min_size=1, max_size=20)


def write(path, recs, width, newline="\n", blank_lines=False):
    parts = []
    for rid, desc, seq in recs:
        parts.append(f">{rid} {desc}".rstrip() + newline)
        chunks = [seq[i:i + width] for i in range(0, len(seq), width)] if width else [seq]
        for chunk in chunks:
            parts.append(chunk + newline)
            if blank_lines:
                parts.append(newline)
    path.write_text("".join(parts))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recs=records, width=st.sampled_from([0, 1, 7, 60, 80]), crlf=st.booleans(), blank=st.booleans())
def test_records_round_trip_with_either_engine(tmp_path, recs, width, crlf, blank):
    path = tmp_path / "x.fasta"
    write(path, recs, width, "\r\n" if crlf else "\n", blank)
    want = [(rid, seq.upper()) for rid, _, seq in recs]
    for engine in ENGINES:
        got = [(r.id, r.sequence) for r in read_fasta(path, alphabet=PROTEIN, engine=engine)]
        assert got == want, f"engine {engine} read back different records"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recs=records, chunk=st.integers(min_value=1, max_value=64))
def test_chunk_boundaries_do_not_change_records_or_lines(tmp_path, recs, chunk):
    path = tmp_path / "x.fasta"
    write(path, recs, 13)
    reference = [(r.id, r.sequence, r.line) for r in _read_fasta_python(path, alphabet=None, max_length=None,
                                                                        on_error="raise", skips=None)]
    small = [(r.id, r.sequence, r.line) for r in _read_fasta_python(path, alphabet=None, max_length=None,
                                                                    on_error="raise", skips=None, chunk_size=chunk)]
    assert small == reference
    lines = path.read_text().splitlines()
    for rid, _, line in reference:  # each record's line really is its header
        assert lines[line - 1].startswith(f">{rid}")


def test_gzip_is_read_by_content_not_name(tmp_path):
    path = tmp_path / "reads.dat"
    path.write_bytes(gzip.compress(b">a\nACGT\n>b\nGG\n"))
    for engine in ENGINES:
        assert [(r.id, r.sequence) for r in read_fasta(path, engine=engine)] == [("a", "ACGT"), ("b", "GG")]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("text, reason, where", [
    (">a\nACGT\n>b\nAC#T\n", "invalid-character", ":3: record 2 ('b')"),
    (">a\nACGT\n>\nACGT\n", "empty-header", ":3: record 2"),
    (">a\nACGT\n>b\n>c\nAC\n", "empty-sequence", ":3: record 2 ('b')"),
    (">a\nACGTACGTACGT\n", "too-long", ":1: record 1 ('a')"),
])
def test_a_bad_record_is_named_by_file_record_and_line(tmp_path, engine, text, reason, where):
    path = tmp_path / "bad.fasta"
    path.write_text(text)
    with pytest.raises(FastaError) as info:
        list(read_fasta(path, alphabet=DNA, max_length=8, engine=engine))
    assert info.value.reason == reason
    assert str(path) + where in str(info.value), str(info.value)


@pytest.mark.parametrize("engine", ENGINES)
def test_bad_records_are_skipped_and_counted_on_request(tmp_path, engine):
    path = tmp_path / "mixed.fasta"
    path.write_text(">a\nACGT\n>b\nACXT\n>\nAA\n>c\n>d\nGGGG\n")
    skips = Skips()
    got = [r.id for r in read_fasta(path, alphabet=DNA.replace("N", ""), on_error="skip", skips=skips, engine=engine)]
    assert got == ["a", "d"]
    assert dict(skips.counts) == {"invalid-character": 1, "empty-header": 1, "empty-sequence": 1}
    assert "skipped 3 records" in skips.summary()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("text, message", [
    ("", "no FASTA records"),
    ("\n\n  \n", "no FASTA records"),
    ("hello\n>a\nAC\n", "text before the first '>'"),
])
def test_a_file_that_is_not_fasta_is_refused_whole(tmp_path, engine, text, message):
    path = tmp_path / "x.fasta"
    path.write_text(text)
    with pytest.raises(FastaError, match=message):
        list(read_fasta(path, engine=engine))


def test_fastq_records_and_errors(tmp_path):
    path = tmp_path / "reads.fastq"
    path.write_text("@r1 x\nACGT\n+\nIIII\n@r2\nacg\n+r2\nIII\n")
    assert [(r.id, r.sequence, r.quality) for r in read_fastq(path, alphabet=DNA)] == [
        ("r1", "ACGT", "IIII"), ("r2", "ACG", "III")]
    assert [r.id for r in read_sequences(path)] == ["r1", "r2"]
    bad = tmp_path / "bad.fq"
    bad.write_text("@r1\nACGT\n+\nII\n")
    with pytest.raises(FastaError, match=r"bad.fq:1: record 1 \('r1'\) has a bad quality line"):
        list(read_fastq(bad))
    truncated = tmp_path / "cut.fq"
    truncated.write_text("@r1\nACGT\n+\nIIII\n@r2\nAC\n")
    with pytest.raises(FastaError, match="truncated"):
        list(read_fastq(truncated))
    not_fastq = tmp_path / "x.fq"
    not_fastq.write_text(">r1\nACGT\n")
    with pytest.raises(FastaError, match="expected a '@' header"):
        list(read_fastq(not_fastq))


def test_pyfastx_engine_checks_every_batch_of_records(tmp_path):
    from helixrun_trainer.formats.fasta import _read_fasta_pyfastx

    path = tmp_path / "many.fasta"
    path.write_text("".join(f">r{i}\n{'ACGT' if i != 5 else 'ACXT'}\n" for i in range(11)))
    skips = Skips()
    got = [r.index for r in _read_fasta_pyfastx(path, alphabet=DNA.replace("N", ""), max_length=None,
                                                on_error="skip", skips=skips, batch=2)]
    assert got == [1, 2, 3, 4, 5, 7, 8, 9, 10, 11] and skips.counts == {"invalid-character": 1}
