"""Tables -> markdown, LaTeX and CSV files (atomic writes), with a caption that says what the numbers are."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mustafar.results import atomic_write_text

DIGITS = {"K": 2, "V": 2, "K meas.": 3, "V meas.": 3, "KV size": 3, "n/task": 0}


def _formatted(table: pd.DataFrame) -> pd.DataFrame:
    """Strings for display: 2 decimals for scores, 3 for fractions, blanks for missing values."""
    out = table.copy().astype(object)
    for column in table.columns:
        if pd.api.types.is_numeric_dtype(table[column]):
            digits = DIGITS.get(column, 2)
            out[column] = [f"{x:.{digits}f}" if pd.notna(x) else "" for x in table[column]]
        else:
            out[column] = [
                "" if x is None or (isinstance(x, float) and pd.isna(x)) else x for x in table[column]
            ]
    return out


def markdown(table: pd.DataFrame, caption: str) -> str:
    return f"{caption}\n\n{_formatted(table).to_markdown(index=False)}\n"


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
