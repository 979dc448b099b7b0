"""The report of a run of the real load generator against a local HTTP server (loopback)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from pytest_dataplane.report.document import schema

SUITE = r"""
import http.server
import threading

import pytest


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_local(server, load):
    with load(server, rate=200, duration="1.5s") as run:
        run.mark("scale", replicas=2)
    # No performance assertion: this machine may be too busy to hold the schedule, and the
    # report must show the run either way (the fixture records it).
    assert run.result.scheduled == 300
"""


def test_real_load_run_is_reported(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_real=SUITE)
    result = pytester.runpytest("--dataplane-json=r.json", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    # The achieved rate is measured (199.7/200 when the host delayed the last sends), the
    # target is not.
    result.stdout.fnmatch_lines(["*dataplane summary*", "test_local * - * */200 *"])
    document = json.loads((pytester.path / "r.json").read_text())
    jsonschema.validate(document, schema())
    (row,) = document["results"]
    assert row["dataplane"] is None and row["cluster"] is None
    (load,) = row["loads"]
    assert load["scheduled"] == 300
    assert load["completed"] + load["errors"] + load["dropped"] == 300
    assert sum(load["bins"]["n"]) == load["completed"]
    assert [e["name"] for e in load["events"]] == ["scale"]
    assert row["verdicts"] == []
    assert load["saturated"] is (load["saturation_reason"] != "")
