"""What the benchmarks share: running a tool from the repository root, reading its run."""

import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tool(name, *args):
    """Runs tools/<name> from the repository root (flagfiles name paths from there)."""
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *args], check=True,
                   cwd=ROOT)


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.json")) as f:
        return json.load(f)


def machine():
    return {"cpus": os.cpu_count(), "machine": platform.machine()}
