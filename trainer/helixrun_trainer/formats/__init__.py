"""Readers for the file formats our data sets come in: FASTA/FASTQ, labelled reads, NCBI gene tables."""
