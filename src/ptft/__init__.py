"""ptft: pre-training x fine-tuning studies as a Snakemake workflow."""

__version__ = "0.1.0"
