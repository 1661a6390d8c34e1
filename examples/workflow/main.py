"""Order pipeline: enqueue three orders, run ``durable-supervisor --config jobs.toml`` until
they are done, print what happened to each, stop the supervisor with SIGTERM."""

import os
import signal
import subprocess
import sys

import durable_jobs as jobs

ORDERS = [
    {"id": "A-1001", "card": "4242-4242", "lines": [
        {"sku": "MUG-1", "qty": 2, "price": 9.5}, {"sku": "TEA-7", "qty": 1, "price": 4.25},
        {"sku": "SPOON-3", "qty": 4, "price": 1.0}]},
    {"id": "A-1002", "card": "5555-4444", "lines": [{"sku": "POT-2", "qty": 1, "price": 24.0}]},
    {"id": "A-1003", "card": "0000-0000", "lines": [{"sku": "MUG-1", "qty": 1, "price": 9.5}]},
]

store = jobs.Store("sqlite:///orders.db")
store.migrate()
queue = jobs.Queue(store)
ids = {order["id"]: queue.enqueue("process-order", order) for order in ORDERS}
print(f"enqueued {len(ids)} orders")

bindir = os.path.dirname(sys.executable)
daemon = os.path.join(bindir, "durable-supervisor")
command = [daemon] if os.path.exists(daemon) else [sys.executable, "-m", "durable_jobs.cli"]
supervisor = subprocess.Popen([*command, "--config", "jobs.toml", "--log-level", "WARNING"])
try:
    outcomes = {}
    for order_id, job_id in ids.items():
        try:
            outcomes[order_id] = queue.result(job_id, timeout=120)
        except jobs.JobFailedError as exc:
            outcomes[order_id] = exc
finally:
    supervisor.send_signal(signal.SIGTERM)
    code = supervisor.wait(timeout=60)

for order_id, outcome in outcomes.items():
    if isinstance(outcome, jobs.JobFailedError):
        print(f"order {order_id}: failed ({outcome.error})")
        continue
    parcels = ", ".join(f"{p['sku']} x{p['qty']}" for p in outcome["parcels"])
    print(f"order {order_id}: charged {outcome['charged']:.2f}, shipped {outcome['tracking']} "
          f"({parcels})")
print(f"supervisor exited with {code}")
sys.exit(code)
