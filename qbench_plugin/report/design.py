"""How a run was measured, in words: the rounds' design, the suite's overhead over bare calls, the
throughput-ceiling sweep and the comparison with a saved run. The experiment log's closing sections;
the HTML report shows measurement_design too."""
from __future__ import annotations

import statistics

from qbench_plugin.report import tables
from qbench_plugin.report.bounds import bound_lines
from qbench_plugin.report.compare import NOISE, TOLERATED, counts_text, engine_changes, unmatched
from qbench_plugin.report.summary import RunResults, saturation_points
from qbench_plugin.report.tables import fmt, md_table


def saved_run_comparison(r: RunResults) -> str:
    long = r.comparison
    out = [f"This run (B) against saved run {r.comparison_source} (A): {counts_text(long)}; values are this run's, "
           f"the change is from A; \"{NOISE}\": the bootstrap 95% interval of B/A includes 1; \"{TOLERATED}\": a "
           f"memory change within the tolerance of run-to-run drift (every number is in {'compare.csv'}).\n"]
    if engines := engine_changes(long):
        out.append(f"Engines differ: {engines}.\n")
    header, rows = tables.comparison(r)
    if not rows:
        out.append("No case ran in both runs.")
    else:
        out.append(md_table(header, rows))
    if extra := unmatched(long):
        out.append(f"\nCases in one run only: {extra}.")
    return "\n".join(out)


def suite_overhead(r: RunResults) -> str:
    if not r.overhead:
        return "Not measured in this run (benchmarks/test_overhead.py, marked slow, vLLM engine only)."
    out = ["The suite's throughput over bare `llm.classify` calls on the same batches: each timed suite call "
           "follows a bare call on its batch; suite/bare is the median of the per-pair ratios, with its "
           "bootstrap 95% interval. The target is missed only when the whole interval lies below it; "
           "\"within noise\" means the median is below the target and the interval reaches it.\n"]

    def verdict(o: dict) -> str:
        v = o.get("verdict") or ("met" if o["ratio"] >= o["target"] else "missed")
        return v if v == "met" else f"{v} (target {o['target']})"

    rows = [(name, o["batch_size"], fmt(o["bare_latency_p50_ms"], 3), fmt(o["suite_latency_p50_ms"], 3),
             fmt(o["ratio"], 3), "-" if not o.get("ci95") else f"{o['ci95'][0]:.3f}-{o['ci95'][1]:.3f}", verdict(o))
            for name, o in r.overhead.items()]
    out.append(md_table(["config", "batch size", "bare p50 ms", "suite p50 ms", "suite/bare", "95% interval",
                         "target"], rows))
    return "\n".join(out)


def throughput_ceiling(r: RunResults) -> str:
    if r.ceiling.empty:
        return "No saturation sweep in this run (`--qbench-sweep on` adds one for `--qbench-sweep-configs`)."
    out = ["Points from `benchmarks/test_saturation.py`. \"tokenization timed: no\" means the engine got "
           "pre-tokenized input (vLLM TokensPrompt, HF padded tensors) and the tokenizer ran outside the timed "
           "region; tokenizer rows time the tokenizer alone. Memory is the GPU's (device-wide) where there is one, "
           "else the process tree's RSS.\n"]
    for _, p in saturation_points(r.ceiling).iterrows():
        p95 = f"p95 {p['p95 ms']} ms" if p["p95 ms"] != "-" else "no per-batch p95 (replicas run concurrently)"
        out.append(f"- Saturation point of {p['config']}: {p['texts/s']} texts/s at batch size {p['batch size']} "
                   f"({p['how']}; tokenization timed: {p['tokenization timed']}), {p95}, "
                   f"peak memory {p['peak memory MiB']} MiB, MFU {p['MFU']}.")
    out.extend(bound_lines(r.ceiling, cpu_run=not r.machine.get("gpu_names")))
    out.append("")
    out.append(md_table(*tables.ceiling_all(r)))
    return "\n".join(out)


def _starts_spread(by_case: dict) -> dict | None:
    """How far each case's engine starts lay apart, (largest / smallest throughput) - 1, across cases."""
    gaps = [max(v) / min(v) - 1 for v in by_case.values() if len(v) > 1 and all(v)]
    if not gaps:
        return None
    return {"cases": len(gaps), "median": statistics.median(gaps), "largest": max(gaps)}


def _beyond_noise(ratios: dict) -> str:
    found = [r for values in ratios.values() for r in values if r]
    beyond = [r for r in found if r[1] > 1 or r[2] < 1]
    return (f"{len(beyond)} of {len(found)} extra starts differed from the first beyond their paired 95% interval"
            if found else "too few rounds for a paired interval between starts")


