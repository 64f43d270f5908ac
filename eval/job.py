"""One job of a sweep: a (model, KV policy, benchmark) triple -> result rows on disk, W&B, and a table."""

from __future__ import annotations

import hashlib
import json
import platform
import re
import shutil
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from eval import registry, wandb_log
from eval.joblock import JobLock
from eval.results import (
    FAILED_NAME,
    SCHEMA_VERSION,
    InvalidResult,
    git_sha,
    read_predictions,
    read_result,
    unwritable,
    valid_result,
    warn,
    write_json,
    write_jsonl,
)
from eval.rows import NOT_IDENTITY, ResultRow, score_rows
from eval.runner import GenerationStats, generate_task
from mustafar import models
from mustafar.architectures import compressed_refusal
from mustafar.attention import check_keep_rules
from mustafar.config import ConfigError, KVConfig

git_sha()  # pin the code version when the job module is loaded, before any job runs

PACKAGES = ("torch", "transformers", "triton", "numpy")
TOP_LEVEL_KEYS = {
    "model",
    "kv",
    "benchmark",
    "logger",
    "results_dir",
    "sweep",
    "force",
    "seed",
    "device",
    "hydra",
}
# benchmark keys added after jobs were recorded: left out of the identity at this default, so older ids hold
LATER_DEFAULTS = {"squad_path": None, "hotpot_path": None}
# in a job folder: a force=true attempt's predictions, until its result replaces the earlier one (Job.run)
REDO_NAME = "redo"
SEEDED_BENCHMARKS = (
    "ruler",
)  # benchmarks whose samples depend on `seed` (LongBench is fixed data, decoding greedy)


def _versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def _force(value: Any) -> bool:
    """Only a boolean: `force=no` is a non-empty string, and would have meant true."""
    if not isinstance(value, bool):
        raise ConfigError(f"force={value!r} must be true or false")
    return value


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"seed={value!r} must be an integer")
    try:
        seed = int(value)
    except ValueError:
        raise ConfigError(f"seed={value!r} must be an integer") from None
    if not 0 <= seed < 2**32:  # numpy's RandomState, which generates the RULER samples, takes no other seed
        raise ConfigError(f"seed={seed} must be in [0, 2**32 - 1]")
    return seed


def _device(value: Any) -> str:
    """`auto` resolved here, before the job id is computed: a CPU and a GPU run are different jobs."""
    if value not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device={value!r} is not allowed; choose one of auto, cpu, cuda")
    if value == "cuda" and not models.cuda_available():
        raise ConfigError("device=cuda but this machine has no CUDA device; use device=cpu or device=auto")
    return models.default_device() if value == "auto" else value


