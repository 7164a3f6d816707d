"""The Snakemake report's figures and tables, computed from the stage outputs (figures.py)."""
