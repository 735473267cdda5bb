"""Load tests over HTTP: vLLM's OpenAI server and the other child processes a load test starts
(serve.py), what an endpoint is sent and what counts as a valid answer (endpoint.py), Locust run
headless against it (loadtest.py) with its load profile (locustfile.py), a Locust run's window,
rates and percentiles (loadstats.py), and the grid points, the load table and each config's
capacity at a p95 target (loadgrid.py).

locustfile.py is handed to Locust by path, which puts this folder on sys.path: keep its imports
cheap (endpoint, redact; dataset only when a run needs labels) and no module here named like a
standard-library one. loadgrid.py is pure (it reads load records), which is why report may import it.

May import: dataset, record, redact
"""
