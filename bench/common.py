"""What the benchmarks share: running a tool from the repository root, reading its run."""

import collections
import hashlib
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time

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


def timed_tool(name, out, *args):
    """tools/<name> --out=<out> unless <out> is finished (metrics.json), timed into
    <out>.timing.json: wall and CPU seconds summed over resumed calls, so a row's
    minutes survive a kill."""
    if os.path.exists(os.path.join(out, "metrics.json")):
        return
    timing_path = out + ".timing.json"
    timing = (json.load(open(timing_path)) if os.path.exists(timing_path) else
              {"wall_seconds": 0.0, "cpu_seconds": 0.0, "calls": 0,
               "load_average_at_start": os.getloadavg()[0]})
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    run_tool(name, *args, f"--out={out}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    timing["wall_seconds"] += time.time() - start
    timing["cpu_seconds"] += (after.ru_utime + after.ru_stime - before.ru_utime
                              - before.ru_stime)
    timing["calls"] += 1
    with open(timing_path + ".tmp", "w") as f:
        json.dump(timing, f)
    os.replace(timing_path + ".tmp", timing_path)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def define_grid_flags(name):
    """The flags every resumable grid bench has: --out (runs, not committed), --results
    (bench/results/<name>.jsonl, committed), --rows, --seeds, --flags, --stop_after_hours,
    --write and --results_md."""
    from absl import flags

    flags.DEFINE_string("out", f"runs/{name}", "Folder for the runs (not committed).")
    flags.DEFINE_string("results", os.path.join(ROOT, "bench", "results", f"{name}.jsonl"),
                        "Finished rows, one JSON line each (committed).")
    flags.DEFINE_list("rows", [], "Rows to run (names in ROWS, run in ROWS' order); "
                      "empty: all.")
    flags.DEFINE_list("seeds", [], "Of each row's own seeds, those to run; empty: all.")
    flags.DEFINE_list("flags", [], "More flags for every tool call (tests: a toy dataset).")
    flags.DEFINE_float("stop_after_hours", 0.0, "Start no new row after this many hours; "
                       "0: no limit (a row in progress still finishes or resumes later).")
    flags.DEFINE_bool("write", False, "Only render the RESULTS.md block from --results.")
    flags.DEFINE_string("results_md", os.path.join(ROOT, "RESULTS.md"), "Where --write goes.")


def settings_key(settings):
    """A short digest of what a row's result depends on: a finished line of other
    settings is not reused."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def pending(rows, done, key_of, only_rows=(), only_seeds=(), stop_after_hours=0.0):
    """The (row, seed) pairs a grid still has to run, in `rows`' order: `done` holds the
    (name, seed, settings key) of the finished lines, `key_of(row)` the row's key now;
    `only_rows`/`only_seeds` (the --rows/--seeds strings) pick some; none is started
    after `stop_after_hours` (0: no limit)."""
    from absl import app, logging

    unknown = [n for n in only_rows if n not in {r.name for r in rows}]
    if unknown:
        raise app.UsageError(f"--rows: unknown {', '.join(unknown)}; rows: "
                             f"{', '.join(r.name for r in rows)}.")
    start = time.time()
    for row in rows:
        if only_rows and row.name not in only_rows:
            continue
        key = key_of(row)
        for seed in row.seeds:
            if only_seeds and str(seed) not in only_seeds:
                continue
            if (row.name, seed, key) in done:
                logging.info("%s seed %d: finished earlier; skipped.", row.name, seed)
                continue
            hours = (time.time() - start) / 3600
            if stop_after_hours and hours > stop_after_hours:
                logging.info("Stopping after %.1f hours; rerun to continue.", hours)
                return
            logging.info("=== %s seed %d ===", row.name, seed)
            yield row, seed


def append_line(path, line):
    """One finished row: appended to the results file and printed."""
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")
    print(json.dumps(line), flush=True)


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


def t_two_sided_p(t, df):
    """Two-sided p of Student's t with `df` degrees of freedom: 1 - 2 * the integral
    of its density from 0 to |t| (Simpson's rule on 20,001 points; the density is
    smooth and bounded, so this is exact to ~1e-9 without scipy)."""
    t = abs(float(t))
    if math.isinf(t):
        return 0.0
    n = 20_000  # even: Simpson
    h = t / n
    log_c = (math.lgamma((df + 1) / 2) - math.lgamma(df / 2)
             - 0.5 * math.log(df * math.pi))
    total = 0.0
    for i in range(n + 1):
        x = i * h
        weight = 1 if i in (0, n) else (4 if i % 2 else 2)
        total += weight * math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))
    return min(max(1.0 - 2.0 * total * h / 3.0, 0.0), 1.0)


def paired_t_test(results, a, b, key="test_top1"):
    """Row a - row b of `key` over the seeds both have, with the paired t-test:
    {"seeds", "diffs", "mean", "std", "t", "p", "finding"}; a finding at p < 0.05
    (two-sided, n - 1 degrees of freedom). One seed: no std, t or p."""
    diffs, mean, std, _ = paired(results, a, b, key)
    out = {"seeds": len(diffs), "diffs": diffs, "mean": mean, "std": std, "t": None,
           "p": None, "finding": False}
    if std is not None:
        se = std / math.sqrt(len(diffs))
        out["t"] = math.inf if se == 0 else mean / se
        out["p"] = 0.0 if se == 0 and mean else (1.0 if se == 0 else
                                                  t_two_sided_p(out["t"], len(diffs) - 1))
        out["finding"] = out["p"] < 0.05
    return out
