"""One job of a sweep: a (model, KV policy, benchmark) triple -> result rows on disk, W&B, and a table."""

from __future__ import annotations

import hashlib
import json
import platform
import re
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from eval import registry, wandb_log
from eval.results import git_sha, read_jsonl, write_json, write_jsonl
from eval.runner import GenerationStats, generate_task
from mustafar import models
from mustafar.architectures import compressed_refusal
from mustafar.config import ConfigError, KVConfig

git_sha()  # pin the code version when the job module is loaded, before any job runs

PACKAGES = ("torch", "transformers", "triton", "numpy")


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
        policy = KVConfig.from_mapping(cfg["kv"])
        try:
            model = models.ModelConfig(**cfg["model"])
        except TypeError as err:
            raise ConfigError(f"bad model config: {err}") from None
        device = cfg.get("device", "auto")
        if device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device={device!r} is not allowed; choose one of auto, cpu, cuda")
        if policy.mode == "compressed":
            refusal = models.compressed_refusal(
                model, models.default_device() if device == "auto" else device
            )
            if refusal:
                raise ConfigError(refusal)
        registry.validate(cfg["benchmark"], models.peek_context_length(model))
        wandb_log.validate(cfg["logger"])
        sweep = str(cfg.get("sweep", "default"))
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", sweep):
            raise ConfigError(f"sweep={sweep!r} must be a plain folder name (letters, digits, _ . -)")
        return cls(
            model=model,
            policy=policy,
            benchmark=dict(cfg["benchmark"]),
            logger=dict(cfg["logger"]),
            results_dir=Path(cfg.get("results_dir", "results")),
            sweep=sweep,
            seed=int(cfg.get("seed", 42)),
            device=device,
            force=bool(cfg.get("force", False)),
        )

    @property
    def identity(self) -> dict[str, Any]:
        """Everything that decides the result; its hash names the job folder."""
        return {
            "model": asdict(self.model),
            "kv": self.policy.to_dict(),
            "benchmark": self.benchmark,
            "seed": self.seed,
        }

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
    def done(self) -> bool:
        return (self.dir / "result.json").exists()

    def run(self) -> Path | None:
        """Run unless already done; returns the result file written, or None when skipped."""
        if self.done and not self.force:
            print(f"[mustafar] skip {self.job_id}: {self.dir / 'result.json'} exists (force=true to redo)")
            return None
        device = models.default_device() if self.device == "auto" else self.device
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
        main = {s.task: s.value for s in scores if "@" not in s.metric}
        summary = bench.summary(main)
        rows = self._rows(loaded, bench, scores, summary, stats, device, time.time() - started)
        result = {
            "job_id": self.job_id,
            "identity": self.identity,
            "provenance": bench.provenance(),
            "rows": rows,
        }
        write_json(self.dir / "result.json", result)
        wandb_log.log_job(
            self.logger, self.results_dir, self.sweep, self.job_id, self.identity, rows, summary
        )
        return self.dir / "result.json"

    def _predictions(self, loaded, bench, task: str, stats: GenerationStats) -> list[dict[str, Any]]:
        """Generate a task's predictions, or reuse them if an interrupted run already wrote them."""
        path = self.dir / "predictions" / f"{task}.jsonl"
        stats_path = path.with_suffix(".stats.json")
        if path.exists() and stats_path.exists() and not self.force:
            task_stats = GenerationStats(**json.loads(stats_path.read_text()))
            records = read_jsonl(path)
        else:
            task_stats = GenerationStats()
            records = generate_task(loaded, self.policy, bench.samples(task), task_stats, desc=f"{task}")
            write_jsonl(path, records)
            write_json(stats_path, asdict(task_stats))
        for name, value in asdict(task_stats).items():
            if isinstance(value, int | float):
                setattr(stats, name, getattr(stats, name) + value)
        return records

    def _rows(self, loaded, bench, scores, summary, stats: GenerationStats, device: str, seconds: float):
        base = {
            "run_id": self.job_id,
            "sweep": self.sweep,
            "git_sha": git_sha(),
            "seed": self.seed,
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **loaded.describe(),
            "max_length": loaded.prompt_budget,
            **self.policy.to_dict(),
            "policy": self.policy.label(),
            "benchmark": bench.name,
            "benchmark_length": registry.length_of(self.benchmark),
            **stats.measured(self.policy.mode),
            "device": device,
            "host": platform.node(),
            "job_seconds": round(seconds, 1),
            "versions": _versions(),
        }
        rows = [
            {**base, "kind": "task", "task": s.task, "metric": s.metric, "value": s.value, "n": s.n}
            for s in scores
        ]
        rows += [
            {**base, "kind": "summary", "task": k, "metric": "mean", "value": v, "n": None}
            for k, v in summary.items()
        ]
        return rows
