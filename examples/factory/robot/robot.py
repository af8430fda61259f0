"""The logistics robot of seed 003, as a shoal process app (python3 standard library only).

It learns how much material is where from every participant's material-movements events
(subscribed from the node, local and replicated alike) and acts on it:
  - ws1's input buffer runs low      -> bring raw material from the store;
  - a station's output holds a batch -> bring it to the next station (ws3's: the warehouse).
Each transport is one mission: missionRecognized, missionStarted, pickedUp, delivered,
missionCompleted. The robot owns these facts; machines own what they consume and produce.
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
NAME = SETTINGS.get("name", "r1")
TICK = float(SETTINGS.get("tickSecs", 1.5))
BATCH = int(SETTINGS.get("batch", 3))
SUPPLY_BELOW = int(SETTINGS.get("supplyBelow", 4))

# Station -> (input material, output material); the route of seed 003's bracket.
ROUTE = [("ws1", "steel-blank", "bracket-cut"), ("ws2", "bracket-cut", "bracket-drilled"),
         ("ws3", "bracket-drilled", "bracket-coated")]
RAW_STORE = "raw-material-store"
WAREHOUSE = "warehouse"

levels = {}          # location -> pieces there, from every material movement seen
lock = threading.Lock()


def apply(payload):
    """Moves `levels` by one material-movements event (seed 003's four kinds)."""
    kind, n = payload.get("eventType"), int(payload.get("howMuch", 0))
    with lock:
        if kind in ("consumed", "pickedUp"):
            levels[payload["fromWhere"]] = levels.get(payload["fromWhere"], 0) - n
        if kind == "produced":
            levels[payload["where"]] = levels.get(payload["where"], 0) + n
        if kind == "delivered":
            levels[payload["toWhere"]] = levels.get(payload["toWhere"], 0) + n


def follow():
    """Reads every material movement, stored then live (NDJSON); reconnects if the node restarts."""
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
                    apply(event["payload"])
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


def mission(what, how_much, from_where, to_where):
    """One transport, recorded as it happens."""
    job = {"fromWhere": from_where, "what": what, "howMuch": how_much, "toWhere": to_where}
    stream = f"robot-missions/{NAME}"
    tags = ["robot", f"robot:{NAME}", "robot-mission"]
    moved = ["robot", f"robot:{NAME}", "material-movement", f"material:{what}"]
    publish(event(stream, NAME, "missionRecognized", tags, **job),
            event(stream, NAME, "missionStarted", tags, **job))
    publish(event("material-movements", NAME, "pickedUp", moved, fromWhere=from_where,
                  what=what, howMuch=how_much, byWhom=NAME))
    time.sleep(TICK)  # driving
    publish(event("material-movements", NAME, "delivered", moved, fromWhere=from_where,
                  what=what, howMuch=how_much, toWhere=to_where, byWhom=NAME),
            event(stream, NAME, "missionCompleted", tags, **job))
    print(f"moved {how_much} {what} from {from_where} to {to_where}", flush=True)


def next_mission():
    # Clearing a full output buffer comes first (the station further down starves otherwise),
    # the last station's first; then keeping ws1 supplied.
    with lock:
        for i, (station, _, output) in reversed(list(enumerate(ROUTE))):
            have = levels.get(f"{station}/output-buffer", 0)
            if have >= BATCH:
                to = f"{ROUTE[i + 1][0]}/input-buffer" if i + 1 < len(ROUTE) else WAREHOUSE
                return (output, have, f"{station}/output-buffer", to)
        if levels.get("ws1/input-buffer", 0) < SUPPLY_BELOW:
            return ("steel-blank", BATCH, RAW_STORE, "ws1/input-buffer")
    return None


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    threading.Thread(target=follow, daemon=True).start()
    print(f"robot {NAME} on {os.environ.get('SHOAL_NODE_ID')}", flush=True)
    while True:
        job = next_mission()
        if job:
            try:
                mission(*job)
            except OSError as e:
                print(f"cannot record the mission ({e}); retrying", file=sys.stderr, flush=True)
        time.sleep(TICK)


if __name__ == "__main__":
    main()
