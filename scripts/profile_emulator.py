#!/usr/bin/env python3
"""Where the emulator's time goes under the payments load: py-spy samples the MiniStack process
(every non-idle thread, 20 Hz, 15 s) while `loadgen payments N` runs against the stack `make up`
deployed, and the samples are grouped by the MiniStack module they are in (the HTTP front and
dispatch, each emulated service, the Lambda runtime plumbing). Prints one JSON line.
Usage: scripts/profile_emulator.py [N] (default 32)."""

import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stack import ROOT  # noqa: E402

LOADGEN = os.path.join(ROOT, "target", "lambda", "loadgen", "bootstrap")
PY_SPY = os.path.join(os.path.dirname(sys.executable), "py-spy")


def group(stack):
    """The MiniStack part a sample is in: the first `ministack/services/<service>.py` frame,
    else the first other MiniStack module, else the innermost frame's function (socket I/O)."""
    frames = stack.split(";")
    for f in frames:
        m = re.search(r"ministack/services/(\w+)\.py", f)
        if m:
            return "service " + m.group(1)
    for f in frames:
        m = re.search(r"ministack/([\w/]+)\.py", f)
        if m:
            return m.group(1)
    return "outside MiniStack: " + (frames[-1].split(" (")[0] or "?")


def main():
    n = sys.argv[1] if len(sys.argv) > 1 else "32"
    with open(os.path.join(ROOT, ".local", "ministack.pid")) as f:
        pid = f.read().strip()
    load = subprocess.Popen([LOADGEN, "payments", n, "30"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    time.sleep(8)  # past the set-up (registrations), into the steady load
    with tempfile.NamedTemporaryFile(suffix=".txt") as out:
        subprocess.run([PY_SPY, "record", "--nonblocking", "--rate", "20", "--duration", "15", "--format", "raw",
                        "-o", out.name, "--pid", pid], check=True, capture_output=True)
        samples = collections.Counter()
        for line in open(out.name):
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if stack:
                samples[group(stack)] += int(count)
    result = json.loads(load.communicate()[0].strip().splitlines()[-1])["result"]
    total = sum(samples.values()) or 1
    print(json.dumps({
        "samples": total,
        "payments_per_s": result["payments_per_s"],
        "errors": result["errors"],
        "share": {k: round(v / total, 3) for k, v in samples.most_common(8)},
    }))


if __name__ == "__main__":
    main()
