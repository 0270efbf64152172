"""Summarise a py-spy ``--format raw`` (collapsed stacks) file: the top functions by own and by total time.

    python benchmarks/profile_summary.py PROFILE.txt [--top 15]

``run.py --profile DIR`` writes DIR/dispatcher.txt and DIR/worker.txt and calls this on both.  Samples in
which the process was idle are not recorded by py-spy (no ``--idle``), so percentages are shares of the time
the process spent running Python code.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")


def _site(frame: str) -> str:
    """``function (path/file.py:123)`` -> ``function (file.py)``: group a function's lines together."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    parts = path.split("/")
    short = "/".join(parts[-2:]) if parts[-1] in ("__init__.py", "_run.py", "_impl.py") else parts[-1]
    return f"{match.group('fn')} ({short})"


def summarize(path: Path | str, top: int = 15) -> str:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in Path(path).read_text(errors="replace").splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        frames = [f for f in match.group(1).split(";") if f and not f.startswith(("process ", "thread "))]
        count = int(match.group(2))
        if not frames:
            continue
        samples += count
        sites = [_site(f) for f in frames]
        own[sites[-1]] += count
        for site in set(sites):
            total[site] += count
    if not samples:
        return "(no samples)\n"
    out = [f"{samples} samples recorded", "", f"top {top} by own time:"]
    out += [f"  {100 * c / samples:5.1f}%  {site}" for site, c in own.most_common(top)]
    out += ["", f"top {top} by total time (own + callees), outside trio/stdlib plumbing:"]
    plumbing = ("run (trio/_core/_run.py)", "unrolled_run", "<module>", "main (", "run (trio/_core", "_run.py)")
    shown = 0
    for site, c in total.most_common():
        if any(p in site for p in plumbing) or c == samples:
            continue
        out.append(f"  {100 * c / samples:5.1f}%  {site}")
        shown += 1
        if shown >= top:
            break
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profile")
    p.add_argument("--top", type=int, default=15)
    a = p.parse_args()
    sys.stdout.write(summarize(a.profile, a.top))


if __name__ == "__main__":
    main()
