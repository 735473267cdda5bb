"""Everything a person reads, rendered from a run's JSON (live or saved) into one RunResults: its
tables and derived metrics (summary.py), prices, peak, cost and traffic tiers (cost.py, with the GPU
table in gpus.py), the deployment picks (picks.py), every table's rows (tables.py), the experiment
log (explog.py with findings.py, decisions.py, design.py), the HTML report (report.py,
htmlblocks.py), the plots (plots.py), two runs side by side (compare.py), and the glue that writes
the files and the terminal summary at session end (outputs.py, terminal.py).

Never imports an engine: a saved run renders without one. Of the measuring steps it imports only
their pure readers of recorded results: measure.ceiling (which sweep point is the saturation point)
and loadtest.loadgrid (the load table and capacities).

May import: config, gates, loadtest.loadgrid, machine, measure.ceiling, record, redact, stats
"""
