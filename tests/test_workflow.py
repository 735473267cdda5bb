"""The GPU workflow runs pull-request code on a persistent self-hosted runner only behind a gate, and
a pull request's caches never become main's (issue 18, item 18). The file is what is checked: it is
the whole of the CI definition."""
from pathlib import Path

import yaml

WORKFLOW = Path(__file__).resolve().parents[1] / ".github" / "workflows" / "gpu-benchmarks.yml"


def _job() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())["jobs"]["benchmarks"]


def test_pull_requests_wait_for_approval_and_forks_never_run():
    job = _job()
    assert "self-hosted" in job["runs-on"]
    assert "github.event_name == 'pull_request' && 'gpu-pr'" in job["environment"]  # required reviewers
    assert "head.repo.full_name == github.repository" in job["if"]
    assert "pull_request_target" not in yaml.safe_load(WORKFLOW.read_text())[True]  # `on:` parses as True


def test_pull_requests_get_no_token_and_no_shared_cache():
    job = _job()
    assert "github.event_name != 'pull_request' && secrets.HF_TOKEN" in job["env"]["HF_TOKEN"]
    assert "QBENCH_CACHE_DIR" not in job["env"]  # set per event by the cache step, never one fixed folder
    (step,) = [s for s in job["steps"] if s.get("name", "").startswith("Caches")]
    assert "hashFiles(" in step["env"]["CODE_HASH"]
    script = step["run"]
    pr, main = script.split("else")
    assert "$RUNNER_TEMP" in pr and "HF_HOME" in pr and "../qbench-main" not in pr
    assert '$main/$CODE_HASH' in main
    assert script.index("QBENCH_CACHE_DIR") > script.index("fi")  # both branches set it
