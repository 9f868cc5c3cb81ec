"""``harness ui --host`` on an address other than localhost (here the second loopback address, 127.0.0.2): the MLflow
server it starts must accept the UI's requests there. MLflow answers only Host headers of localhost or private
addresses, and takes POSTs (every search the UI makes) only from a localhost page; without harness naming the address
(--allowed-hosts, --cors-allowed-origins) the page got "Invalid Host header" and every search 403 (issue 21)."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from servers import SECOND_LOOPBACK, free_port

from harness import serve


def _second_loopback() -> str:
    with socket.socket() as s:
        try:
            s.bind((SECOND_LOOPBACK, 0))
        except OSError:
            pytest.skip(f"this machine does not route {SECOND_LOOPBACK} to loopback (Linux does; macOS: ifconfig lo0 alias)")
    return SECOND_LOOPBACK


def _status(req: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_the_ui_answers_its_page_and_searches_on_another_loopback_address(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    host = _second_loopback()
    MlflowClient().search_experiments()  # the store exists (the UI refuses to start on none)
    plan = serve.ui_plan(host=host, port=free_port())
    assert plan.warnings == []  # a loopback address: nothing to warn about
    with open(tmp_path / "server.log", "wb") as log:
        proc = serve.start(plan, stdout=log, stderr=subprocess.STDOUT)
        try:
            assert serve.wait_ready(plan.url, proc, timeout=150), (tmp_path / "server.log").read_text()[-3000:]
            page = urllib.request.Request(plan.url + "/")
            assert _status(page) == 200  # was 400: Invalid Host header
            search = urllib.request.Request(plan.url + "/ajax-api/2.0/mlflow/experiments/search", method="POST",
                                            data=json.dumps({"max_results": 5}).encode(),
                                            headers={"Content-Type": "application/json", "Origin": plan.url})
            assert _status(search) == 200  # was 403: a cross-origin request
        finally:
            serve.stop(proc)
