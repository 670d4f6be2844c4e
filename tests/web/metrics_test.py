#!/usr/bin/env python3
"""lorad's /metrics read by Prometheus's own Python parser
(prometheus_client.parser.text_string_to_metric_families) before and after a
tiny job, against a real daemon started with --metrics-open true:
  - the exposition parses, with the families and types lorad documents;
  - /metrics answers without the token (--metrics-open) while the API still
    answers 401;
  - the SubmitJob counter, the succeeded-jobs gauge and the GetJob latency
    histogram's count move after the job, and the histogram's buckets are
    cumulative and end at its count.

Exit 77 (ctest: skipped) when this Python lacks prometheus_client
(tests/python-requirements.txt), unless LORAD_REQUIRE_PYTHON_TESTS=1.
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError as e:
    print(f"metrics_test.py: {e}; install tests/python-requirements.txt into {sys.executable} "
          "(deploy/test.sh makes build/pyenv)", file=sys.stderr)
    sys.exit(1 if os.environ.get("LORAD_REQUIRE_PYTHON_TESTS") == "1" else 77)

import lorad_daemon  # noqa: E402

EXPECTED_TYPES = {
    "lorad_queue_length": "gauge", "lorad_jobs": "gauge", "lorad_slots": "gauge", "lorad_slots_busy": "gauge",
    "lorad_event_subscribers": "gauge", "lorad_job_steps_per_second": "gauge", "lorad_job_loss": "gauge",
    "lorad_job_gpu_memory_bytes": "gauge", "lorad_rpc_requests": "counter", "lorad_rpc_duration_seconds": "histogram",
}


def scrape(daemon):
    status, headers, body = daemon.request("/metrics", token=None)
    assert status == 200, (status, body[:200])
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4"), headers["Content-Type"]
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    samples = {}
    for family in families.values():
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return families, samples


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build-dir", required=True)
    args = parser.parse_args()
    daemon = lorad_daemon.Daemon(args.build_dir, ["--metrics-open", "true"])
    try:
        families, before = scrape(daemon)
        for name, kind in EXPECTED_TYPES.items():
            assert name in families, f"{name} missing from /metrics: {sorted(families)}"
            assert families[name].type == kind, (name, families[name].type, kind)
        # The token still guards everything else.
        assert daemon.request("/api/server", token=None)[0] == 401
        assert daemon.request("/", token=None)[0] == 401

        folder = tempfile.mkdtemp(prefix="lorad-web-dataset-", dir=daemon.root)
        lorad_daemon.make_dataset(folder, 3)
        dataset = daemon.loractl("datasets", "upload", folder, "--name", "shapes")
        config = os.path.join(daemon.root, "job.toml")
        with open(config, "w") as f:
            f.write(lorad_daemon.tiny_config(3))
        job_id = daemon.loractl("submit", config, "--dataset", dataset, "--name", "metrics")
        job = daemon.wait_job(job_id, {"succeeded", "failed", "cancelled"})
        assert job["state"] == "JOB_STATE_SUCCEEDED", job
        daemon.loractl("ls")  # one ListJobs call

        families, after = scrape(daemon)
        submit = ("lorad_rpc_requests_total", (("code", "OK"), ("method", "lorad.v1.Lorad/SubmitJob")))
        assert after.get(submit, 0) == before.get(submit, 0) + 1, (before.get(submit), after.get(submit))
        listed = ("lorad_rpc_requests_total", (("code", "OK"), ("method", "lorad.v1.Lorad/ListJobs")))
        assert after.get(listed, 0) >= 1, after.get(listed)
        succeeded = ("lorad_jobs", (("state", "succeeded"),))
        assert after[succeeded] == before[succeeded] + 1, (before[succeeded], after[succeeded])
        assert after[("lorad_queue_length", ())] == 0
        upload = ("lorad_rpc_duration_seconds_count", (("method", "lorad.v1.Lorad/UploadDataset"),))
        assert after[upload] == before.get(upload, 0) + 1, after[upload]
        # Buckets: cumulative, +Inf equal to the count, the sum positive.
        histogram = families["lorad_rpc_duration_seconds"]
        for method in {s.labels["method"] for s in histogram.samples}:
            buckets = sorted(((float(s.labels["le"]), s.value) for s in histogram.samples
                              if s.name.endswith("_bucket") and s.labels["method"] == method))
            values = [v for _, v in buckets]
            assert values == sorted(values), (method, buckets)
            assert buckets[-1][0] == float("inf")
            count = after[("lorad_rpc_duration_seconds_count", (("method", method),))]
            assert buckets[-1][1] == count, (method, buckets[-1], count)
            assert after[("lorad_rpc_duration_seconds_sum", (("method", method),))] > 0
        print(f"metrics_test: {len(families)} families parsed; SubmitJob {before.get(submit, 0):.0f} -> "
              f"{after[submit]:.0f}, succeeded {before[succeeded]:.0f} -> {after[succeeded]:.0f}")
    finally:
        daemon.stop()


if __name__ == "__main__":
    main()
