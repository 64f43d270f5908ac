"""Fixtures shared by the sweep-harness tests."""

from __future__ import annotations

import pytest

from eval.job import Job
from tests.integration.sweep_jobs import job


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Job:
    """One dense job run to completion (its predictions let later tests re-run it in a second)."""
    done = job(results_dir=tmp_path_factory.mktemp("results"))
    assert done.run() == done.result_path
    return done
