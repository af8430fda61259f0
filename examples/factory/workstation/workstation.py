"""The machines and operators of seed 003's workstations, as a shoal process app (python3
standard library only).

Per station: the operator records what the station works on (workStarted in
workstation-status/<station>); the machine records its condition and work (machine-status/<m>)
and the material it consumes from its input buffer and produces into its output buffer
(material-movements). A machine works while its input buffer holds material, which it learns
from the robot's deliveries and its own consumption (subscribed from the node).
"""
import json
import os
import signal
import sys
import threading
import time
import urllib.request

API = os.environ["SHOAL_API"]
SETTINGS = json.loads(os.environ.get("SHOAL_APP_SETTINGS") or "{}")
STATIONS = SETTINGS.get("stations", ["ws1", "ws2", "ws3"])
OPERATOR = SETTINGS.get("operator", "anna")
TICK = float(SETTINGS.get("tickSecs", 1))
SCRAP_EVERY = int(SETTINGS.get("scrapEvery", 10))

# Station -> (machine, step, input material, output material): seed 003's bracket route.
STEPS = {"ws1": ("m1", "cutting", "steel-blank", "bracket-cut"),
         "ws2": ("m2", "drilling", "bracket-cut", "bracket-drilled"),
         "ws3": ("m3", "surface-treatment", "bracket-drilled", "bracket-coated")}
PROCESS = "bracket-v2"

inputs = {s: 0 for s in STATIONS}  # pieces in each of our stations' input buffers
lock = threading.Lock()


def follow():
    """Deliveries to and consumption from our input buffers, stored then live (NDJSON)."""
    mine = {f"{s}/input-buffer": s for s in STATIONS}
    lower = {}
    while True:
        body = json.dumps({"lowerBound": lower,
                           "subscriptions": [{"semantics": "material-movements"}]}).encode()
        req = urllib.request.Request(API + "/api/v1/events/subscribe", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req) as resp:
                for line in resp:
                    if not line.strip():
                        continue  # keep-alive
                    event = json.loads(line)
                    lower[event["stream"]["source"]] = event["offset"]
                    p = event["payload"]
                    with lock:
                        if p.get("eventType") == "delivered" and p.get("toWhere") in mine:
                            inputs[mine[p["toWhere"]]] += int(p.get("howMuch", 0))
                        if p.get("eventType") == "consumed" and p.get("fromWhere") in mine:
                            inputs[mine[p["fromWhere"]]] -= int(p.get("howMuch", 0))
        except OSError as e:
            print(f"subscription ended ({e}); reconnecting", file=sys.stderr, flush=True)
        time.sleep(1)


def publish(*events):
    body = json.dumps({"data": list(events)}).encode()
    req = urllib.request.Request(API + "/api/v1/events/publish", data=body,
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=30).read()


def event(semantics, name, kind, tags, **fields):
    return {"semantics": semantics, "name": name, "tags": tags,
            "payload": {"eventType": kind, **fields}}


def machine_tags(station, machine):
    return ["machine", f"machine:{machine}", f"workstation:{station}"]


def start(station, order):
    machine, step, _, _ = STEPS[station]
    publish(event("workstation-status", station, "workStarted",
                  ["operator", f"operator:{OPERATOR}", f"workstation:{station}"],
                  productionProcess=PROCESS, step=step, byWhom=OPERATOR),
            event("machine-status", machine, "machineReady", machine_tags(station, machine)),
            event("machine-status", machine, "workStarted",
                  machine_tags(station, machine) + [f"order:{order}"],
                  productionOrder=order, step=step))


def work(station, order, count):
    """One piece: consumed from the input buffer, then produced (or scrapped)."""
    machine, step, material_in, material_out = STEPS[station]
    tags = machine_tags(station, machine)
    moved = tags + ["material-movement"]
    consumed = event("material-movements", machine, "consumed",
                     moved + [f"material:{material_in}"], fromWhere=f"{station}/input-buffer",
                     what=material_in, howMuch=1, byWhom=machine)
    if count % SCRAP_EVERY == 0:
        publish(consumed, event("machine-status", machine, "scrapProduced", tags,
                                what=material_out, howMuch=1, reason="burr"))
        return
    publish(consumed,
            event("material-movements", machine, "produced",
                  moved + [f"material:{material_out}"], what=material_out, howMuch=1,
                  byWhom=machine, where=f"{station}/output-buffer"),
            event("machine-status", machine, "outputProduced", tags + [f"order:{order}"],
                  what=material_out, howMuch=1))


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    threading.Thread(target=follow, daemon=True).start()
    order = f"order-{int(time.time())}"
    for station in STATIONS:
        start(station, order)
    print(f"stations {', '.join(STATIONS)} working on {order}", flush=True)
    count = 0
    while True:
        time.sleep(TICK)
        for station in STATIONS:
            # Our own `consumed` event lowers the level (the subscription sees it within
            # milliseconds, long before the next tick).
            with lock:
                ready = inputs[station] > 0
            if ready:
                count += 1
                try:
                    work(station, order, count)
                except OSError as e:
                    print(f"cannot record the work ({e})", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
