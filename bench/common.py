"""What the benchmarks share: running a tool from the repository root, reading its run."""

import collections
import json
import math
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ToolRefused(Exception):
    """A tool exited 2: it refused its input with a one-line `error:` message, which a
    bench may record as the row's outcome (a cut-off that keeps too few images)."""

    def __init__(self, name, message):
        super().__init__(f"{name}: {message}")
        self.message = message


def run_tool(name, *args):
    """Runs tools/<name> from the repository root (flagfiles name paths from there),
    passing its stderr through. Exit 2 raises ToolRefused with the tool's message; any
    other failure raises CalledProcessError with the end of its stderr."""
    command = [sys.executable, os.path.join(ROOT, "tools", name), *args]
    tail = collections.deque(maxlen=40)
    with subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True) as process:
        for line in process.stderr:
            sys.stderr.write(line)
            tail.append(line)
    if process.returncode == 2:
        errors = [line for line in tail if line.startswith("error:")]
        raise ToolRefused(name, (errors or list(tail) or ["exit 2"])[-1].strip())
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command,
                                            stderr="".join(tail))


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.json")) as f:
        return json.load(f)


def read_jsonl(path):
    """A committed results file: one dict per non-empty line; [] when it is not there."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def machine():
    return {"cpus": os.cpu_count(), "machine": platform.machine()}


def write_results_block(begin, end, block, path=os.path.join(ROOT, "RESULTS.md")):
    """Replaces (or appends) the block between the `begin` and `end` markers of
    RESULTS.md (or `path`), keeping the hand-written text around it."""
    text = open(path).read() if os.path.exists(path) else "# Results\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    with open(path + ".tmp", "w") as f:
        f.write(f"{head}{begin}\n{block}\n{end}{tail}")
    os.replace(path + ".tmp", path)


def mean_std(values):
    """(mean, sample standard deviation or None for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def paired(results, a, b, key="test_top1"):
    """Row a - row b of `key` over the seeds both have: (differences, mean, std,
    counts) where a difference counts when its mean exceeds twice its standard error
    (n >= 2)."""
    by_seed = {name: {r["seed"]: r[key] for r in results
                      if r["row"] == name and r[key] is not None} for name in (a, b)}
    seeds = sorted(set(by_seed[a]) & set(by_seed[b]))
    diffs = [by_seed[a][s] - by_seed[b][s] for s in seeds]
    if not diffs:
        return diffs, None, None, False
    mean, std = mean_std(diffs)
    counts = std is not None and abs(mean) > 2 * std / math.sqrt(len(diffs))
    return diffs, mean, std, counts
