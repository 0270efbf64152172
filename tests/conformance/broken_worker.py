"""A worker written from docs/PROTOCOL.md by hand, with one deliberate flaw (for the conformance kit's tests).

    TRIOSCHEDULE_CONNECT=HOST:PORT python broken_worker.py no-attempt|bad-status|no-heartbeat

Tasks end at once (no slow tasks, no cancel): it only has to get as far as its flaw.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import sys
import time

FLAW = sys.argv[1]


def frame(message: dict) -> bytes:
    payload = json.dumps(message).encode()
    return struct.pack(">I", 4 + len(payload)) + payload


def outcome(spec: dict) -> dict:
    attempt = {} if FLAW == "no-attempt" else {"attempt": spec.get("attempt", 1)}
    if spec["name"] == "add":
        return {"id": spec["id"], "status": "done" if FLAW == "bad-status" else "ok", **attempt, "value": sum(spec["args"])}
    error = {"type": "RuntimeError", "message": str(spec.get("args", [""])[0]), "traceback": ""}
    return {"id": spec["id"], "status": "error", **attempt, "error": error}


def main() -> None:
    host, port = os.environ["TRIOSCHEDULE_CONNECT"].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.sendall(frame({"version": 1, "role": "worker", "name": f"broken-{FLAW}",
                        "tasks": ["add", "fail", "slow_square"], "type": "hello"}))  # fmt: skip
    buffer, seq, sent = b"", 0, time.monotonic()
    while True:
        if select.select([sock], [], [], 0.1)[0]:
            data = sock.recv(65536)
            if not data:
                return
            buffer += data
        while len(buffer) >= 4 and len(buffer) >= struct.unpack(">I", buffer[:4])[0]:
            length = struct.unpack(">I", buffer[:4])[0]
            message, buffer = json.loads(buffer[4:length]), buffer[length:]
            if message["type"] == "run":
                seq += 1
                sock.sendall(frame({"seq": seq, "results": [outcome(s) for s in message["tasks"]], "type": "results"}))
                sent = time.monotonic()
            elif message["type"] in ("error", "goodbye"):
                return
        if FLAW != "no-heartbeat" and time.monotonic() - sent > 1.0:
            sock.sendall(frame({"type": "heartbeat"}))
            sent = time.monotonic()


if __name__ == "__main__":
    main()
