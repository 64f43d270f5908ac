"""Copy finished jobs that another sweep already ran into a sweep that is about to run.

A job folder is named by the hash of everything that decides its result (model, KV policy, benchmark, seed), so a
job of sweep A with the same id as a planned job of sweep B *is* that job: copying it saves the compute and the
sweep then skips it. The copied rows keep `sweep` = the sweep that computed them (provenance).
"""

from __future__ import annotations

import argparse
import itertools
import shutil
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from eval.joblock import LOCK_NAME
from eval.results import FAILED_NAME, valid_result

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
                tmp = target.with_name(f".{job_id}.copy")
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(origin, tmp, ignore=shutil.ignore_patterns(LOCK_NAME, FAILED_NAME))
                shutil.rmtree(target, ignore_errors=True)  # an unfinished attempt: the copy replaces it
                tmp.rename(target)
                copied.append(job_id)
                break
    return copied


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "experiment", help="experiment name (conf/experiment/<name>.yaml); also the sweep name"
    )
    parser.add_argument(
        "--from", dest="sources", type=lambda s: s.split(","), required=True, help="sweeps to copy from: a,b"
    )
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("overrides", nargs="*", help="the same overrides the multirun gets")
    args = parser.parse_intermixed_args(argv)
    ids = planned_job_ids(args.experiment, args.overrides)
    sweep = compose_sweep_name(args.experiment, args.overrides)
    copied = reuse(args.results, sweep, ids, args.sources)
    print(f"[reuse] {sweep}: {len(ids)} planned jobs, copied {len(copied)} from {', '.join(args.sources)}")
    for job_id in copied:
        print(f"  {job_id}")


def compose_sweep_name(experiment: str, overrides: list[str]) -> str:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return str(compose("config", overrides=[f"+experiment={experiment}", *overrides]).sweep)


if __name__ == "__main__":
    main()