def _gpus_of(worker: dict) -> str:
    if not worker.get("gpus"):
        return ""
    shared = f", shared by {worker['gpu_sharers']} workers" if (worker.get("gpu_sharers") or 1) > 1 else ""
    return f" ({worker.get('gpu_name') or 'GPU'} {','.join(worker['gpus'])}{shared})"


def measurement_design(r: RunResults) -> str:
    m = r.measurement
    if not m:
        return "No latency matrix was timed in this run (or it was recorded before qbench timed in rounds)."
    groups = m.get("groups") or []
    out = [f"Design: {m.get('design', 'interleaved rounds')}. Each case's {m['rounds'] * m['block']} timed batches "
           f"were split into {m['rounds']} rounds of {m['block']}, after {m['warmup']} untimed warm-up batches"
           + (" and one untimed batch of every shape the rounds would time" if m.get("warmup_every_shape") else "")
           + "; in "
           f"every round each case ran one untimed call and then its block, the cases in a fresh random order "
           f"(seed {m['seed']}; `qbench.json` -> `measurement.orders` has every round's order). Garbage collection "
           "was off inside a block and memory was read between blocks (per config after its largest batch, in about 25 "
           "rounds spread over the run), never during one. The matrix took "
           f"{fmt(m.get('seconds'), 1)} s" + _overhead(m.get("overhead_s")) + ".\n",
           "Intervals (95%) come from the rounds: a bootstrap that resamples whole rounds, so drift over seconds to "
           "minutes is inside them. Two configs of this run are compared round by round (paired); two runs are "
           "compared with each run's rounds resampled on its own.\n"]
    if workers := m.get("workers"):
        out.append(f"Spread over {len(workers)} pytest-xdist workers (-n): each started only its own configs' engines, "
                   "on its own cores, and interleaved them within itself; configs on different workers ran at the "
                   "same time, so only configs on one worker are compared round by round (each worker's round orders are "
                   "under `measurement.workers.<worker>.measurement` in `qbench.json`):\n")
        out.extend(f"- {worker}: {w.get('device')}{_gpus_of(w)} cores {','.join(map(str, w.get('cores') or []))}: "
                   f"{', '.join(w.get('configs') or []) or 'no config'}" for worker, w in workers.items())
        owned = {tuple(w.get("gpus") or ()) for w in workers.values()}
        if len(owned) > 1:
            out.append("Warning: configs on different workers ran on different GPUs, so a difference between them is "
                       "also the devices' (two GPUs of one model still differ by clocks and temperature); compare configs "
                       "of one worker, or rerun the pair on one GPU, before believing a small delta.")
        if any((w.get("gpu_sharers") or 1) > 1 for w in workers.values()):
            out.append("Warning: workers shared a GPU, so their configs ran on it at the same time and slowed each other "
                       "by an amount this run does not measure: this is a functional run of the merge, not a speed verdict "
                       "across workers.")
    if len(groups) > 1:
        out.append("Not every engine could be resident at once; each group below was interleaved within itself, and "
                   "the first group's rounds were split in halves around the others (A B A), so comparisons across "
                   "groups are not paired round by round but drift that grew over the run hit them alike on average:\n")
        out.extend(f"- group {i + 1}: {', '.join(g)}" for i, g in enumerate(groups))
        out.extend(f"- {name}: {why}" for name, why in (m.get("not_resident") or {}).items())
        if m.get("visits"):
            out.append(f"- order: {'; '.join(m['visits'])}")
    elif groups:
        out.append(f"Every engine was resident for the whole matrix: {', '.join(groups[0])}.")
    idle = m.get("idle_engines_by_config") or ({m["idle_engines"]["config"]: m["idle_engines"]}
                                                if m.get("idle_engines") else {})
    if idle:
        out.append("\nIdle engines (`benchmarks/test_residency.py`): each config below timed with the other vLLM "
                   "engines resident and idle, against the same engines stopped (SIGSTOP), in alternating block pairs; "
                   "stopped / resident time below 1 means the idle engines cost it time:\n")
        out.extend(f"- {x['config']} at batch size {x['batch_size']}, beside {', '.join(x['idle_engines'])}: "
                   f"{x['stopped_over_resident']:.3f} (95% interval {x['ci95'][0]:.3f}-{x['ci95'][1]:.3f}, "
                   f"{x['pairs']} pairs): {x['verdict']}" for x in idle.values())
    quiet = m.get("idle_inprocess")
    if quiet:
        out.append(f"\nIdle in-process engines (`benchmarks/test_residency.py`; {', '.join(quiet['idle_engines'])} "
                   f"beside {quiet['config']} in the pytest process, which cannot be stopped apart): the process used "
                   f"{quiet['share']:.1%} of a core (largest window {quiet['max_share']:.1%}) while no engine was "
                   f"asked anything, over {quiet['windows']} windows of {quiet['window_s']} s: {quiet['verdict']}.")
    if m.get("run_noise") is not None:
        out.append(f"\nRun-to-run noise allowed by this run's perf gates: {m['run_noise']:.0%} (the device's A/A figure, "
                   "or `--qbench-run-noise`).")
    out += _diagnostics(m)
    for worker, w in (m.get("workers") or {}).items():
        if found := _diagnostics(w.get("measurement") or {}):
            out.append(f"\nWorker {worker}'s own rounds:")
            out += found
    if m.get("interrupted"):
        out.append(f"\nInterrupted: {m['interrupted']}; the cases keep those whole rounds.")
    return "\n".join(out)


