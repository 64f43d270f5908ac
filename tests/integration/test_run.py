"""run.py as users drive it: config composition, bad input, and sweeps that write, skip and resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from eval.job import Job
from mustafar import models
from mustafar.config import ConfigError
from mustafar.models import ModelUnavailable

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def composed(overrides: list[str], hydra_cfg: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=hydra_cfg)


def to_dict(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def test_every_model_key_is_set_without_plus_and_defaults_match_the_dataclass():
    """conf/model/_defaults.yaml holds every ModelConfig key at the dataclass's default (so a model config's job id
    is what its own keys make it), and a key a model file does not name is set without `+`."""
    from dataclasses import asdict

    import yaml

    defaults = yaml.safe_load((CONF / "model" / "_defaults.yaml").read_text())
    dataclass_defaults = asdict(models.ModelConfig())
    assert defaults == {k: v for k, v in dataclass_defaults.items() if k not in ("name", "source")}
    for option in options("model"):
        own = yaml.safe_load((CONF / "model" / f"{option}.yaml").read_text())
        got = to_dict(composed([f"model={option}"]))["model"]
        assert got == {**dataclass_defaults, **{k: v for k, v in own.items() if k != "defaults"}}
    cfg = to_dict(
        composed(["model=llama3", "model.max_length=4000", "model.chat_template=false", "model.seed=3"])
    )
    assert (cfg["model"]["max_length"], cfg["model"]["chat_template"], cfg["model"]["seed"]) == (
        4000,
        False,
        3,
    )


@pytest.mark.parametrize("group", ["model", "kv", "benchmark", "logger"])
def test_every_option_of_every_group_composes_and_validates(group):
    for option in options(group):
        cfg = to_dict(
            composed([f"{group}={option}", "model=tiny" if group != "model" else f"model={option}"])
        )
        cfg.pop("hydra", None)
        if cfg["model"]["source"] == "hub":  # tests are offline: a hub model is refused, saying how to get it
            with pytest.raises(ModelUnavailable, match=f"cannot load model '{option}'.*hf download"):
                Job.from_config(cfg)
            continue
        assert Job.from_config(cfg).job_id


def test_experiments_compose_with_a_sweep():
    for option in options("experiment"):
        cfg = composed([f"+experiment={option}"], hydra_cfg=True)
        assert cfg.sweep == option
        assert cfg.hydra.sweeper.params, f"experiment {option} defines no sweep"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("kv.k_sparsity=1.5", "kv.k_sparsity=1.5 is outside [0, 1)"),
        (
            "kv.v_scorer=entropy",
            "kv.v_scorer='entropy' is not allowed; choose one of magnitude, output_aware, think",
        ),
        ("kv.window=-4", "kv.window=-4 must be an integer >= 0"),
        ("benchmark.length=8192", "benchmark.length=8192 exceeds the model's context window of 4096 tokens"),
        ("benchmark.tasks=[niah_single_1,bogus]", "unknown RULER task 'bogus'"),
        ("benchmark.n=0", "benchmark.n=0 must be an integer >= 1"),
        ("benchmark.tasks=[]", "benchmark.tasks=[] must be a non-empty list of task names"),
        ("model.architecture.head_dim=0", "model.architecture.head_dim=0 must be an integer >= 1"),
        (
            "model.architecture.hidden_size=abc",
            "model.architecture.hidden_size='abc' must be an integer >= 1",
        ),
        ("logger.mode=sometimes", "logger.mode='sometimes' is not allowed"),
        ("seed=-1", "seed=-1 must be in [0, 2**32 - 1]"),
        ("+sede=7", "unknown top-level key(s) ['sede']"),
        # a key added with + that nothing reads: the job ran the default under a job id of its own
        (
            "+benchmark.lenght=2048",
            "benchmark.lenght is not a key of benchmark=ruler; its keys are name, length",
        ),
        (
            "benchmark=longbench +benchmark.length=2048",
            "benchmark.length is not a key of benchmark=longbench",
        ),
        (
            "+model.architecture.num_hiden_layers=4",
            "model.architecture.num_hiden_layers is not a key of the llama",
        ),
        (
            "+logger.projekt=x",
            "logger.projekt is not a key of logger=wandb; its keys are name, mode, project, entity",
        ),
        ("benchmark.tasks=[vt,cwe,vt]", "benchmark.tasks=['vt', 'cwe', 'vt'] names vt more than once"),
        ("sweep=..", "sweep='..' must be a plain folder name inside results_dir"),
        ("sweep=.", "sweep='.' must be a plain folder name inside results_dir"),
        (
            f"benchmark.tasks=[qa_2] benchmark.hotpot_path={ROOT / 'pyproject.toml'}",
            f"benchmark.hotpot_path='{ROOT / 'pyproject.toml'}' is not a JSON file (HotpotQA",
        ),
        ("kv.evict_pool=4", "kv.evict_pool=4 must be odd"),  # checked even without eviction (moot, still bad)
        ("kv.evict_window=-3", "kv.evict_window=-3 must be an integer >= 1 with kv.evict=none"),
        (
            "benchmark=longbench benchmark.longbench_e=maybe",
            "benchmark.longbench_e='maybe' must be true or false",
        ),
        ("seed=4294967296", "seed=4294967296 must be in [0, 2**32 - 1]"),
        # a uniform list runs as the uniform policy (one job id), but must still fit the tiny model's 2 layers
        ("kv.k_layer_sparsity=[0.5,0.5,0.5]", "kv.k_layer_sparsity has 3 entries but the model has 2 layers"),
        ("kv.v_layer_sparsity=[0.3,0.7,0.5]", "kv.v_layer_sparsity has 3 entries but the model has 2 layers"),
        # keep rules against the head dim read from the model's config (tiny: 64)
        (
            "kv.k_sparsity=0.7 kv.keep_rule=nm4",
            "kv.keep_rule='nm4' keeps the same count in every 4-channel group, but kv.k sparsity 0.7 keeps 19 of "
            "head_dim=64 (1.1875 per group)",
        ),
        (
            "kv.v_sparsity=0.7 kv.keep_rule=word model.architecture.head_dim=48 model.architecture.hidden_size=192",
            "kv.keep_rule='word' splits each token into 32-channel words, but the model has head_dim=48",
        ),
        # a sparsity whose rule keeps nothing: round(0.005 · 64) = 0 entries a token, round(0.01 · 32) = 0 of a
        # channel's 32-token group
        (
            "kv.k_sparsity=0.995",
            "kv.k_sparsity=0.995 keeps 0 of head_dim=64 under kv.keep_rule='exact': nothing would be kept; use a "
            "sparsity of at most 0.9921",
        ),
        (
            "kv.v_sparsity=0.99 kv.v_direction=channel",
            "kv.v_sparsity=0.99 keeps 0 of each channel's 32-token group",
        ),
    ],
)
def test_bad_values_fail_before_model_work(override, message):
    cfg = to_dict(composed(["model=tiny", "logger=wandb", *override.split()]))
    cfg.pop("hydra", None)
    with pytest.raises(ValueError) as err:
        Job.from_config(cfg)
    assert message in str(err.value)


def test_a_missing_gguf_file_is_named_before_model_work():
    """model.gguf_file that the package lacks: one error naming it and the files there (was transformers' OSError
    pointing at a hub URL, a traceback)."""
    cfg = to_dict(composed(["model=smollm2", "logger=none", "model.gguf_file=nope.gguf"]))
    cfg.pop("hydra", None)
    with pytest.raises(
        ModelUnavailable, match=r"model.gguf_file='nope.gguf': no such file .*its GGUF files: \S+\.gguf"
    ):
        Job.from_config(cfg)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # the published top-k count int(64 · 0.01) = 0: refused
        ("kv.k_sparsity=0.99 kv.k_scorer=output_aware", "kv.k_sparsity=0.99 keeps 0 of head_dim=64 under"),
        # the published magnitude threshold keeps 64 - int(0.99 · 64) + 1 = 2 a token, 32 - int(0.97 · 32) + 1 = 2
        # of a channel's group: accepted
        ("kv.k_sparsity=0.99", None),
        ("kv.v_sparsity=0.97 kv.v_direction=channel", None),
    ],
)
def test_reference_rules_are_refused_only_where_their_own_count_is_zero(override, message):
    cfg = to_dict(composed(["model=tiny", "logger=none", "kv.keep_rule=reference", *override.split()]))
    cfg.pop("hydra", None)
    if message is None:
        Job.from_config(cfg)
        return
    with pytest.raises(ValueError, match=message):
        Job.from_config(cfg)


def test_reference_magnitude_at_s_0_99_keeps_two_entries_a_token(tiny_llama):
    import mustafar

    ids = torch.randint(1, 256, (1, 40), generator=torch.Generator().manual_seed(0))
    with mustafar.prune(tiny_llama, k_sparsity=0.99, keep_rule="reference", window=8) as cache:
        tiny_llama(ids, past_key_values=cache)
    keys = cache.layers[0].keys[:, :, :32]  # the 32 tokens past the window
    assert (keys != 0).sum(-1).eq(2).all()  # n - int(s·n) + 1 (no ties among random floats)
    assert cache.stats().k_kept == 2 * 32 * 2 * len(cache.layers)


def test_compressed_mode_on_a_gpu_refuses_head_dims_without_kernels(monkeypatch):
    monkeypatch.setattr(models, "cuda_available", lambda: True)  # the GPU refusal is checked without a GPU
    cfg = to_dict(
        composed(["model=tiny", "model.architecture.head_dim=32", "kv.mode=compressed", "device=cuda"])
    )
    with pytest.raises(ConfigError, match="supports head_dim 64, 128 .*model tiny has head_dim=32"):
        Job.from_config(cfg)


def run_py(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_bad_value_exits_nonzero_with_one_line():
    proc = run_py("model=tiny", "kv.k_sparsity=1.0", "logger=none")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: kv.k_sparsity=1.0 is outside [0, 1): sparsity is the fraction of entries set to zero"
    )


SWEEP = [
    "-m",
    "model=tiny",
    "benchmark.tasks=[vt]",
    "benchmark.n=1",
    "kv.k_sparsity=0,0.5",
    "logger=none",
    "sweep=t",
]


@pytest.mark.slow
def test_multirun_writes_skips_and_resumes(tmp_path):
    first = run_py(*SWEEP, f"results_dir={tmp_path}")
    assert first.returncode == 0, first.stderr[-2000:]
    results = sorted((tmp_path / "t").glob("*/result.json"))
    assert len(results) == 2
    rows = json.loads(results[0].read_text())["rows"]
    assert {r["task"] for r in rows} == {"vt", "avg"} and all(r["model"] == "tiny" for r in rows)
    table = (tmp_path / "t" / "summary.md").read_text()
    assert "dense" in table and "K0.5" in table
    stamps = {p: p.stat().st_mtime_ns for p in results}

    second = run_py(
        *SWEEP, f"results_dir={tmp_path}"
    )  # everything done: both jobs skipped, nothing rewritten
    assert second.returncode == 0 and second.stdout.count("[mustafar] skip") == 2
    assert {p: p.stat().st_mtime_ns for p in results} == stamps

    # an interrupted job: its predictions were written, its result was not -> it resumes from the predictions
    victim = results[1]
    predictions = victim.parent / "predictions" / "vt.jsonl"
    pred_stamp = predictions.stat().st_mtime_ns
    victim.unlink()
    third = run_py(*SWEEP, f"results_dir={tmp_path}")
    assert third.returncode == 0, third.stderr[-2000:]
    assert third.stdout.count("[mustafar] skip") == 1
    assert victim.exists() and predictions.stat().st_mtime_ns == pred_stamp
    assert results[0].stat().st_mtime_ns == stamps[results[0]]


@pytest.mark.slow
def test_single_run_after_an_earlier_job_shows_both_apart(tmp_path):
    """`python run.py` after an n=1 run in the same sweep folder: two lines told apart by benchmark.n, the job
    just run marked `*`, never the old job's numbers in its place."""
    args = ["model=tiny", "benchmark.tasks=[vt]", "logger=none", f"results_dir={tmp_path}"]
    assert run_py(*args, "benchmark.n=1").returncode == 0
    proc = run_py(*args, "benchmark.n=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("|") and "dense" in line]
    assert len(lines) == 2 and "benchmark.n" in proc.stdout
    (current,) = [line for line in lines if line.startswith("| *")]
    assert [c.strip() for c in current.split("|")][3] == "2"  # the marked line is the n=2 job
    assert len(list((tmp_path / "default").glob("*/result.json"))) == 2


FIXTURES = ROOT / "tests" / "fixtures" / "longbench" / "data"


@pytest.mark.slow
def test_longbench_end_to_end_on_fixtures(tmp_path):
    """run.py benchmark=longbench on the tiny model: predictions, per-task scores, categories, table, re-scoring."""
    tasks = "[hotpotqa,gov_report,trec,multifieldqa_zh,lcc]"
    proc = run_py(
        "model=tiny",
        "benchmark=longbench",
        f"benchmark.data_dir={FIXTURES}",
        f"benchmark.tasks={tasks}",
        "benchmark.n=2",
        "kv=k50v50",
        "logger=none",
        f"results_dir={tmp_path}",
        "sweep=lb",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (job,) = (tmp_path / "lb").glob("*/result.json")
    rows = json.loads(job.read_text())["rows"]
    tasks_scored = {r["task"]: r for r in rows if r["kind"] == "task"}
    assert set(tasks_scored) == {"hotpotqa", "gov_report", "trec", "multifieldqa_zh", "lcc"}
    assert (
        tasks_scored["hotpotqa"]["metric"] == "qa_f1_score"
        and tasks_scored["lcc"]["metric"] == "code_sim_score"
    )
    assert all(r["n"] == 2 and 0 <= r["value"] <= 100 for r in tasks_scored.values())
    summary = {r["task"]: r["value"] for r in rows if r["kind"] == "summary"}
    assert summary["Multi-Doc QA"] == tasks_scored["hotpotqa"]["value"]
    assert summary["Code"] == tasks_scored["lcc"]["value"]
    for task in tasks_scored:
        records = (job.parent / "predictions" / f"{task}.jsonl").read_text().splitlines()
        assert len(records) == 2 and all("pred" in json.loads(r) for r in records)
    assert "Multi-Doc QA" in (tmp_path / "lb" / "summary.md").read_text()
    rescore = subprocess.run(
        [sys.executable, "-m", "eval.longbench.score", str(job.parent)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rescore.returncode == 0, rescore.stderr[-2000:]
    assert "hotpotqa" in rescore.stdout


def test_longbench_missing_data_is_a_clear_error(tmp_path):
    proc = run_py(
        "model=tiny",
        "benchmark=longbench",
        f"benchmark.data_dir={tmp_path / 'nowhere'}",
        "benchmark.tasks=[hotpotqa]",
        "logger=none",
        f"results_dir={tmp_path}",
    )
    assert proc.returncode == 2
    assert "error: LongBench data folder" in proc.stderr and "nowhere" in proc.stderr
    assert "benchmark.data_dir=" in proc.stderr  # says how to provide the data


def test_a_ruler_job_keeps_its_id_when_its_tasks_are_reordered_or_an_unread_data_path_is_set(tmp_path):
    """RULER runs its tasks in one order, each seeded on its own, and reads a QA or essay path only for a task that
    needs it: neither a reordered list nor an unread path changes the samples, so neither may give the finished job
    a second id (it would be run again). A path a listed task reads still does."""
    squad, other = tmp_path / "dev-v2.0.json", tmp_path / "other.json"
    for path in (squad, other):
        path.write_text(json.dumps({"data": []}))

    def job_id(*overrides: str) -> str:
        cfg = to_dict(composed(["model=tiny", "benchmark=ruler", *overrides]))
        cfg.pop("hydra", None)
        return Job.from_config(cfg).job_id

    base = job_id("benchmark.tasks=[vt,cwe]")
    assert job_id("benchmark.tasks=[cwe,vt]") == base
    assert job_id("benchmark.tasks=[vt,cwe]", f"benchmark.squad_path={squad}") == base
    assert job_id("benchmark.tasks=[vt,cwe]", f"benchmark.essay_path={tmp_path}") == base
    with_qa = job_id("benchmark.tasks=[vt,qa_1]", f"benchmark.squad_path={squad}")
    assert with_qa == job_id("benchmark.tasks=[qa_1,vt]", f"benchmark.squad_path={squad}")
    assert with_qa != job_id("benchmark.tasks=[vt,qa_1]", f"benchmark.squad_path={other}")


def test_committed_ruler_jobs_keep_their_ids():
    """The identity rule above leaves every committed RULER job's stored benchmark identity as it is (their task
    lists are in run order and set no unread path), so no finished result is orphaned by it."""
    from eval import registry

    files = sorted((ROOT / "results").glob("**/jobs/*.json"))
    assert len(files) >= 50
    for path in files:
        stored = json.loads(path.read_text(encoding="utf-8"))["identity"]["benchmark"]
        rebuilt = registry.identity(stored)
        rebuilt = {k: v for k, v in rebuilt.items() if not (k in ("squad_path", "hotpot_path") and v is None)}
        assert rebuilt == stored, path.name
