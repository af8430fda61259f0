"""Test app: publish one event with our settings and environment, then idle until SIGTERM.

settings.exit = N makes it exit with status N right after publishing (crash loops, policies).
settings.allocateMiB = N makes it first allocate and touch N MiB, and say in the event whether
that worked (resource limits: the manifest's memory-max).
settings.hang = true makes it ignore SIGTERM, and start a child (`sleep`, in its process group)
that ignores it too: only the supervisor's SIGKILL of the group ends them.
"""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

settings = json.loads(os.environ["SHOAL_APP_SETTINGS"])
env = {k: v for k, v in os.environ.items() if k.startswith(("SHOAL_", "AX_", "ECHO_"))}
with open("marker", "a") as f:  # in the working dir: <data-dir>/apps/<id>/data
    f.write("started\n")
payload = {"settings": settings, "env": env, "pid": os.getpid(), "cwd": os.getcwd(),
           "argv": sys.argv}
if "allocateMiB" in settings:
    try:
        block = bytearray(settings["allocateMiB"] << 20)
        for i in range(0, len(block), 4096):  # touched, so it is really in memory
            block[i] = 1
        del block
        payload["allocated"] = True
    except MemoryError:
        payload["allocated"] = False
if settings.get("hang"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the child across exec
    payload["childPid"] = subprocess.Popen(["sleep", "3600"]).pid
body = json.dumps({"data": [{"semantics": "test.apps", "name": env["SHOAL_APP_ID"],
                             "payload": payload}]}).encode()
req = urllib.request.Request(env["SHOAL_API"] + "/api/v1/events/publish", data=body,
                             headers={"Content-Type": "application/json"})
urllib.request.urlopen(req, timeout=30).read()
print("published", json.dumps(settings), flush=True)
print("a line on stderr", file=sys.stderr, flush=True)
if "exit" in settings:
    sys.exit(settings["exit"])
if not settings.get("hang"):
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(3600)
