"""An order pipeline: a durable workflow with checkpointed steps and a fan-out.

``process-order`` reserves stock, charges the card, packs every line of the order in
parallel (one sub-job per line, on the ``packing`` queue), then ships. Each finished step is
stored: if the workflow is retried or its actor is killed, finished steps return their stored
results instead of charging the card twice.
"""

import hashlib
from dataclasses import dataclass

import durable_jobs as jobs

queue = jobs.Queue()


@dataclass
class Order:
    id: str
    card: str
    lines: list  # [{"sku": "MUG-1", "qty": 2, "price": 9.5}, ...]


@queue.job("process-order", retries=3)
def process_order(order: Order) -> dict:
    """The workflow: three checkpointed steps around a fan-out."""
    reservation = jobs.call("reserve-stock", {"order": order.id, "lines": order.lines})
    total = round(sum(line["qty"] * line["price"] for line in order.lines), 2)
    payment = jobs.call("charge-payment", {"order": order.id, "card": order.card,
                                           "amount": total})
    parcels = jobs.fan_out(
        [jobs.Sub("pack-item", {"order": order.id, **line}) for line in order.lines],
        strategy=jobs.FailFast(), queue="packing", timeout=120)
    tracking = jobs.call("ship-order", {"order": order.id, "parcels": jobs.values(parcels)})
    return {"order": order.id, "reservation": reservation, "charged": payment["amount"],
            "parcels": jobs.values(parcels), "tracking": tracking}


@queue.job("reserve-stock")
def reserve_stock(args: dict) -> str:
    return f"R-{args['order']}-{len(args['lines'])}"


@queue.job("charge-payment")
def charge_payment(args: dict) -> dict:
    if args["card"].startswith("0000"):
        raise jobs.NoRetry("card declined")  # retrying cannot help: fail the order now
    return {"amount": args["amount"], "auth": _digest(args["order"], args["card"])[:8]}


@queue.job("pack-item", retries=2, timeout=30)
def pack_item(args: dict) -> dict:
    """CPU-heavy stand-in (label rendering): runs in its own actor process."""
    label = f"{args['order']}/{args['sku']}".encode()
    for _ in range(5_000 * args["qty"]):
        label = hashlib.sha256(label).digest()
    return {"sku": args["sku"], "qty": args["qty"], "label": label.hex()[:10]}


@queue.job("ship-order")
def ship_order(args: dict) -> str:
    return "TRK-" + _digest(args["order"], *(p["label"] for p in args["parcels"]))[:10].upper()


def _digest(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()
