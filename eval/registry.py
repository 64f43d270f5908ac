"""Benchmark configs: validated before any model work, built once the tokenizer is known."""

from __future__ import annotations

from typing import Any

from eval.common import Benchmark
from mustafar.models import LoadedModel

BENCHMARKS = ("ruler", "longbench")


def check_batch_size(value: Any) -> None:
    """`benchmark.batch_size`: samples of a task generated together (not part of a job's identity)."""
    if value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"benchmark.batch_size={value!r} must be an integer >= 1 or auto")


# every key each benchmark reads (conf/benchmark/<name>.yaml): `+benchmark.lenght=2048` ran the default length
KEYS = {
    "ruler": ("name", "length", "n", "tasks", "essay_path", "squad_path", "hotpot_path", "batch_size"),
    "longbench": ("name", "tasks", "data_dir", "n", "longbench_e", "batch_size"),
}


def validate(cfg: dict[str, Any], context_length: int | None) -> None:
    """Cheap checks that must fail before a model is loaded; the benchmark classes check the rest."""
    name = cfg.get("name")
    if name not in BENCHMARKS:
        raise ValueError(f"benchmark.name={name!r} is not allowed; choose one of {', '.join(BENCHMARKS)}")
    unknown = sorted(set(cfg) - set(KEYS[name]))
    if unknown:
        raise ValueError(
            f"benchmark.{unknown[0]} is not a key of benchmark={name}; its keys are {', '.join(KEYS[name])}"
        )
    tasks = cfg.get("tasks")
    if tasks is not None and (
        isinstance(tasks, str) or not tasks or not all(isinstance(t, str) for t in tasks)
    ):
        raise ValueError(
            f"benchmark.tasks={tasks!r} must be a non-empty list of task names, e.g. benchmark.tasks=[vt,cwe] "
            "(null: the benchmark's default tasks)"
        )
    n = cfg.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"benchmark.n={n!r} must be an integer >= 1 (samples per task)")
    check_batch_size(cfg.get("batch_size", "auto"))
    if name == "ruler":
        from eval.ruler.benchmark import ESSAY_TASKS, MIN_LENGTH, check_task
        from eval.ruler.essays import load_essays

        for task in tasks or []:
            check_task(task)
        repeated = sorted({t for t in tasks or [] if tasks.count(t) > 1})
        if repeated:  # each task runs once: a repeat would only give the job an id of its own
            raise ValueError(f"benchmark.tasks={list(tasks)} names {', '.join(repeated)} more than once")
        if any(t in ESSAY_TASKS for t in tasks or []) or (tasks is None and cfg.get("essay_path")):
            load_essays(cfg.get("essay_path"))  # a missing corpus fails now, not after the model has loaded
        from eval.ruler.qa import QA_TASKS, load_qa

        for task, key in zip(QA_TASKS, ("squad_path", "hotpot_path"), strict=True):
            if task in (tasks or []) or (tasks is None and cfg.get(key)):
                load_qa(task, cfg.get(key))  # missing or malformed data fails before the model loads
        length = cfg.get("length")
        if not isinstance(length, int) or length < MIN_LENGTH:
            raise ValueError(f"benchmark.length={length!r} must be an integer >= {MIN_LENGTH}")
        if context_length is not None and length > context_length:
            raise ValueError(
                f"benchmark.length={length} exceeds the model's context window of {context_length} tokens"
            )
    else:
        from eval.longbench.data import resolve_data_dir, resolve_tasks, task_file

        longbench_e = cfg.get("longbench_e", False)
        if not isinstance(longbench_e, bool):  # "maybe" is a non-empty string: it read as true
            raise ValueError(f"benchmark.longbench_e={longbench_e!r} must be true or false")
        names = resolve_tasks(tasks, longbench_e)
        if (
            cfg.get("data_dir") is not None
        ):  # a given folder must hold every file now; unset means download later
            folder = resolve_data_dir(cfg["data_dir"])
            for task in names:
                task_file(folder, task, longbench_e)


def identity(cfg: dict[str, Any]) -> dict[str, Any]:
    """The part of a benchmark config that decides its samples, for the job id. RULER runs its tasks in one fixed
    order, each seeded on its own, so a reordered list names the same job; a data path no listed task reads is
    left at its default (null), so setting it does not give a finished job a second id."""
    if cfg.get("name") != "ruler" or cfg.get("tasks") is None:
        return dict(cfg)
    from eval.ruler.benchmark import ALL_TASKS, ESSAY_TASKS

    tasks = list(cfg["tasks"])
    out = dict(cfg, tasks=[t for t in ALL_TASKS if t in tasks])
    readers = {"essay_path": ESSAY_TASKS, "squad_path": ["qa_1"], "hotpot_path": ["qa_2"]}
    for key, needed_by in readers.items():
        if key in out and not any(t in tasks for t in needed_by):
            out[key] = None
    return out


def build(cfg: dict[str, Any], loaded: LoadedModel, seed: int) -> Benchmark:
    chat = loaded.config.chat_template
    if cfg["name"] == "ruler":
        from eval.ruler.benchmark import RulerBenchmark

        return RulerBenchmark(
            loaded.tokenizer,
            length=cfg["length"],
            n=cfg["n"],
            tasks=cfg.get("tasks"),
            seed=cfg.get("seed", seed),
            chat_template=chat,
            essay_path=cfg.get("essay_path"),
            squad_path=cfg.get("squad_path"),
            hotpot_path=cfg.get("hotpot_path"),
        )
    from eval.longbench.benchmark import LongBenchBenchmark

    return LongBenchBenchmark(
        loaded.tokenizer,
        tasks=cfg.get("tasks"),
        data_dir=cfg.get("data_dir"),
        n=cfg.get("n"),
        longbench_e=bool(cfg.get("longbench_e")),
        max_length=loaded.prompt_budget,
        chat_template=chat,
    )


def length_of(cfg: dict[str, Any]) -> int | None:
    return cfg.get("length") if cfg["name"] == "ruler" else None
