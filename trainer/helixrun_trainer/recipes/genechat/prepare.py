"""GeneChat data preparation: NCBI-style inputs -> train/val/test split folders.

    helixrun-train prepare genechat \\
        --gene-info Homo_sapiens.gene_info.gz --summaries summaries.tsv --sequences seq.json \\
        [--taxonomy names.dmp] [--exon-counts exons.tsv] \\
        --out /data/genechat [--test-size 2513] [--val-size 1000] [--seed 42] [--preset smoke]

Inputs:
- `gene_info` (NCBI's TSV, plain or gzip; header `#tax_id GeneID Symbol ...
  description ...`, `-` for missing): each gene's symbol, name, locus type,
  chromosome and taxon.
- summaries: gene function text per GeneID, a TSV with columns `GeneID` and
  `Summary` (plus optional header `#`), or JSON `{gene_id: summary}`, or
  GeneChat's own `qa_summary_rule.json` list `[{"Gene Id", "Summary"}]`.
- sequences: GeneChat's `{gene_id: [seq, ...]}` JSON (the first sequence is
  used, as the reference does) or a FASTA whose record ids are GeneIDs.
- organism names: NCBI taxonomy's `names.dmp` (--taxonomy; its scientific
  names), else the per-taxon file name `Genus_species.gene_info[.gz]`.
- exon counts (--exon-counts): a TSV `GeneID<TAB>exons` (header optional);
  gene_info does not carry them.

A gene is kept when it has a summary and a sequence of A/C/G/T/N; genes with an
empty summary, no sequence or other letters are counted and reported (and
listed in `skipped.json`), never silently lost. Output, per split, GeneChat's
layout: `{train,val,test}/seq.json`, `qa_summary_rule.json` ([{Gene Id,
Summary, Name}]), `qa_kw.json` ([{Gene Id, Q, A}]: for each gene, each of the
reference's six keyword questions whose answer the inputs hold: organism, locus
type, chromosome, exon count, official symbol, official full name) and
`qa_text_manual.json` (empty), plus `split_mapping.json` ({gene_id: split},
with the seed, sizes and QA counts) at the top. The recipe trains every
summary and every keyword QA once per epoch, as the reference's dataset does.
The split is a seeded permutation of the kept genes sorted by id, so the same
inputs and seed always give the same split. `--preset smoke` keeps 100 genes
(the seed's test mode: train on them for 1,000 steps).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import sys
from pathlib import Path

from helixrun_trainer.errors import DataError
from helixrun_trainer.formats.fasta import FastaError, open_text_or_gzip, read_fasta
from helixrun_trainer.recipes.genechat import protocol

DNA_LETTERS = set("ACGTN")
PRESETS = {"smoke": {"limit": 100, "test_size": 10, "val_size": 10}}


def _open_text(path: Path):
    return io.TextIOWrapper(open_text_or_gzip(path), encoding="utf-8")


def read_gene_info(path: Path) -> dict[str, dict[str, str]]:
    """GeneID -> {symbol, official_symbol, official_name, locus_type, chromosome, tax_id} (missing: "")."""
    out = {}
    with _open_text(path) as handle:
        header = handle.readline().rstrip("\n").lstrip("#").split("\t")
        if "GeneID" not in header or "Symbol" not in header:
            raise DataError(f"{path}:1: not an NCBI gene_info header (needs GeneID and Symbol columns)")
        col = {name: i for i, name in enumerate(header)}

        def first(fields, *names):
            """The first of these columns that the file has and the gene fills ("-" is NCBI's empty)."""
            values = (fields[col[n]] for n in names if n in col)
            return next((v for v in values if v and v != "-"), "")

        for line_number, line in enumerate(handle, 2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) < len(header):
                raise DataError(f"{path}:{line_number}: {len(fields)} columns, expected {len(header)}")
            out[fields[col["GeneID"]]] = {
                "symbol": first(fields, "Symbol"),
                "official_symbol": first(fields, "Symbol_from_nomenclature_authority", "Symbol"),
                "official_name": first(fields, "Full_name_from_nomenclature_authority", "description"),
                "locus_type": first(fields, "type_of_gene"),
                "chromosome": first(fields, "chromosome"),
                "tax_id": first(fields, "tax_id"),
            }
    return out


def read_taxonomy(path: Path) -> dict[str, str]:
    """tax_id -> scientific name from NCBI taxonomy's names.dmp (`tax_id\t|\tname\t|\tunique\t|\tclass\t|`)."""
    out = {}
    with _open_text(path) as handle:
        for line_number, line in enumerate(handle, 1):
            fields = [f.strip() for f in line.split("|")]
            if len(fields) < 4:
                raise DataError(f"{path}:{line_number}: not a names.dmp line (tax_id | name | unique | class |)")
            if fields[3] == "scientific name":
                out[fields[0]] = fields[1]
    return out


def organism_from_file_name(path: Path) -> str:
    """'Homo sapiens' for NCBI's per-taxon Homo_sapiens.gene_info.gz; '' for any other name."""
    stem = path.name.split(".gene_info")[0]
    return stem.replace("_", " ") if ".gene_info" in path.name and "_" in stem else ""


def read_exon_counts(path: Path) -> dict[str, str]:
    out = {}
    with _open_text(path) as handle:
        for line_number, row in enumerate(csv.reader(handle, delimiter="\t"), 1):
            if not row or row[0].lstrip("#") == "GeneID":
                continue
            if len(row) < 2 or not row[1].strip().isdigit():
                raise DataError(f"{path}:{line_number}: expected GeneID<TAB>exon count, got {row!r}")
            out[row[0].strip()] = row[1].strip()
    return out


def keyword_answers(gene: dict[str, str], organism: str, exons: str) -> dict[str, str]:
    """The reference's keyword questions -> this gene's answers, for those the inputs can answer."""
    answers = dict(zip(protocol.KEYWORD_QUESTIONS, (organism, gene.get("locus_type", ""), gene.get("chromosome", ""),
                                                   exons, gene.get("official_symbol", ""),
                                                   gene.get("official_name", ""))))
    return {q: a for q, a in answers.items() if a}


def read_summaries(path: Path) -> dict[str, str]:
    text_head = _open_text(path).read(1)
    if text_head in ("{", "["):
        data = json.loads(_open_text(path).read())
        if isinstance(data, dict):
            return {str(k): str(v or "") for k, v in data.items()}
        out = {}
        for i, item in enumerate(data):
            if not isinstance(item, dict) or "Gene Id" not in item:
                raise DataError(f"{path}: item {i} is not a {{'Gene Id', 'Summary'}} object")
            out[str(item["Gene Id"])] = str(item.get("Summary") or "")
        return out
    with _open_text(path) as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = [h.lstrip("#") for h in next(reader, [])]
        if "GeneID" not in header or "Summary" not in header:
            raise DataError(f"{path}:1: a summaries TSV needs GeneID and Summary columns")
        gi, si = header.index("GeneID"), header.index("Summary")
        return {row[gi]: row[si] for row in reader if len(row) > max(gi, si)}


def read_gene_sequences(path: Path) -> dict[str, str]:
    if path.name.lower().endswith((".fa", ".fasta", ".fna", ".fa.gz", ".fasta.gz", ".fna.gz")):
        try:
            return {r.id: r.sequence for r in read_fasta(path)}
        except FastaError as exc:
            raise DataError(str(exc)) from exc
    try:
        data = json.loads(_open_text(path).read())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected {{gene_id: [sequence, ...]}}")
    out = {}
    for gene_id, seqs in data.items():
        seq = seqs[0] if isinstance(seqs, list) and seqs else seqs if isinstance(seqs, str) else ""
        out[str(gene_id)] = str(seq).upper()
    return out


def prepare(gene_info: Path | None, summaries: Path, sequences: Path, out: Path, *, test_size: int = 2513,
            val_size: int = 1000, seed: int = 42, limit: int | None = None, taxonomy: Path | None = None,
            exon_counts: Path | None = None) -> dict:
    info = read_gene_info(gene_info) if gene_info else {}
    organisms = read_taxonomy(taxonomy) if taxonomy else {}
    file_organism = organism_from_file_name(gene_info) if gene_info else ""
    exons = read_exon_counts(exon_counts) if exon_counts else {}
    texts = read_summaries(summaries)
    seqs = read_gene_sequences(sequences)
    skipped: dict[str, list[str]] = {"no-summary": [], "no-sequence": [], "invalid-sequence": []}
    kept = []
    for gene_id in sorted(texts, key=lambda g: (len(g), g)):
        summary = " ".join(texts[gene_id].split())
        if not summary:
            skipped["no-summary"].append(gene_id)
            continue
        seq = seqs.get(gene_id, "")
        if not seq:
            skipped["no-sequence"].append(gene_id)
            continue
        if not set(seq) <= DNA_LETTERS:
            skipped["invalid-sequence"].append(gene_id)
            continue
        kept.append(gene_id)
    order = list(kept)
    random.Random(seed).shuffle(order)
    if limit:
        order = order[:limit]
    if test_size + val_size >= len(order):
        raise DataError(f"{len(order)} usable genes cannot hold test {test_size} + val {val_size} + train")
    splits = {"test": order[:test_size], "val": order[test_size:test_size + val_size],
              "train": order[test_size + val_size:]}
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, genes in splits.items():
        folder = out / split
        folder.mkdir(exist_ok=True)
        (folder / "seq.json").write_text(json.dumps({g: [seqs[g]] for g in genes}))
        qa = [{"Gene Id": g, "Summary": " ".join(texts[g].split()),
               **({"Name": info[g]["symbol"]} if info.get(g, {}).get("symbol") else {})} for g in genes]
        kw = [{"Gene Id": g, "Q": question, "A": answer} for g in genes
              for question, answer in keyword_answers(
                  info.get(g, {}), organisms.get(info.get(g, {}).get("tax_id", ""), file_organism),
                  exons.get(g, "")).items()]
        (folder / "qa_summary_rule.json").write_text(json.dumps(qa, indent=0))
        (folder / "qa_kw.json").write_text(json.dumps(kw, indent=0))
        (folder / "qa_text_manual.json").write_text("[]")
        counts[split] = {"summary": len(qa), "keyword": len(kw)}
    mapping = {"seed": seed, "sizes": {k: len(v) for k, v in splits.items()}, "qa": counts,
               "inputs": {"gene_info": str(gene_info) if gene_info else None, "summaries": str(summaries),
                          "sequences": str(sequences), "taxonomy": str(taxonomy) if taxonomy else None,
                          "exon_counts": str(exon_counts) if exon_counts else None},
               "skipped": {k: len(v) for k, v in skipped.items()},
               "genes": {g: split for split, genes in splits.items() for g in genes}}
    (out / "split_mapping.json").write_text(json.dumps(mapping, indent=1))
    (out / "skipped.json").write_text(json.dumps(skipped, indent=1))
    return mapping


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gene-info", type=Path,
                        help="NCBI gene_info TSV (plain or .gz): symbol, name, locus type, chromosome, taxon")
    parser.add_argument("--summaries", type=Path, required=True, help="GeneID -> summary (TSV or JSON)")
    parser.add_argument("--sequences", type=Path, required=True, help="{gene_id: [seq]} JSON or FASTA")
    parser.add_argument("--taxonomy", type=Path, help="NCBI taxonomy names.dmp: organism names by tax_id")
    parser.add_argument("--exon-counts", type=Path, help="TSV GeneID<TAB>exon count")
    parser.add_argument("--out", type=Path, required=True, help="output folder (train/ val/ test/)")
    parser.add_argument("--test-size", type=int, default=2513)
    parser.add_argument("--val-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--limit", type=int, default=None, help="keep only this many genes (after shuffling)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="smoke: 100 genes, the seed's test mode")


def run(args) -> int:
    preset = PRESETS.get(args.preset or "", {})
    try:
        mapping = prepare(args.gene_info, args.summaries, args.sequences, args.out,
                          test_size=preset.get("test_size", args.test_size),
                          val_size=preset.get("val_size", args.val_size), seed=args.seed,
                          limit=preset.get("limit", args.limit), taxonomy=args.taxonomy,
                          exon_counts=args.exon_counts)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v} genes ({mapping['qa'][k]['summary']} summary, "
                                            f"{mapping['qa'][k]['keyword']} keyword QA)"
                                            for k, v in mapping["sizes"].items())
          + "; skipped " + ", ".join(f"{k} {v}" for k, v in mapping["skipped"].items()))
    return 0
