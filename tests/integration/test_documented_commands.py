"""Every command line the README and experiments/*/README.md give, checked as a reader would run it, without
running a model: `python run.py ...` composes through Hydra (each point of a multirun) and passes the job's
validation; scripts and `python -m` modules accept the documented arguments (argparse is stopped right after
parsing); `make` targets exist; GPU-only benchmarks refuse on a CPU with one line; referenced result paths exist;
and the numbers the README quotes from committed result files match those files."""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import re
import runpy
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from eval.choices import bad_choice
from eval.job import Job
from mustafar.models import ModelUnavailable

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
DOCS = [ROOT / "README.md", ROOT / "experiments" / "README.md", *sorted(ROOT.glob("experiments/*/README.md"))]
COMMAND = re.compile(r"^(?:[A-Z_]+=\S+ )*(?:nice -n \d+ )?(?:python3?|make) \S")


def _normalize(line: str) -> str:
    """One shell line as its command: `VAR=value; cmd` expanded, env assignments and `nice` dropped."""
    parts = [p.strip() for p in line.split(";")]
    env = dict(p.split("=", 1) for p in parts[:-1] if re.fullmatch(r"[A-Z_]+=\S+", p))
    line = parts[-1]
    for key, value in env.items():
        line = line.replace(f"${key}", value)
    line = re.sub(r"^(?:[A-Z_]+=\S+ )+", "", line)
    return re.sub(r"^nice -n \d+ ", "", line)


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) for every `python ...` / `make ...` line of a fenced shell block or an inline code span."""
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        where = str(path.relative_to(ROOT))
        for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = " ".join(line.split(" #", 1)[0].split())
                if line and not line.startswith("#"):
                    found.append((where, _normalize(line)))
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for span in re.findall(r"`([^`]+)`", prose):
            span = " ".join(span.split())
            if COMMAND.match(span):
                found.append((where, _normalize(span)))
    return list(dict.fromkeys(found))


COMMANDS = documented_commands()
RUN_PY = [(f, c) for f, c in COMMANDS if re.match(r"python3? run\.py( |$)", c)]
SCRIPTS = [(f, c) for f, c in COMMANDS if re.match(r"python3? (?!run\.py)", c)]
MAKE = [(f, c) for f, c in COMMANDS if c.startswith("make ")]


def test_the_docs_give_commands_of_every_kind():
    assert len(RUN_PY) > 30 and len(SCRIPTS) > 20 and len(MAKE) >= 4, (len(RUN_PY), len(SCRIPTS), len(MAKE))


# --- python run.py ------------------------------------------------------------------------------------------------


@functools.cache
def _validate(cfg_json: str) -> str:
    """The job id of one composed config, or the expected refusal of a placeholder (hub weights, LongBench data)."""
    cfg = json.loads(cfg_json)
    try:
        return Job.from_config(cfg).job_id
    except ModelUnavailable:  # offline: a hub model is refused naming how to get it
        assert cfg["model"]["source"] == "hub"
        return "hub"
    except FileNotFoundError as err:  # a placeholder data folder such as /path/to/LongBench/data
        assert cfg["benchmark"].get("data_dir") and "does not exist" in str(err), err
        return "no-data"


def run_py_jobs(command: str) -> list[str]:
    """What `python run.py <args>` would run: the job id of every multirun point (run.py's own pre-check first)."""
    args = [a for a in shlex.split(command)[2:] if a not in ("-m", "--multirun", "...")]
    error = bad_choice(args, CONF)
    assert error is None, error
    parsed = OverridesParser.create().parse_overrides(args)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the launcher plugins' ConfigStore deprecation notice
        hydra_cfg = compose("config", overrides=fixed, return_hydra_config=True)
        given = {o.key_or_group for o in parsed}
        params = [f"{k}={v}" for k, v in (hydra_cfg.hydra.sweeper.params or {}).items() if k not in given]
        sweeps = OverridesParser.create().parse_overrides(
            params + [o.input_line for o in parsed if o.is_sweep_override()]
        )
        axes = [[f"{o.key_or_group}={v}" for v in o.sweep_string_iterator()] for o in sweeps]
        ids = []
        for combo in itertools.product(*axes):
            cfg = OmegaConf.to_container(compose("config", overrides=[*fixed, *combo]), resolve=True)
            ids.append(_validate(json.dumps(cfg, sort_keys=True)))
            if ids[-1] == "hub":  # every point of a hub model is refused alike: one is enough offline
                break
    return ids


@pytest.mark.parametrize(("doc", "command"), RUN_PY, ids=[c for _, c in RUN_PY])
def test_run_py_command_composes_and_validates(doc, command):
    assert run_py_jobs(command), f"{doc}: {command} plans no job"


def test_documented_sweeps_plan_the_committed_jobs():
    """A documented `+experiment=X` command plans the jobs committed under results/paper/X/jobs/, the jobs the
    READMEs' tables and paired comparisons come from (the same ids, so a rerun is compared and reused alike)."""
    checked = 0
    for doc, command in RUN_PY:
        match = re.search(r"\+experiment=(\w+)", command)
        jobs = ROOT / "results" / "paper" / (match.group(1) if match else "-") / "jobs"
        if not jobs.is_dir() or "model=" in command:
            continue
        committed = {p.stem for p in jobs.glob("*.json")}
        missing = sorted(set(run_py_jobs(command)) - committed)
        assert not missing, (
            f"{doc}: `{command}` plans jobs that are not in {jobs.relative_to(ROOT)}: {missing}"
        )
        checked += 1
    assert checked >= 10


# --- scripts and python -m modules --------------------------------------------------------------------------------


class _Parsed(Exception):
    pass


def _stop_after_parsing(monkeypatch) -> None:
    """Make argparse raise _Parsed once it has parsed (a usage error still exits 2, failing the test)."""
    for name in ("parse_args", "parse_intermixed_args"):
        parse = getattr(argparse.ArgumentParser, name)

        def parse_then_stop(self, args=None, namespace=None, _parse=parse):
            raise _Parsed(_parse(self, args, namespace))

        monkeypatch.setattr(argparse.ArgumentParser, name, parse_then_stop)


def _script_argv(command: str) -> list[str]:
    argv = shlex.split(re.sub(r"<[^>]*>", "x", command))[1:]  # `<job>` placeholders: any string parses
    return [a for a in argv if a not in ("[A2", "B2", "...]")]


@pytest.mark.parametrize(("doc", "command"), SCRIPTS, ids=[c for _, c in SCRIPTS])
def test_script_accepts_the_documented_arguments(doc, command, monkeypatch, capsys):
    argv = _script_argv(command)
    if argv[0] == "-m":
        module, args = argv[1], argv[2:]
        if module == "pytest":
            assert all((ROOT / a).exists() for a in args if a.startswith("tests/")), command
            return
        target = ROOT / (module.replace(".", "/") + ".py")
    else:
        target, args = ROOT / argv[0], argv[1:]
    assert target.is_file(), f"{doc}: `{command}` names {target.relative_to(ROOT)}, which does not exist"
    source = target.read_text(encoding="utf-8")
    if "ArgumentParser" not in source:  # paired_compare (run below on real jobs), kept_energy (no arguments)
        return
    _stop_after_parsing(monkeypatch)
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [str(target), *args])
    with pytest.raises(_Parsed), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if argv[0] == "-m":
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(str(target), run_name="__main__")


