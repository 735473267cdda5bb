"""How many relative speed deltas A/A pairs call different at several allowances: the figures behind
uncertainty.RELATIVE_RUN_NOISE (`qbench compare --relative-to`).

    .venv/bin/python scripts/relative_aa.py REFERENCE A1 B1 [A2 B2 ...] [--slow CONFIG=FACTOR]

Each A/B is a run directory (or its qbench.json); pairs of the same code run twice. --slow makes each
B's CONFIG slower after the fact (its timed batches x FACTOR) and also prints how many of its speed
deltas the relative and the absolute comparison call worse: the sensitivity on the pair's real noise.
"""
import argparse
import json
import tempfile
from pathlib import Path

from qbench_plugin.measure.measure import latency_stats
from qbench_plugin.report.compare import NOISE_TESTED, compare_paths
from qbench_plugin.report.relative import compare_relative

ALLOWANCES = (0.0, 0.05, 0.10)


def _slowed(run: str, config: str, factor: float, into: Path) -> Path:
    path = Path(run) / "qbench.json" if Path(run).is_dir() else Path(run)
    record = json.loads(path.read_text(encoding="utf-8"))
    for case in record["cases"]:
        if case["config"] == config:
            case["samples_ns"] = [int(ns * factor) for ns in case["samples_ns"]]
            case["metrics"].update(latency_stats(case["samples_ns"], case["batch_size"]))
    into.mkdir(parents=True)
    (into / "qbench.json").write_text(json.dumps(record), encoding="utf-8")
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference")
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--slow", help="CONFIG=FACTOR, e.g. gptq_4bit=1.15")
    args = parser.parse_args()
    if len(args.runs) % 2:
        parser.error("give run directories in pairs: A1 B1 [A2 B2 ...]")
    totals, deltas, scratch = dict.fromkeys(ALLOWANCES, 0), 0, Path(tempfile.mkdtemp())
    for n, (a, b) in enumerate(zip(args.runs[::2], args.runs[1::2])):
        if args.slow:
            config, factor = args.slow.split("=")
            b = _slowed(b, config, float(factor), scratch / str(n))
            rel = compare_relative(a, b, args.reference)[2]
            ab = compare_paths(a, b)[2]
            mine = rel[rel["config"].str.startswith(config + " /")]
            ab = ab[(ab["config"] == config) & ab["metric"].isin(NOISE_TESTED)]
            others = rel[~rel["config"].str.startswith(config + " /")]
            print(f"{a} vs {b} ({config} x{factor}): relative {(mine['verdict'] == 'worse').sum()} of {len(mine)} "
                  f"worse (other configs: {others['verdict'].isin(['better', 'worse']).sum()} called), absolute "
                  f"{(ab['verdict'] == 'worse').sum()} of {len(ab)} worse")
            continue
        called = {}
        for allowance in ALLOWANCES:
            long = compare_relative(a, b, args.reference, noise=allowance)[2]
            called[allowance] = int(long["verdict"].isin(["better", "worse"]).sum())
            totals[allowance] += called[allowance]
        deltas += len(long)
        moved = (long["b"] / long["a"] - 1).abs()
        print(f"{a} vs {b}: {len(long)} deltas; called at " + ", ".join(f"{k:.0%}: {v}" for k, v in called.items())
              + f"; |moved| median {moved.median():.1%}, largest {moved.max():.1%}")
    if not args.slow:
        print(f"all pairs: {deltas} deltas; called at " + ", ".join(f"{k:.0%}: {v}" for k, v in totals.items()))


if __name__ == "__main__":
    main()
