"""Our FASTA reader against Biopython's SeqIO.parse on the same generated file.

    python bench/fasta_reader.py            # ~1 GB, the figure quoted in the docs
    python bench/fasta_reader.py --mb 50    # quick look

The file is generated in a temporary directory (deleted afterwards): protein
records of 50-1,000 residues wrapped at 60 columns, as UniProt writes them.
Both readers stream, so memory stays at about one chunk plus one record. Prints
records/s for each engine of ours and Biopython, and the ratio (Biopython time / ours).
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))

from helixrun_trainer.formats.fasta import PROTEIN, read_fasta  # noqa: E402

RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


def generate(path: Path, size_bytes: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    # A pool of random lines reused in random order: generation stays fast and the text realistic enough.
    lines = ["".join(rng.choices(RESIDUES, k=60)) for _ in range(4096)]
    written, count = 0, 0
    with open(path, "w", buffering=1 << 20) as out:
        while written < size_bytes:
            count += 1
            n_lines = rng.randint(1, 17)
            body = "\n".join(rng.choice(lines) for _ in range(n_lines))
            text = f">sp|P{count:07d}|PROT_{count} Generated protein OS=Synthetic OX=0\n{body}\n"
            out.write(text)
            written += len(text)
    return count


def time_ours(path: Path, engine: str) -> tuple[float, int, int]:
    start = time.perf_counter()
    n = residues = 0
    for record in read_fasta(path, alphabet=PROTEIN, engine=engine):
        n += 1
        residues += len(record.sequence)
    return time.perf_counter() - start, n, residues


def time_biopython(path: Path) -> tuple[float, int, int]:
    from Bio import SeqIO

    start = time.perf_counter()
    n = residues = 0
    for record in SeqIO.parse(str(path), "fasta"):
        n += 1
        residues += len(str(record.seq))
    return time.perf_counter() - start, n, residues


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024, help="size of the generated file in MiB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="helixrun-fasta-bench-") as tmp:
        path = Path(tmp) / "bench.fasta"
        t0 = time.perf_counter()
        count = generate(path, args.mb << 20)
        size = path.stat().st_size
        print(f"generated {count:,} records, {size / 2**20:,.0f} MiB in {time.perf_counter() - t0:.1f}s")
        py, n0, r0 = time_ours(path, "python")
        print(f"helixrun read_fasta, pure Python  : {py:7.2f}s  {n0 / py:12,.0f} records/s  {size / 2**20 / py:7.1f} MiB/s")
        ours, n1, r1 = time_ours(path, "pyfastx")
        print(f"helixrun read_fasta (pyfastx scan): {ours:7.2f}s  {n1 / ours:12,.0f} records/s  {size / 2**20 / ours:7.1f} MiB/s")
        bio, n2, r2 = time_biopython(path)
        print(f"Biopython SeqIO.parse             : {bio:7.2f}s  {n2 / bio:12,.0f} records/s  {size / 2**20 / bio:7.1f} MiB/s")
        if not (n0, r0) == (n1, r1) == (n2, r2):
            raise SystemExit(f"readers disagree: ours {n0}/{n1} records, {r0}/{r1} residues; Biopython {n2}/{r2}")
        print(f"ratio (Biopython time / ours): {bio / ours:.1f}x (pure-Python engine: {bio / py:.1f}x)")
        print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
