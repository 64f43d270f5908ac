"""Paper-style reports of finished sweeps: tables (markdown, LaTeX, CSV), plots, and a W&B summary run.

`make_tables.make_tables(results_dir, sweep)` is what `scripts/make_tables.py` and the multirun-end callback call.
"""
