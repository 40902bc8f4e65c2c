"""The load test script runs end to end (tiny and bounded) and checks every response."""

from __future__ import annotations

import json

import pytest

from benchmarks.load_test import batch_stats, main


def test_batch_stats_from_metrics_deltas():
    before = {"clumpdet_batch_size_count": 2, "clumpdet_batch_size_sum": 2, 'clumpdet_batch_size_bucket{le="1"}': 2,
              'clumpdet_batch_size_bucket{le="4"}': 2}
    after = {"clumpdet_batch_size_count": 5, "clumpdet_batch_size_sum": 11, 'clumpdet_batch_size_bucket{le="1"}': 3,
             'clumpdet_batch_size_bucket{le="4"}': 5}
    stats = batch_stats(before, after)
    assert stats["model_calls"] == 3 and stats["images"] == 9 and stats["mean_batch"] == 3
    assert stats["calls_by_batch_size"] == {"<=1": 1, "<=4": 2}


@pytest.mark.slow
def test_load_test_runs_and_validates(model_path, tmp_path):
    rc = main(["--model", model_path, "--duration", "1", "--repeats", "1", "--clients", "4", "--pool", "4",
               "--out-dir", str(tmp_path), "--note", "test run"])
    assert rc == 0
    (report_path,) = tmp_path.glob("serve_load_*.json")
    report = json.loads(report_path.read_text())
    assert [r["mode"] for r in report["runs"]] == ["batch-1", "dynamic"]
    for run in report["runs"]:
        assert run["ok"] > 0 and run["ok"] == run["requests"]
        assert run["batching"]["images"] >= run["ok"]  # the server ran at least what was answered
    assert report["runs"][0]["batching"]["mean_batch"] == 1
    assert report["summary"]["bad_responses"] == 0
    markdown = (tmp_path / report_path.name.replace(".json", ".md")).read_text()
    assert "| batch-1 | 1 |" in markdown and "Lost, failed or mismatched responses: 0" in markdown
