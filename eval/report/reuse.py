"""Copy finished jobs that another sweep already ran into a sweep that is about to run.

A job folder is named by the hash of everything that decides its result (model, KV policy, benchmark, seed), so a
job of sweep A with the same id as a planned job of sweep B *is* that job: copying it saves the compute and the
sweep then skips it. The copied rows keep `sweep` = the sweep that computed them (provenance).

The sweep folders are under the sweep's own `results_dir` (the `results_dir=` override, as the multirun gets it);
`--results` wins over it. A finished result is never replaced, and a job that another sweep is running (a live
job.lock) is skipped: the copy is made under the job's lock, as a sweep computes it.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from eval.joblock import LOCK_NAME, JobLock
from eval.results import FAILED_NAME, InvalidResult, read_result, valid_result

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def planned_job_ids(experiment: str, overrides: list[str]) -> list[str]:
    """Job ids a `python run.py -m +experiment=<experiment> <overrides>` multirun would write (deduplicated)."""
    from eval.job import Job

    base = [f"+experiment={experiment}", *overrides]
    parsed = OverridesParser.create().parse_overrides(overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        hydra_cfg = compose(
            "config",
            overrides=[base[0], *(o.input_line for o in parsed if not o.is_sweep_override())],
            return_hydra_config=True,
        )
        # a key given on the command line replaces the experiment's sweep values for that key (as in Hydra)
        given = {o.key_or_group for o in parsed}
        params = [f"{k}={v}" for k, v in hydra_cfg.hydra.sweeper.params.items() if k not in given]
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        sweeps = OverridesParser.create().parse_overrides(
            params + [o.input_line for o in parsed if o.is_sweep_override()]
        )
        axes = [[f"{o.key_or_group}={v}" for v in o.sweep_string_iterator()] for o in sweeps]
        ids = []
        for combo in itertools.product(*axes):
            cfg = compose("config", overrides=[base[0], *fixed, *combo])
            ids.append(Job.from_config(OmegaConf.to_container(cfg, resolve=True)).job_id)
    return list(dict.fromkeys(ids))


def reuse(results_dir: Path, sweep: str, job_ids: list[str], sources: list[str]) -> list[str]:
    """Copy each planned job not yet done in `sweep` from the first source sweep that has it; returns the ids."""
    copied = []
    for job_id in job_ids:
        target = results_dir / sweep / job_id
        if valid_result(target / "result.json", job_id, "copying it again") is not None:
            continue
        for source in sources:
            origin = results_dir / source / job_id
            if valid_result(origin / "result.json", job_id, f"not copying it from {source}") is not None:
                if _copy_locked(origin, target):
                    copied.append(job_id)
                break
    return copied


def _copy_locked(origin: Path, target: Path) -> bool:
    """Copy the finished job `origin` into `target` while holding target's job lock, as a sweep holds it to compute
    the job: a job another sweep is running is skipped (its folder, lock and predictions kept), and one finished
    meanwhile is kept. Returns whether it copied."""
    lock = JobLock(target)
    if not lock.acquire():
        print(f"[reuse] skip {target.name}: running elsewhere ({lock.holder()})")
        return False
    try:
        if _finished(target):
            return False
        tmp = target.with_name(f".{target.name}.copy")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(origin, tmp, ignore=shutil.ignore_patterns(LOCK_NAME, LOCK_NAME + ".*", FAILED_NAME))
        _replace_contents(target, tmp)
        return True
    finally:
        lock.release()


def _finished(job_dir: Path) -> bool:
    """Whether `job_dir` holds a valid result (quietly: a corrupt one was reported by the first check)."""
    try:
        read_result(job_dir / "result.json", job_dir.name)
    except InvalidResult:
        return False
    return True


def _replace_contents(target: Path, copy: Path) -> None:
    """Replace the unfinished attempt in `target` by the files of `copy`, keeping target's lock (ours) in place;
    result.json moves last, so the folder never looks finished while files are missing."""
    for entry in target.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for entry in sorted(copy.iterdir(), key=lambda e: e.name == "result.json"):
        entry.rename(target / entry.name)
    copy.rmdir()


def sweep_target(experiment: str, overrides: list[str]) -> tuple[str, Path]:
    """(sweep name, results_dir) the multirun `+experiment=<experiment> <overrides>` writes to."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={experiment}", *fixed])
    return str(cfg.sweep), Path(str(cfg.results_dir))


def _first_line(err: Exception) -> str:
    """Hydra's messages run over several lines (search paths, options); the first one says what is wrong."""
    return next((line.strip() for line in str(err).splitlines() if line.strip()), err.__class__.__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "experiment", help="experiment name (conf/experiment/<name>.yaml); also the sweep name"
    )
    parser.add_argument(
        "--from", dest="sources", type=lambda s: s.split(","), required=True, help="sweeps to copy from: a,b"
    )
    parser.add_argument(
        "--results",
        type=Path,
        help="results folder; wins over a results_dir= override (default: that override, else results)",
    )
    parser.add_argument("overrides", nargs="*", help="the same overrides the multirun gets")
    args = parser.parse_intermixed_args(argv)
    experiments = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
    if args.experiment not in experiments:
        parser.exit(
            2, f"error: unknown experiment {args.experiment!r} (experiments: {', '.join(experiments)})\n"
        )
    try:
        ids = planned_job_ids(args.experiment, args.overrides)
        sweep, results_dir = sweep_target(args.experiment, args.overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as err:  # ConfigError is a ValueError
        parser.exit(2, f"error: bad override ({' '.join(args.overrides)}): {_first_line(err)}\n")
    results_dir = args.results or results_dir
    for source in args.sources:
        if not (results_dir / source).is_dir():
            parser.exit(2, f"error: no sweep folder {results_dir / source} (--from {source})\n")
    copied = reuse(results_dir, sweep, ids, args.sources)
    print(f"[reuse] {sweep}: {len(ids)} planned jobs, copied {len(copied)} from {', '.join(args.sources)}")
    for job_id in copied:
        print(f"  {job_id}")


if __name__ == "__main__":
    main()