@pytest.mark.parametrize(("doc", "command"), MAKE, ids=[c for _, c in MAKE])
def test_make_target_exists(doc, command):
    proc = subprocess.run(["make", "-n", *shlex.split(command)[1:]], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"{doc}: `{command}`: {proc.stderr}"


# --- GPU-only benchmarks on a CPU ---------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is the CPU behaviour")
@pytest.mark.parametrize(
    "args",
    [
        ["scripts/bench_kernels.py", "--out", "OUT"],  # make bench-kernels
        ["scripts/bench_kernels.py", "--out", "OUT", "--dtype", "bf16", "--head-dim", "64"],
        ["scripts/bench_decode.py", "--model", "llama3_8b", "--context", "16384", "--out", "OUT"],
        ["scripts/bench_launch.py", "--out", "OUT"],
        ["scripts/sweep_decode.py", "--configs", "{}", "--out", "OUT"],  # undocumented GPU tools alike
        ["scripts/profile_decode.py"],
    ],
    ids=lambda a: " ".join(a),
)
def test_gpu_benchmarks_refuse_on_a_cpu_in_one_line(args, tmp_path):
    out = tmp_path / "out"
    argv = [str(out) if a == "OUT" else a for a in args]
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "needs a CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not out.exists()  # nothing written


def test_documented_benchmark_options_name_known_formats_and_rules():
    """The --keep-rules / --formats values the docs pass are ones the GPU scripts know (checked on the CPU)."""
    bench_kernels = runpy.run_path(str(ROOT / "scripts" / "bench_kernels.py"))
    bench_decode = runpy.run_path(str(ROOT / "scripts" / "bench_decode.py"))
    formats = {*bench_decode["FORMATS"], *bench_decode["STATIC_FORMATS"]}
    for doc, command in SCRIPTS:
        argv = _script_argv(command)
        for flag, known in (("--keep-rules", bench_kernels["KEEP_RULES"]), ("--formats", formats)):
            if flag in argv and "bench_launch" not in command:
                values = argv[argv.index(flag) + 1].split(",")
                assert set(values) <= set(known), (
                    f"{doc}: {command}: unknown {sorted(set(values) - set(known))}"
                )


def test_a_baseline_is_read_per_keep_rule():
    """bench_kernels --baseline compares each keep rule with the same rule's earlier time: round 29's bench holds
    three rules per size, and keyed by size alone `word` s 0.7 B 8 / 16K read word-fp8's 78 µs (its own: 92)."""
    bench_kernels = runpy.run_path(str(ROOT / "scripts" / "bench_kernels.py"))
    path = ROOT / "results" / "kernels" / "round29_h100" / "final" / "bench" / "bench.json"
    decode, _ = bench_kernels["read_baseline"](path)
    rows = json.loads(path.read_text())["decode"]
    for r in rows:
        assert decode[(r["keep_rule"], r["sparsity"], r["batch"], r["tokens"])] == r["sparse_us"]
    assert len(decode) == len(rows) > len({(r["sparsity"], r["batch"], r["tokens"]) for r in rows})
    assert round(decode[("word", 0.7, 8, 16384)]) == 92 and round(decode[("word-fp8", 0.7, 8, 16384)]) == 78


# --- reports from the committed results ---------------------------------------------------------------------------


def test_decode_speed_report_builds_from_the_committed_results(tmp_path, monkeypatch, capsys):
    """`python scripts/make_tables.py decode_speed` (experiments/decode_speed): results/decode holds two
    bench_decode reports of Llama-3-8B (round 5 and the round-3 one kept beside it); each is its own setup and its
    speed-ups are against its own dense row."""
    from eval.report.make_tables import main

    monkeypatch.chdir(ROOT)
    main(["decode_speed", "--out", str(tmp_path)])
    table = (tmp_path / "decode_speed" / "decode_speed.md").read_text()
    for report in ("bench_decode.json", "bench_decode_round3.json"):
        dense = [r for r in table.splitlines() if r.startswith("| Llama3  | Dense  ") and report + " " in r]
        assert len(dense) == 1, report
        assert [c.strip() for c in dense[0].split("|")[-8:-1]] == ["1.00"] * 7  # its ×dense columns


def test_equal_bytes_table_is_what_the_documented_command_prints(monkeypatch, capsys):
    """experiments/eviction: the second command rebuilds results/paper/eviction/equal_bytes.md exactly."""
    (command,) = [c for _, c in SCRIPTS if "eviction_table.py results/paper/eviction" in c]
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", shlex.split(command)[1:])
    runpy.run_path(str(ROOT / "scripts" / "eviction_table.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert printed.strip() == (ROOT / "results/paper/eviction/equal_bytes.md").read_text().strip()


def test_word_quota_paired_differences_are_what_paired_compare_prints(capsys):
    """experiments/word_quota quotes `python scripts/paired_compare.py <word> <exact>` on its committed jobs."""
    jobs = ROOT / "results/paper/word_quota/jobs"
    pairs = [
        ("K0.5-V0.5-word", "K0.5-V0.5", "+0.56 [−2.78, +4.45], p = 0.62"),
        ("K0.7-V0.7-word", "K0.7-V0.7", "+0.00 [−8.89, +8.33], p = 1.00"),
    ]
    argv = []
    for a, b, _ in pairs:
        argv += [str(next(jobs.glob(f"smollm2_ruler1024_{name}_mask_*.json"))) for name in (a, b)]
    runpy.run_path(str(ROOT / "scripts/paired_compare.py"))["main"](argv)
    printed = capsys.readouterr().out.replace("-", "−").splitlines()
    readme = (ROOT / "experiments/word_quota/README.md").read_text()
    for line, (_, _, quoted) in zip(printed, pairs, strict=True):
        diff, p = re.search(r": (\S+ \[\S+ \S+\]), p = (\S+),", line).groups()
        assert f"{diff}, p = {float(p):.2f}" == quoted and quoted in readme.replace("\n", " ")


def test_quickstart_table_is_the_committed_run():
    readme = (ROOT / "README.md").read_text()
    table = re.search(r"<!-- quickstart-table -->\n```\n(.*?)```", readme, re.S).group(1)
    rows = [r for r in table.splitlines() if r.startswith("| ")]
    committed = (ROOT / "results/quickstart.md").read_text()
    assert len(rows) == 5 and all(r in committed for r in rows)  # the header and the four policies


def test_h100_kernel_column_matches_its_bench_json():
    """The README's H100 kernel ratios (graph-replayed, B >= 8, 16-32K) from the committed bench.json files: the
    fp16 `word` rows from round 29, the fp8 rows from round 35 (the fp8 key walk in fp16)."""
    readme = (ROOT / "README.md").read_text().replace("\n", " ")

    def span(run: str, rule: str, s: float) -> str:
        bench = json.loads((ROOT / "results/kernels" / run / "bench/bench.json").read_text())
        v = [
            p["speedup_graph"]
            for p in bench["decode"]
            if p["keep_rule"] == rule and p["sparsity"] == s and p["batch"] >= 8
        ]
        return f"{min(v):.2f}–{max(v):.2f}×"

    for quoted in (
        f"`word` s=0.7 **{span('round29_h100/final', 'word', 0.7)}**",
        f"s=0.5 **{span('round29_h100/final', 'word', 0.5)}**",
        f"fp8 values K0.7V0.7 (`kv=k70v70_word_fp8`) **{span('round35_h100/h100_4', 'word-fp8', 0.7)}**",
        f"K 4:8c + V 2:4 {span('round35_h100/h100_4', 'nm8ck-fp8-nm4v', 0.5)} (round 35's bench)",
    ):
        assert quoted in readme, quoted


def test_referenced_result_paths_exist():
    """Every results/... path the READMEs name exists, except what a run writes (a sweep's folder, ignored by git;
    a benchmark's --out)."""
    tracked = set(re.findall(r"^!/results/([^/\n]+)", (ROOT / ".gitignore").read_text(), re.M))
    missing = []
    for path in DOCS:
        text = path.read_text()
        outputs = set(re.findall(r"--out\s+(\S+)", text))
        for ref in re.findall(r"(?<![\w/.<])((?:\.\./)*results/[\w./-]*[\w/])", text):
            target = (path.parent / ref) if ref.startswith("..") else ROOT / ref
            first = target.resolve().relative_to(ROOT / "results").parts[0]
            if first in tracked and ref not in outputs and not target.exists():
                missing.append(f"{path.relative_to(ROOT)}: {ref}")
    assert not missing, missing
