"""Is policy A better than policy B beyond sampling noise? A paired comparison on the same samples.

    python -m eval.report.compare results/key_pruning "K0.7" "ThinK-K0.7" ["K0.7[oa]" "K0.7" ...]

Pairs of policy labels (as in the tables); prints A - B of the Average (eval.averages `avg`), its paired-bootstrap
95% CI and the sign-flip permutation p-value (eval.stats). Both jobs must have seen the same prompts (the same
`samples_id`), so per-sample differences cancel the prompt difficulty.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from eval import stats
from eval.report.layout import Group, groups
from eval.results import load_rows


def _group(sweep_dir: Path) -> Group:
    found = groups(load_rows(sweep_dir), sweep_dir)
    if len(found) != 1:
        raise ValueError(f"{sweep_dir} holds {len(found)} (model, benchmark) groups; compare within one")
    return found[0]


def compare(sweep_dir: Path, a: str, b: str) -> stats.Paired:
    """A - B of the Average on the same samples."""
    group = _group(sweep_dir)
    jobs = group.jobs.set_index("label")
    for label in (a, b):
        if label not in jobs.index:
            raise ValueError(f"no job with policy {label!r} in {sweep_dir}; have {sorted(jobs.index)}")
        if (jobs.index == label).sum() > 1:
            raise ValueError(
                f"{sweep_dir} has several jobs labelled {label!r}; compare within one sweep of each"
            )
    if jobs.loc[a, "samples_id"] != jobs.loc[b, "samples_id"]:
        raise ValueError(f"{a!r} and {b!r} were not asked the same prompts (samples_id differs)")
    w = group.average_weights()
    sa, sb = group.samples[jobs.loc[a, "run_id"]], group.samples[jobs.loc[b, "run_id"]]
    return stats.paired_test({t: sa[t] for t in w}, {t: sb[t] for t in w}, w)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("policies", nargs="+", help="pairs: A1 B1 [A2 B2 ...]")
    args = parser.parse_args(argv)
    if len(args.policies) % 2:
        parser.error("give policies in pairs (A B)")
    for a, b in zip(args.policies[::2], args.policies[1::2]):
        r = compare(args.sweep_dir, a, b)
        noise = " (within noise)" if r.within_noise else ""
        print(f"{a} - {b}: {r.diff:+.2f} [{r.low:+.2f}, {r.high:+.2f}] p={r.p_value:.4f}, n={r.n}{noise}")


if __name__ == "__main__":
    main()
