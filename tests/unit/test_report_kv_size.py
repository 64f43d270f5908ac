"""The report's measured KV size comes from payload bytes, so a batched (GPU) job is measured like a one-sample
(CPU) job; rows written before payload bytes were recorded keep their allocated figure."""

from __future__ import annotations

import pytest

from eval.report.kv_size import COMPUTED, MEASURED, kv_fraction
from eval.report.layout import groups
from eval.results import load_rows
from tests.unit.fake_results import fake_job

ROW = {
    "k_sparsity": 0.5, "v_sparsity": 0.0, "k_direction": "token", "v_direction": "token", "k_scorer": "magnitude",
    "v_scorer": "magnitude", "k_sparsity_measured": 0.5, "v_sparsity_measured": 0.0, "head_dim": 64,
    "mode": "compressed", "dense_kv_bytes": 1000,
}  # fmt: skip


def test_measured_figure_is_payload_over_dense():
    batched = {**ROW, "kv_bytes": None, "kv_payload_bytes": 450}  # batch 16: no allocated bytes recorded
    assert kv_fraction(batched) == (0.45, MEASURED)
    assert kv_fraction({**batched, "kv_bytes": 600}) == (0.45, MEASURED)  # batch 1: payload, not allocated
    # eviction: 250 of the 1000 dense bytes were evicted, so the cache is priced against all 1000
    evicted = {**batched, "kv_payload_bytes": 300, "dense_kv_bytes": 750, "kv_evicted_bytes": 250}
    assert kv_fraction(evicted) == (0.3, MEASURED)


@pytest.mark.parametrize("payload", ["absent", None, float("nan")])
def test_rows_without_payload_keep_the_allocated_figure(payload):
    row = {**ROW, "kv_bytes": 600} | ({} if payload == "absent" else {"kv_payload_bytes": payload})
    assert kv_fraction(row) == (0.6, MEASURED)
    assert kv_fraction({**row, "kv_bytes": None})[1] == COMPUTED


def test_report_measures_a_batched_job_like_a_one_sample_job(tmp_path):
    compressed = dict(
        mode="compressed", k_sparsity=0.5, k_sparsity_measured=0.5, policy="K0.5", dense_kv_bytes=10
    )
    scores = {"vt": [100.0, 0.0]}
    fake_job(tmp_path, "dense", scores)
    fake_job(tmp_path, "one", scores, kv_bytes=12, kv_payload_bytes=4, **compressed)
    fake_job(tmp_path, "batched", scores, kv_bytes=None, kv_payload_bytes=4, samples_id="p1", **compressed)
    (group,) = groups(load_rows(tmp_path), tmp_path, noise=False)
    jobs = group.jobs.set_index("run_id")
    for run_id in ("one", "batched"):
        assert (jobs.loc[run_id, "kv_fraction"], jobs.loc[run_id, "kv_source"]) == (0.4, MEASURED)
    assert jobs.loc["dense", "kv_source"] == COMPUTED  # mask mode: nothing measured


def test_closed_form_prices_an_error_head_allocation_in_the_variable_layout():
    """error_head keeps differ between a layer's heads, so its stores use the variable layout: an 8-byte bitmap, a
    4-byte offset and 19 values of 2 bytes at D 64, s 0.7 (50 B of 128), where uniform pruning's fixed layout
    pads 19 values to 48 bytes (56 B). `error` keeps one count per layer: the fixed layout at the mean keep."""
    row = {**ROW, "mode": "mask", "k_sparsity": 0.7, "k_sparsity_measured": 1 - 19 / 64, "v_sparsity": 0.7,
           "v_sparsity_measured": 1 - 19 / 64}  # fmt: skip
    assert kv_fraction({**row, "allocation": "error_head"}) == (50 / 128, COMPUTED)
    assert kv_fraction({**row, "allocation": "error"}) == (56 / 128, COMPUTED)
    assert kv_fraction(row) == (56 / 128, COMPUTED)
