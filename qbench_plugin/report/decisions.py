"""The experiment log's sections on what to do: cost per request, the recommended configs with their
deployment settings, and the traffic tiers with the headroom left (Markdown, from RunResults)."""
from __future__ import annotations

from qbench_plugin.report import gpus, tables
from qbench_plugin.report.cost import LOAD_SOURCE, MATRIX_SOURCE
from qbench_plugin.loadtest.loadgrid import texts_a_request
from qbench_plugin.report.summary import RunResults
from qbench_plugin.report.tables import MISSING, fmt, md_table


def cost_analysis(r: RunResults) -> str:
    p = r.pricing
    grid = any(c.found for c in r.capacity)
    matrix = not tables.best_rows(r).empty
    if not grid and not matrix:
        return ("No cost: no config that passes its accuracy gates has a measured throughput. "
                "Cost per request is price per hour over requests per hour, so it needs a throughput.")
    out = []
    if p.available:
        out.append(f"Priced as **{p.gpu}**: on-demand {tables.price(p.on_demand_per_hour)}/h, spot "
                   f"{tables.price(p.spot_per_hour) if p.spot_per_hour is not None else 'no spot price given'}/h "
                   f"({p.source}). One replica runs fully busy at the measured throughput.")
        if p.note:
            out.append(f"\nNote: {p.note}.")
    else:
        out.append(f"No price for this run: {p.source}. The requests per replica-hour below are measured; "
                   "multiply your hourly price by 1,000 / (requests per hour) for the cost per 1K requests.")
    if grid:
        out.append(f"\nSource: the {LOAD_SOURCE}, each config at its capacity at p95 <= {r.options.p95_target_ms:g} ms "
                   "(Load test); a request is one HTTP request of that point's batch size:\n")
        out.append(md_table(*tables.load_cost(r)))
    if matrix:
        out.append(f"\nThe {MATRIX_SOURCE} (batches in the process, no HTTP, no queueing){', for comparison' if grid else ''}: "
                   "each config that passes its gates, at its highest-throughput batch size; one request is one text:\n")
        out.append(md_table(*tables.cost(r)))
    out.append(f"\nList prices assumed when no price is given (USD per GPU-hour, and per vCPU-hour for a run on a CPU, "
               f"as of {gpus.PRICES_AS_OF}; "
               "assumptions, check your provider):\n")
    out.append(md_table(*tables.gpu_prices()))
    return "\n".join(out)


def recommendations(r: RunResults) -> str:
    out = [f"{r.coverage_note()}: another config might have won.\n"] if r.partial else []
    if not r.recommendations:
        out.append(f"No recommendation: {r.no_recommendation}.")
    else:
        out.append(md_table(*tables.picks(r)))
        out.append("\nBalance score = mean of min-max-normalized throughput and (1 - min-max-normalized p95) over "
                   "the eligible (config, batch size) rows; 1 is best on both.")
        out.extend(f"- Tie: {text}." for text in r.tie_notes)
        out.extend(f"- Reference: {ref.text()}." for ref in r.references)
        out.extend(f"- Not ranked: {text}." for text in r.left_out)
    out.append("\nEligibility (a config is recommended only if it ran, its accuracy was measured and no accuracy "
               "gate failed):\n")
    out.append(md_table(*tables.eligibility(r)))
    if r.deployment:
        d = r.deployment
        win = r.recommendations["balanced"]
        out.append(f"\nDeployment settings from the balanced pick ({win.config}, batch size {win.batch_size}):\n")
        out.append("```bash\n" + tables.deployment_env(r) + "\n```")
        out.extend(f"- {note}" for note in d["notes"])
    return "\n".join(out)


def scaling(r: RunResults) -> str:
    t = r.traffic
    if t.from_load:
        out = [f"Traffic tiers under a p95 target of {t.p95_target_ms:g} ms (option `--qbench-p95-target-ms`), "
               f"sized from the {t.source}: each replica serves its config's capacity at the target (Load test), "
               "the requests/s its server answered under concurrent load with p95 at or under the target; a request "
               "is one HTTP request of the capacity point's batch size, and no headroom is added.\n"]
    else:
        out = [f"Traffic tiers under a p95 target of {t.p95_target_ms:g} ms (option `--qbench-p95-target-ms`), "
               f"sized from the {t.source} (no load grid ran): a request is one text, replicas run at the measured "
               "throughput with no headroom added, and queueing is not modelled (p95 is the batch latency).\n"]
    if t.reason:
        out.append(f"No tier plan: {t.reason}.")
    elif t.from_load:
        out.append(f"Serving config: {t.config} at point {t.point} ({texts_a_request(t.batch_size)}, p95 "
                   f"{fmt(t.latency_p95_ms)} ms, {fmt(t.capacity_per_replica_per_s, 1)} req/s per replica): the "
                   "highest capacity among configs that did not fail their accuracy gates"
                   + (f"; note: {t.note}" if t.note else "") + ".\n")
        out.append(md_table(*tables.tiers(r)))
    else:
        out.append(f"Serving row: {t.config} at batch size {t.batch_size} (p95 {fmt(t.latency_p95_ms)} ms, "
                   f"{fmt(t.capacity_per_replica_per_s, 1)} texts/s per replica): the eligible row with the "
                   "highest throughput that meets the target.\n")
        out.append(md_table(*tables.tiers(r)))
    out.append("\n### Headroom (MFU)\n")
    w = r.workload
    tokens, params = w.get("mean_tokens_per_text"), w.get("non_embedding_params")
    facts = []
    facts.append(f"- Mean tokens per text: {fmt(tokens, 1)} (model's tokenizer on the evaluated split, truncated at "
                 f"{w.get('max_model_len', r.settings.get('max_model_len'))})" if tokens else
                 f"- Tokens per text: {MISSING} ({w.get('tokens_error') or 'the evaluation split was not loaded'})")
    facts.append(f"- Non-embedding parameters: {fmt(params)} (FLOPs per token = 2 x this)" if params else
                 f"- Non-embedding parameters: {MISSING} ({w.get('params_error') or 'the model was not loaded'})")
    facts.append(f"- Peak: {fmt(r.peak.tflops, 1)} TFLOP/s ({r.peak.source})" if r.peak.tflops else
                 f"- Peak TFLOP/s: {r.peak.source}")
    out.extend(facts)
    if not r.table.empty and r.table["achieved_tflops"].notna().any():
        out.append("")
        out.append(md_table(*tables.mfu(r)))
    return "\n".join(out)
