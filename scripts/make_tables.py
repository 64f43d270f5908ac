"""Paper-layout tables and plots of finished sweeps: see eval/report/make_tables.py (the importable module)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.report.make_tables import main  # noqa: E402

if __name__ == "__main__":
    main()
