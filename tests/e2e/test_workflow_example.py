"""examples/workflow runs end to end exactly as a newcomer would run it: ``python main.py``
from a fresh copy of the directory (its own SQLite file, a real ``durable-supervisor``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

import durable_jobs as jobs
from durable_jobs.store.schema import jobs as jobs_table
from durable_jobs.store.schema import steps as steps_table

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "workflow"


@pytest.mark.timeout(150)
def test_order_pipeline_example(tmp_path: Path) -> None:
    workdir = tmp_path / "workflow"
    shutil.copytree(EXAMPLE, workdir, ignore=shutil.ignore_patterns("*.db*", "__pycache__"))
    done = subprocess.run([sys.executable, "main.py"], cwd=workdir, capture_output=True,
                          text=True, timeout=140)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout.splitlines()
    assert out[0] == "enqueued 3 orders"
    assert out[1].startswith("order A-1001: charged 27.25, shipped TRK-")
    assert out[1].endswith("(MUG-1 x2, TEA-7 x1, SPOON-3 x4)")
    assert out[2].startswith("order A-1002: charged 24.00, shipped TRK-")
    assert out[3] == "order A-1003: failed (NoRetry: card declined)"
    assert out[4] == "supervisor exited with 0"

    store = jobs.Store(f"sqlite:///{workdir}/orders.db")
    try:
        with store.read() as conn:
            rows = list(conn.execute(select(jobs_table)))
            steps = list(conn.execute(select(steps_table)))
    finally:
        store.dispose()
    orders = {json.loads(r.args)["id"]: r for r in rows if r.name == "process-order"}
    assert {k: (r.status, r.attempt) for k, r in orders.items()} == {
        "A-1001": ("completed", 1), "A-1002": ("completed", 1), "A-1003": ("failed", 1)}
    packs = [r for r in rows if r.name == "pack-item"]
    assert sorted((orders_by_id(orders, r.parent_id), r.fan_out_index) for r in packs) == [
        ("A-1001", 0), ("A-1001", 1), ("A-1001", 2), ("A-1002", 0)]
    assert {(r.status, r.queue, r.attempt) for r in packs} == {("completed", "packing", 1)}
    assert len(rows) == 3 + 4  # the steps ran inline: no other jobs
    names = sorted(s.name for s in steps if s.job_id == orders["A-1001"].id)
    assert names == ["<fan-out>", "charge-payment", "reserve-stock", "ship-order"]
    declined = [s for s in steps if s.job_id == orders["A-1003"].id]
    assert [(s.name, s.status) for s in sorted(declined, key=lambda s: s.position)] == [
        ("reserve-stock", "completed"), ("charge-payment", "failed")]


def orders_by_id(orders: dict, job_id: str) -> str:
    return next(k for k, r in orders.items() if r.id == job_id)
