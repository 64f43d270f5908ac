"""Tables -> markdown, LaTeX and CSV files (atomic writes), with a caption that says what the numbers are."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from eval.results import atomic_write_text

DIGITS = {"K": 2, "V": 2, "K meas.": 3, "V meas.": 3, "KV size": 3, "n/task": 0, "p": 4}
DIGITS_BY_PART = {
    "×": 2,
    "TTFT": 3,
    "tok/s": 3,
    "bytes": 3,
    "KV/dense": 3,
    "batch": 0,
}  # decode-speed columns


def _digits(column: str) -> int:
    if column in DIGITS:
        return DIGITS[column]
    return next((d for part, d in DIGITS_BY_PART.items() if part in column), 2)


def _formatted(table: pd.DataFrame) -> pd.DataFrame:
    """Strings for display: 2 decimals for scores, 3 for fractions, blanks for missing values; a column with
    `<column> lo` / `<column> hi` siblings (a 95% CI) becomes `value [lo, hi]`, the siblings dropped."""
    out = table.copy().astype(object)
    for column in table.columns:
        if pd.api.types.is_numeric_dtype(table[column]):
            digits = _digits(column.removesuffix(" lo").removesuffix(" hi"))
            sign = "+" if column.startswith("Δ") else ""
            out[column] = [f"{x:{sign}.{digits}f}" if pd.notna(x) else "" for x in table[column]]
        else:
            out[column] = [
                "" if x is None or (isinstance(x, float) and pd.isna(x)) else x for x in table[column]
            ]
    for column in ci_columns(table):
        low, high = out.pop(f"{column} lo"), out.pop(f"{column} hi")
        out[column] = [f"{v} [{lo}, {hi}]" if lo and hi else v for v, lo, hi in zip(out[column], low, high)]
    return out


def ci_columns(table: pd.DataFrame) -> list[str]:
    """Columns that come with a 95% CI (`<column> lo`, `<column> hi`)."""
    return [c for c in table.columns if f"{c} lo" in table and f"{c} hi" in table]


def markdown(table: pd.DataFrame, caption: str) -> str:
    shown = table.drop(columns=[f"{c} {end}" for c in ci_columns(table) for end in ("lo", "hi")])
    align = ["right" if pd.api.types.is_numeric_dtype(shown[c]) else "left" for c in shown.columns]
    body = _formatted(table).to_markdown(index=False, disable_numparse=True, colalign=align)
    return f"{caption}\n\n{body}\n"


def latex(table: pd.DataFrame, caption: str) -> str:
    body = _formatted(table).to_latex(index=False, escape=True, column_format="l" * len(table.columns))
    return f"% {caption}\n{body}"


def write(table: pd.DataFrame, caption: str, stem: Path) -> list[Path]:
    """stem.md, stem.tex, stem.csv; returns the paths."""
    paths = [stem.with_suffix(s) for s in (".md", ".tex", ".csv")]
    atomic_write_text(paths[0], markdown(table, caption))
    atomic_write_text(paths[1], latex(table, caption))
    atomic_write_text(paths[2], table.to_csv(index=False, float_format="%.4g"))
    return paths
