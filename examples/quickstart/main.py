"""Quick start: enqueue an album workflow, run ``durable-supervisor --config jobs.toml``
until the album is done, print the result, stop the supervisor with SIGTERM."""

import os
import signal
import subprocess
import sys

import durable_jobs as jobs

store = jobs.Store("sqlite:///jobs.db")
store.migrate()
queue = jobs.Queue(store)
album_id = queue.enqueue("album", {"name": "summer in lyon",
                                   "photos": [f"IMG_{n:04}.jpg" for n in range(8)]})
print(f"enqueued album job {album_id}")

bindir = os.path.dirname(sys.executable)
daemon = os.path.join(bindir, "durable-supervisor")
command = [daemon] if os.path.exists(daemon) else [sys.executable, "-m", "durable_jobs.cli"]
supervisor = subprocess.Popen([*command, "--config", "jobs.toml", "--log-level", "WARNING"])
try:
    result = queue.result(album_id, timeout=120)
finally:
    supervisor.send_signal(signal.SIGTERM)
    code = supervisor.wait(timeout=60)

print(f"album {result['title']!r}: {len(result['thumbnails'])} thumbnails")
for thumb in result["thumbnails"]:
    print(f"  {thumb['photo']}  {thumb['digest']}")
job = queue.get(album_id)
print(f"status {job.status}, attempt {job.attempt}; supervisor exited with {code}")
sys.exit(code)
