"""How many relative speed deltas A/A pairs call different at several allowances: the figures behind
relative.py's RELATIVE_RUN_NOISE.

    .venv/bin/python scripts/relative_aa.py fp16_baseline A1 B1 [A2 B2 ...]

Each A/B is a run directory (or its qbench.json); pairs of the same code run twice.
"""
import sys

from qbench_plugin.report.relative import compare_relative

ALLOWANCES = (0.0, 0.05, 0.10)


def main(reference: str, paths: list[str]) -> None:
    if len(paths) % 2:
        sys.exit("give run directories in pairs: A1 B1 [A2 B2 ...]")
    totals, deltas = dict.fromkeys(ALLOWANCES, 0), 0
    for a, b in zip(paths[::2], paths[1::2]):
        called = {}
        for allowance in ALLOWANCES:
            long = compare_relative(a, b, reference, noise=allowance)[2]
            called[allowance] = int(long["verdict"].isin(["better", "worse"]).sum())
            totals[allowance] += called[allowance]
        deltas += len(long)
        moved = (long["b"] / long["a"] - 1).abs()
        print(f"{a} vs {b}: {len(long)} deltas; called at " + ", ".join(f"{k:.0%}: {v}" for k, v in called.items())
              + f"; |moved| median {moved.median():.1%}, largest {moved.max():.1%}")
    print(f"all pairs: {deltas} deltas; called at " + ", ".join(f"{k:.0%}: {v}" for k, v in totals.items()))


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
