"""Quick-start handlers: a CPU-heavy step and a durable workflow that fans it out."""

import hashlib

import durable_jobs as jobs

queue = jobs.Queue()


@queue.job("thumbnail", retries=2, timeout=30)
def thumbnail(args: dict) -> dict:
    """Stand-in for real image work: burn some CPU and return a digest."""
    data = args["photo"].encode()
    for _ in range(20_000):
        data = hashlib.sha256(data).digest()
    return {"photo": args["photo"], "digest": data.hex()[:12]}


@queue.job("album")
def album(args: dict) -> dict:
    """A workflow: one checkpointed step, then a fan-out that frees this actor while it waits."""
    title = jobs.call("title", {"name": args["name"]})
    results = jobs.fan_out([jobs.Sub("thumbnail", {"photo": p}) for p in args["photos"]])
    return {"title": title, "thumbnails": jobs.values(results)}


@queue.job("title")
def title(args: dict) -> str:
    return args["name"].title()
