"""scripts/plot_decode.py's merge of several bench_decode runs (one format per device session) into one report."""

from __future__ import annotations

import pytest

from tests.unit.script_module import load_script


def _report(fmt: str, batches: list[int], largest: int, context: int = 16384, device: str = "GPU A") -> dict:
    points = [dict(fmt=fmt, batch=b, oom=False) for b in batches]
    return dict(
        model="llama3_8b",
        context=context,
        device=device,
        points=points,
        max_batch={fmt: dict(batch=largest, point=dict(fmt=fmt, batch=largest, oom=False))},
    )


def test_merge_keeps_every_runs_points_and_largest_batches():
    merged = load_script("plot_decode").merged_reports(
        [
            _report("dense-static", [1, 8], 56),
            _report("K0.7V0.7-word-fp8-static", [1, 8], 196, device="GPU B"),
        ]
    )
    assert [(p["fmt"], p["batch"]) for p in merged["points"]] == [
        ("dense-static", 1),
        ("dense-static", 8),
        ("K0.7V0.7-word-fp8-static", 1),
        ("K0.7V0.7-word-fp8-static", 8),
    ]
    assert {k: v["batch"] for k, v in merged["max_batch"].items()} == {
        "dense-static": 56,
        "K0.7V0.7-word-fp8-static": 196,
    }
    assert merged["device"] == "GPU A + GPU B" and merged["context"] == 16384


def test_runs_of_one_device_name_it_once():
    merged = load_script("plot_decode").merged_reports(
        [_report("dense-static", [1], 56), _report("K0.7V0.7", [1], 73)]
    )
    assert merged["device"] == "GPU A"


def test_runs_of_another_context_are_refused():
    with pytest.raises(ValueError, match="share the model and the context"):
        load_script("plot_decode").merged_reports(
            [_report("dense-static", [1], 56), _report("K0.7V0.7", [1], 73, context=8192)]
        )


def test_a_format_in_two_runs_is_refused():
    with pytest.raises(ValueError, match=r"\['dense-static'\] appear in more than one"):
        load_script("plot_decode").merged_reports(
            [_report("dense-static", [1], 56), _report("dense-static", [8], 56)]
        )
