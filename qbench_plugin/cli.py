"""`qbench` command line: steps worth running outside a pytest session.

    qbench quantize configs/cpu_gptq_w4a16.json        # make (or find cached) the config's checkpoint
                                                       # (GPTQ/AWQ/int8; bitsandbytes 4-bit for vLLM)
    qbench compare results/<run A> results/<run B>     # per-case deltas, B against A; writes compare.csv
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from qbench_plugin.config import ConfigError, load_config
from qbench_plugin.dataset.dataset import DataError, load_texts
from qbench_plugin.dataset.embedded import EMBEDDED, default_cache_dir, resolve_model
from qbench_plugin.engines.engine import EngineUnavailable
from qbench_plugin.quantize.quantize import (DEFAULT_WORKER_TIMEOUT_S, QuantContext, QuantRecipe, checkpoint_metrics,
                                             head_is_unquantized, make_checkpoint)


def _quantize(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    bnb_4bit = config.method == "bitsandbytes" and config.quantization.bits == 4
    if config.method not in ("gptq", "awq", "int8") and not bnb_4bit:
        print(f"qbench quantize: {args.config}: method {config.method!r} needs no checkpoint "
              "(bitsandbytes 8-bit and fp8 quantize at load; none is unquantized)", file=sys.stderr)
        return 2
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    model = resolve_model(args.model, cache_dir)
    ctx = QuantContext.detect(cache_dir=cache_dir, quant_python=Path(args.quant_python),
                              worker_timeout_s=args.timeout, timeout_option="qbench quantize --timeout",
                              calibration=lambda: load_texts(args.dataset, args.split, args.text_column))
    recipe = QuantRecipe.from_config(config, args.max_model_len)
    path, meta = make_checkpoint(model, recipe, ctx)
    report = {"checkpoint": str(path), **checkpoint_metrics(model, path, meta),
              "head_unquantized": head_is_unquantized(path), "recipe": meta["recipe"]}
    print(json.dumps(report, indent=2))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from qbench_plugin.report.compare import CompareError, compare_configs, compare_paths, print_rich, shift_text
    from qbench_plugin.record.run import write_text_atomic
    from qbench_plugin.report.relative import compare_relative

    try:
        if args.configs and (args.relative_to or args.b is not None):
            raise CompareError("--configs compares two configs inside the one run A; give neither B nor --relative-to")
        if args.configs:
            label_a, label_b, long = compare_configs(args.a, *args.configs)
        elif args.b is None:
            raise CompareError("give two runs, or one run and --configs A B")
        elif args.relative_to:
            label_a, label_b, long = compare_relative(args.a, args.b, args.relative_to, args.run_noise)
        else:
            label_a, label_b, long = compare_paths(args.a, args.b, args.run_noise, normalize=args.host_scale)
    except CompareError as exc:
        print(f"qbench compare: {exc}", file=sys.stderr)
        return 1
    print_rich(long, label_a, label_b)
    if args.relative_to:
        print(f"each config's speed over {args.relative_to}'s in its own run, paired by round; run-to-run noise "
              f"allowed: {long.attrs['run_noise']:.0%} (a shift of every config alike cancels: compare without "
              f"--relative-to for that)")
    else:
        print(shift_text(long))
    write_text_atomic(Path(args.csv), long.to_csv(index=False))
    print(f"wrote {args.csv}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    parser = argparse.ArgumentParser(prog="qbench", description="qbench: quantized classifier benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quantize", help="make a config's checkpoint (cached): GPTQ/AWQ/int8 with llm-compressor, bitsandbytes 4-bit for vLLM with transformers")
    q.add_argument("config", help="config JSON file, e.g. configs/cpu_gptq_w4a16.json")
    q.add_argument("--model", default=EMBEDDED, help="hub id, local folder, 'embedded' (default) or 'embedded:qwen2.5-0.5b'")
    q.add_argument("--dataset", default=EMBEDDED, help="calibration data (default: embedded)")
    q.add_argument("--split", default="train", help="calibration split (default: train)")
    q.add_argument("--text-column", default="text")
    q.add_argument("--max-model-len", type=int, default=256)
    q.add_argument("--cache-dir", default=None, help="default: $QBENCH_CACHE_DIR or ~/.cache/qbench")
    q.add_argument("--quant-python", default=".venv-quant/bin/python", help="python of the llm-compressor env")
    q.add_argument("--timeout", type=float, default=DEFAULT_WORKER_TIMEOUT_S,
                   help="seconds the llm-compressor worker may take (default: %(default)g)")
    q.set_defaults(run=_quantize)
    c = sub.add_parser("compare", help="per-case deltas of p50/p95/p99/throughput/memory/accuracy between two runs")
    c.add_argument("a", help="reference run: results/<run id>/, or its qbench.json or benchmark.json")
    c.add_argument("b", nargs="?", help="run compared with A (same forms); deltas are B - A, marked better or worse "
                                        "for B")
    c.add_argument("--configs", nargs=2, metavar=("CONFIG_A", "CONFIG_B"),
                   help="compare two configs of the one run A instead, paired by interleaved round")
    c.add_argument("--relative-to", metavar="CONFIG",
                   help="compare each config's speed over CONFIG's in its own run (e.g. fp16_baseline), A against B: "
                        "a whole-session shift cancels, so a change of one config is seen at 10%% instead of 20%%")
    c.add_argument("--csv", default="compare.csv", help="where to write every delta (default: ./compare.csv)")
    c.add_argument("--run-noise", type=float, default=None,
                   help="run-to-run noise to allow on top of the rounds' interval, e.g. 0.1 (default: the A/A-measured "
                        "figure of the runs' device; 0 to see the rounds' interval alone)")
    c.add_argument("--host-scale", action="store_true",
                   help="judge speed on each run's host-probe scale (both runs need the probe) with the smaller "
                        "allowance of A/A pairs so scaled; the probe names a busy or slower machine reliably, but "
                        "engines do not slow in proportion to it, so by default it only explains")
    c.set_defaults(run=_compare)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, DataError, EngineUnavailable, RuntimeError) as exc:
        print(f"qbench {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