@dataclass
class Job:
    model: models.ModelConfig
    policy: KVConfig
    benchmark: dict[str, Any]
    logger: dict[str, Any]
    results_dir: Path
    sweep: str
    seed: int = 42
    device: str = "auto"
    force: bool = False

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Job:
        """Validate everything that can be checked without loading a model."""
        unknown = sorted(set(cfg) - TOP_LEVEL_KEYS)
        if unknown:  # `+foo=1` adds a key nothing reads: a typo would otherwise run the default silently
            raise ConfigError(
                f"unknown top-level key(s) {unknown}; the keys are {', '.join(sorted(TOP_LEVEL_KEYS))}"
            )
        policy = KVConfig.from_mapping(cfg["kv"])
        try:
            model = models.ModelConfig(**cfg["model"])
        except TypeError as err:
            raise ConfigError(f"bad model config: {err}") from None
        device = _device(cfg.get("device", "auto"))
        seed = _seed(cfg.get("seed", 42))
        if "seed" in cfg["benchmark"]:
            raise ConfigError(
                "benchmark.seed is not a key: the top-level seed drives the benchmark's samples (seed=...)"
            )
        if policy.mode == "compressed":
            refusal = models.compressed_refusal(
                model, models.default_device() if device == "auto" else device
            )
            if refusal:
                raise ConfigError(refusal)
        # before any skip (a finished job must not answer for a policy that does not fit the model) and before the
        # model loads
        policy.check_layers(models.peek_num_layers(model))
        check_keep_rules(policy, models.peek_head_dim(model))
        registry.validate(cfg["benchmark"], models.peek_context_length(model))
        wandb_log.validate(cfg["logger"])
        sweep = str(cfg.get("sweep", "default"))
        leaves = set(sweep) == {"."}  # "." and ".." name results_dir or its parent
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", sweep) or leaves:
            raise ConfigError(
                f"sweep={sweep!r} must be a plain folder name inside results_dir (letters, digits, _ . -; not . or ..)"
            )
        return cls(
            model=model,
            policy=policy,
            benchmark=dict(cfg["benchmark"]),
            logger=dict(cfg["logger"]),
            results_dir=Path(cfg.get("results_dir", "results")),
            sweep=sweep,
            seed=seed,
            device=device,
            force=_force(cfg.get("force", False)),
        )

    @property
    def identity(self) -> dict[str, Any]:
        """Everything that decides the result; its hash names the job folder. The device and the resolved dtype
        are in it (dtype=auto is bfloat16 on CUDA, float32 on CPU); the batch size is not (it changes speed only),
        nor is the seed of a benchmark that does not use it."""
        identity = {
            "model": {**asdict(self.model), "dtype": models.resolved_dtype(self.model.dtype, self.device)},
            "kv": self.policy.to_dict(),
            "benchmark": {
                k: v
                for k, v in registry.identity(self.benchmark).items()
                if k not in NOT_IDENTITY and not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])
            },
            "device": self.device,
        }
        if self.benchmark["name"] in SEEDED_BENCHMARKS:
            identity["seed"] = self.seed
        return identity

    @property
    def job_id(self) -> str:
        digest = hashlib.sha1(json.dumps(self.identity, sort_keys=True, default=str).encode()).hexdigest()[:8]
        bench = self.benchmark["name"] + (
            f"{self.benchmark['length']}" if self.benchmark["name"] == "ruler" else ""
        )
        return f"{self.model.name}_{bench}_{_slug(self.policy.label())}_{self.policy.mode}_{digest}"

    @property
    def dir(self) -> Path:
        return self.results_dir / self.sweep / self.job_id

    @property
    def result_path(self) -> Path:
        return self.dir / "result.json"

    @property
    def done(self) -> bool:
        """A result that parses and belongs to this job; a corrupt one is reported (and the job redone)."""
        return valid_result(self.result_path, self.job_id, "redoing the job") is not None

    def run(self) -> Path | None:
        """Run unless already done or running elsewhere; returns the result file written, or None when skipped.
        A failure leaves failed.json (error and traceback) in the job folder and re-raises.

        force=true writes its predictions under redo/, apart from the earlier result and the predictions it was
        scored on, and swaps them in only once the new result is complete (`_publish`): a redo that fails, is
        interrupted or killed leaves the earlier result whole, beside its own predictions, never beside the redo's
        partial ones (a failed redo is reported by failed.json, an interrupted one by the Ctrl-C line). Moving the
        earlier result aside first would instead leave every interrupted redo without a result."""
        if not self.force and self.done:
            print(f"[mustafar] skip {self.job_id}: {self.result_path} exists (force=true to redo)")
            return None
        self.check_writable()
        lock = JobLock(self.dir)
        if not lock.acquire():
            print(f"[mustafar] skip {self.job_id}: running elsewhere ({lock.holder()})")
            return None
        try:
            if not self.force and self._finished_elsewhere():
                print(f"[mustafar] skip {self.job_id}: {self.result_path} exists (force=true to redo)")
                return None
            (self.dir / FAILED_NAME).unlink(missing_ok=True)
            shutil.rmtree(self.dir / REDO_NAME, ignore_errors=True)  # a killed redo's leftovers
            try:
                return self._compute()
            except BaseException as err:
                if not isinstance(err, KeyboardInterrupt | SystemExit):
                    self._record_failure(err)
                raise
            finally:
                shutil.rmtree(self.dir / REDO_NAME, ignore_errors=True)
        finally:
            lock.release()

    def _finished_elsewhere(self) -> bool:
        """Whether another sweep finished the job between the first check and taking the lock (a corrupt
        result was already reported by that first check)."""
        try:
            read_result(self.result_path, self.job_id)
        except InvalidResult:
            return False
        return True

    def check_writable(self) -> None:
        """Fail before the model loads when the results folder cannot take a file."""
        error = unwritable(self.dir, self.results_dir)
        if error:
            raise ConfigError(error)

    def _record_failure(self, err: BaseException) -> None:
        failure = {
            "job_id": self.job_id,
            "error": f"{err.__class__.__name__}: {err}",
            "traceback": "".join(traceback.format_exception(err)),
            "host": platform.node(),
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        try:
            write_json(self.dir / FAILED_NAME, failure)
        except OSError as write_err:
            warn(f"could not write {self.dir / FAILED_NAME}: {write_err}")

    def _compute(self) -> Path:
        device = self.device
        self._preflight_benchmark()
        if self.policy.mode == "compressed" and device != "cuda":
            print(
                "[mustafar] kv.mode=compressed on CPU runs the PyTorch reference path (slow; for checks only)"
            )
        loaded = models.load(self.model, device)
        if self.policy.mode == "compressed":
            refusal = compressed_refusal(loaded.model.config, self.model.name, device)
            if refusal:
                raise ConfigError(refusal)
        bench = registry.build(self.benchmark, loaded, self.seed)
        started = time.time()
        scores, stats = [], GenerationStats()
        for task in bench.tasks():
            records = self._predictions(loaded, bench, task, stats)
            scores.extend(bench.score(task, records))
        rows = self._rows(loaded, bench, scores, stats, device, time.time() - started)
        self._mark_inactive_policy(rows)
        result = {
            "schema": SCHEMA_VERSION,
            "job_id": self.job_id,
            "identity": self.identity,
            "provenance": bench.provenance(),
            "rows": [r.to_dict() for r in rows],
        }
        self._publish(result)
        try:
            wandb_log.log_job(self.logger, self.results_dir, self.sweep, self.job_id, self.identity, rows)
        except Exception as err:  # the result is saved: a logging failure must not mark the job failed
            warn(
                f"{self.job_id}: W&B logging failed ({err.__class__.__name__}: {str(err).splitlines()[0]}); the "
                f"result is saved in {self.result_path}; log the sweep later with `python scripts/make_tables.py "
                f"{self.sweep} --results {self.results_dir} --wandb {self.logger.get('mode', 'offline')}`"
            )
        return self.result_path

    @property
    def _predictions_dir(self) -> Path:
        """Where this attempt writes predictions: beside the result, or under redo/ for force=true (see run)."""
        return self.dir / REDO_NAME / "predictions" if self.force else self.dir / "predictions"

    def _publish(self, result: dict[str, Any]) -> None:
        """Write result.json; under force=true first swap the redo's predictions in. The earlier result goes first,
        so at every step in between the job reads as unfinished, never as the earlier result beside these
        predictions (the earlier predictions move into redo/, removed by run)."""
        if self.force:
            self.result_path.unlink(missing_ok=True)
            predictions = self.dir / "predictions"
            if predictions.exists():
                predictions.rename(self.dir / REDO_NAME / "earlier")
            self._predictions_dir.rename(predictions)
        write_json(self.result_path, result)

    def _preflight_benchmark(self) -> None:
        """Read and validate every selected LongBench file now, not after hours of generating earlier tasks."""
        if self.benchmark["name"] != "longbench":
            return
        from eval.longbench.data import resolve_data_dir, validate_files

        validate_files(
            resolve_data_dir(self.benchmark.get("data_dir")),
            self.benchmark.get("tasks"),
            bool(self.benchmark.get("longbench_e")),
            self.benchmark.get("n"),
        )

    def _mark_inactive_policy(self, rows: list[ResultRow]) -> None:
        """A pruned policy that measured zero sparsity (window >= every sequence), or an evicting one that evicted
        nothing (budget >= every prompt), is labelled, not passed off."""
        if not rows:
            return
        measured = rows[0]
        inactive = [
            f"kv.{side}_sparsity={getattr(self.policy, f'{side}_sparsity'):g}"
            for side in ("k", "v")
            if getattr(self.policy, f"{side}_sparsity") > 0
            and getattr(measured, f"{side}_sparsity_measured") == 0
        ]
        for row in rows:
            row.pruning_inactive = bool(inactive)
            if inactive:
                row.policy = f"{row.policy} [not pruned]"
        if inactive:
            warn(
                f"{self.job_id}: {', '.join(inactive)} measured 0 sparsity: kv.window={self.policy.window} "
                "covers every sequence, so nothing was pruned; the row is marked [not pruned]"
            )
        if self.policy.evict != "none" and measured.kv_evicted_bytes == 0:
            for row in rows:
                row.policy = f"{row.policy} [not evicted]"
            warn(
                f"{self.job_id}: kv.evict={self.policy.evict} evicted nothing: kv.token_budget="
                f"{self.policy.token_budget} holds every prompt; the row is marked [not evicted]"
            )

    def _predictions(self, loaded, bench, task: str, stats: GenerationStats) -> list[dict[str, Any]]:
        """Generate a task's predictions, or reuse them if an interrupted run of this job already wrote them."""
        path = self._predictions_dir / f"{task}.jsonl"
        stats_path = path.with_suffix(".stats.json")
        samples = bench.samples(task)
        resumed = None if self.force else self._resumed_predictions(path, stats_path, task, samples)
        if resumed is not None:
            records, task_stats = resumed
        else:
            task_stats = GenerationStats()
            batch_size = self.benchmark.get("batch_size", "auto")
            records = generate_task(
                loaded, self.policy, samples, task_stats, desc=f"{task}", batch_size=batch_size
            )
            write_jsonl(path, records)
            stamp = {"job_id": self.job_id, "schema": SCHEMA_VERSION, "stats": task_stats.to_dict()}
            write_json(stats_path, stamp)
        stats.add(task_stats)
        return records

    def _resumed_predictions(
        self, path: Path, stats_path: Path, task: str, samples: list
    ) -> tuple[list[dict[str, Any]], GenerationStats] | None:
        """An interrupted run's predictions for a task, or None (regenerate) when missing, corrupt, written for
        another job (its stats file carries the job id: a folder copied or reused under another id) or not one
        record per sample of the task (a file cut at a line boundary)."""
        if not (path.exists() and stats_path.exists()):
            return None
        try:
            records = read_predictions(path)
            try:
                stamp = json.loads(stats_path.read_text(encoding="utf-8"))
                if not isinstance(stamp, dict) or "job_id" not in stamp:
                    raise InvalidResult(
                        f"{stats_path} carries no job id (written before predictions had one)"
                    )
                if stamp["job_id"] != self.job_id or stamp.get("schema") != SCHEMA_VERSION:
                    raise InvalidResult(
                        f"{stats_path} belongs to job {stamp['job_id']!r} (schema {stamp.get('schema')!r}), not "
                        f"{self.job_id!r}"
                    )
                task_stats = GenerationStats(**stamp["stats"])
            except InvalidResult:
                raise
            except (ValueError, TypeError, KeyError) as err:
                raise InvalidResult(f"{stats_path} is corrupt ({err.__class__.__name__}: {err})") from None
            got = [(r.get("task"), r.get("index")) for r in records]
            if got != [(task, s.index) for s in samples]:
                raise InvalidResult(
                    f"{path} holds {len(records)} records, not one per sample of the task's {len(samples)} in order"
                )
        except InvalidResult as err:
            warn(f"{err}; regenerating that task")
            return None
        return records, task_stats

    @property
    def samples_id(self) -> str:
        """Hash of the identity without the KV policy: jobs with equal ids were asked the same prompts."""
        rest = {k: v for k, v in self.identity.items() if k != "kv"}
        return hashlib.sha1(json.dumps(rest, sort_keys=True, default=str).encode()).hexdigest()[:8]

    def _rows(
        self, loaded, bench, scores, stats: GenerationStats, device: str, seconds: float
    ) -> list[ResultRow]:
        job = {
            "run_id": self.job_id,
            "sweep": self.sweep,
            "samples_id": self.samples_id,
            "git_sha": git_sha(),
            "seed": self.seed,
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **loaded.describe(),
            "max_length": loaded.prompt_budget,
            **self.policy.to_dict(),
            "policy": self.policy.label(),
            "benchmark": bench.name,
            "benchmark_length": registry.length_of(self.benchmark),
            "benchmark_config": self.benchmark,
            "model_config": self.identity["model"],
            **stats.measured(self.policy.mode),
            "device": device,
            "host": platform.node(),
            "job_seconds": round(seconds, 1),
            "versions": _versions(),
        }
        return score_rows(job, bench.name, scores)
