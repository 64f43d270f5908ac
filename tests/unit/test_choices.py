"""Unknown config-group names are one error line from run.py (Hydra printed a multi-line listing and exit 1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from eval.choices import bad_choice

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def test_known_choices_sweeps_and_other_keys_pass():
    args = ["model=tiny", "kv=dense,k50v50", "+experiment=quickstart", "hydra/launcher=joblib", "kv.window=8"]
    assert bad_choice(args, CONF) is None
    assert bad_choice(["kv=glob(k5*)"], CONF) is None  # Hydra's sweep functions are Hydra's to expand


def test_the_first_unknown_name_is_reported_with_the_allowed_ones():
    error = bad_choice(["model=tiny", "kv=dense,k50v5", "logger=foo"], CONF)
    assert error.startswith("kv='k50v5' is not a config in conf/kv/; choose one of dense, k50, k50v50,")
    assert bad_choice(["+experiment=nope"], CONF).startswith("experiment='nope' is not a config")


def test_run_py_exits_2_with_one_line():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "model=nonexistent"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: model='nonexistent' is not a config in conf/model/; choose one of gemma2_9b, gemma3_4b, llama2_7b, "
        "llama3, llama31, llama31_70b, mistral, phi3_mini, qwen25_7b, qwen3_8b, smollm2, tiny"
    ]


def test_an_unknown_kv_or_model_key_is_one_line_naming_the_keys():
    """Hydra refused `kv.nosuch=1` (no `+`) with a multi-line struct error and no list of keys."""
    error = bad_choice(["kv.k_sparsity=0.5", "kv.nosuch=1"], CONF)
    assert (
        error.startswith("kv.nosuch is not a kv key; choose one of allocation, evict,")
        and "k_sparsity" in error
    )
    assert bad_choice(["model.chat_templat=false"], CONF).startswith("model.chat_templat is not a model key")
    for fine in (["model.architecture.intermediate_size=128"], ["+kv.nosuch=1"], ["kv.evict=snapkv"]):
        assert bad_choice(fine, CONF) is None  # nested model keys; `+` keys are KVConfig's to refuse


def test_an_unknown_benchmark_or_logger_key_is_one_line_for_the_chosen_config():
    """The keys of the benchmark and logger the command line chooses (the defaults: ruler, wandb)."""
    assert bad_choice(["benchmark.lenght=2048"], CONF) == (
        "benchmark.lenght is not a benchmark key; choose one of batch_size, essay_path, hotpot_path, length, n, "
        "name, squad_path, tasks"
    )
    assert bad_choice(["benchmark=longbench", "benchmark.length=2048"], CONF).startswith(
        "benchmark.length is not a benchmark key; choose one of batch_size, data_dir, longbench_e, n, name, tasks"
    )
    assert bad_choice(["logger=none", "logger.mode=online"], CONF) == (
        "logger.mode is not a logger key; choose one of name"
    )
    for fine in (
        ["benchmark.length=2048", "logger.mode=online"],
        ["benchmark=ruler,longbench", "benchmark.n=2"],  # a key of every chosen benchmark
        ["benchmark=longbench", "benchmark.data_dir=/x"],
    ):
        assert bad_choice(fine, CONF) is None


def test_key_tables_are_the_configs_keys():
    """eval.registry.KEYS and eval.wandb_log.LOGGER_KEYS refuse every key their conf/ file does not hold: a key
    added to a YAML but not to its table would be refused on every run."""
    import yaml

    from eval.registry import KEYS
    from eval.wandb_log import LOGGER_KEYS

    for group, table in (("benchmark", KEYS), ("logger", LOGGER_KEYS)):
        for name, keys in table.items():
            assert set(keys) == set(yaml.safe_load((CONF / group / f"{name}.yaml").read_text())), (
                group,
                name,
            )
        assert set(table) == {p.stem for p in (CONF / group).glob("*.yaml")}