def _overhead(spent: dict | None) -> str:
    """What the rounds spent outside the timed calls (memory readings, the host probe, saving)."""
    if not spent:
        return ""
    return (", of which outside the calls: " + ", ".join(f"{what.replace('_', ' ')} {s:.1f} s" for what, s in spent.items()))


def _diagnostics(m: dict) -> list[str]:
    """The host probe, engine starts, pinned cores and per-round host figures of one process's rounds
    (the run's, or one xdist worker's)."""
    out: list[str] = []
    probe = m.get("host_probe") or {}
    if probe.get("seconds"):
        ms = [1e3 * x for x in probe["seconds"]]
        out.append(f"\nHost probe (a fixed workload of {', '.join(probe.get('components', []))}, once per round; "
                   f"probe.py): median {sorted(ms)[len(ms) // 2]:.2f} ms over {len(ms)} rounds, "
                   f"{min(ms):.2f}-{max(ms):.2f} ms. Comparing two runs, qbench compare and the perf gates print the probes' ratio: a host slower or faster beyond the probe's own spread is named as the likely cause of a whole-run shift.")
    if (starts := m.get("starts")) and starts.get("by_case"):
        gap = _starts_spread(starts["by_case"])
        out.append(f"\nEngine starts (`--qbench-engine-starts {starts['count']}`): every config's engine was started "
                   f"{starts['count']} times and each start timed in every round; a case pools all its starts' samples. "
                   + (f"The starts of one case differed in throughput by {gap['median']:.1%} (median over {gap['cases']} "
                      f"cases; largest {gap['largest']:.1%}); {_beyond_noise(starts.get('ratio_to_first') or {})}. "
                      "Each start's figure is in `qbench.json` → `measurement.starts`." if gap
                      else "No case had two starts to compare.")
                   + (f" {len(starts['errors'])} extra start case(s) stopped and were left out of their config's "
                      f"cases (`measurement.starts.errors`)." if starts.get("errors") else "")
                   + (f" The memory of {', '.join(starts['memory_before_extras'])} (in the pytest process, which "
                      "their extra starts grow too) was read before the extra starts and not during the rounds; a "
                      "later reading can include memory the extras freed but the process kept."
                      if starts.get("memory_before_extras") else ""))
    if switch := m.get("switch_over_timed"):
        ratios = sorted(switch.values())
        out.append(f"\nSwitching engines: the untimed first call of each block took {ratios[len(ratios) // 2]:.2f}x a "
                   f"timed call (median over {len(ratios)} cases, each its own median; {ratios[0]:.2f}-{ratios[-1]:.2f}). Near 1, "
                   "the switch costs nothing the untimed call had to absorb; above 1, it kept that cost out of the "
                   "samples (`measurement.switch_over_timed`).")
    pins = [p for p in m.get("pinning") or [] if p.get("pinned")]
    if pins:
        engines = {name: e["cpus"] for p in pins for name, e in p["engines"].items()}
        out.append(f"\nCores during the rounds (`--qbench-pin-cores`): the pytest main thread on CPU "
                   f"{pins[0]['main_thread'][0]}, where nothing else of this process or its engines ran; "
                   + "; ".join(f"{name} on {','.join(map(str, cpus))}" for name, cpus in sorted(engines.items())) + ".")
    elif m.get("pinning"):
        out.append(f"\nCores during the rounds: {m['pinning'][0].get('reason')}.")
    shares = [x for x in probe.get("interpreter_on_cpu") or [] if x is not None]
    steal = [x for x in probe.get("steal_share") or [] if x is not None]
    if shares or steal:
        out.append("\nHost diagnostics per round: " + "; ".join(
            ([f"the probe's interpreter part was on a CPU {sorted(shares)[len(shares) // 2]:.0%} of its wall time "
              f"(median; lowest {min(shares):.0%}): below 100%, the timing thread waited for a core or the GIL"]
             if shares else [])
            + ([f"hypervisor steal {sorted(steal)[len(steal) // 2]:.1%} of CPU time (median; highest {max(steal):.1%})"]
               if steal else [])) + ".")
    return out
