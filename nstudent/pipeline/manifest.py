"""manifest.json: which steps of a pipeline run finished, so a re-run resumes.

A step is recorded only after its artifact is complete (metrics.json written,
every shard complete), and the manifest itself is replaced atomically. A kill
at any moment therefore loses at most the step in progress, never a finished
one; a finished artifact the manifest does not list yet (a kill between the
two writes) is adopted, not redone.
"""

import json
import os
import time

from nstudent.errors import InputError
from nstudent.export.atomic import read_json, write_json

MANIFEST = "manifest.json"


def differences(old, new, prefix=""):
    """The keys whose values differ, nested ones dotted (student.unlabeled_ratio)."""
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys.extend(differences(a, b, f"{prefix}{k}."))
        elif a != b:
            keys.append(f"{prefix}{k}")
    return keys


class Manifest:
    def __init__(self, out_dir, config):
        """Opens or starts <out_dir>/manifest.json for a run of `config` (a dict)."""
        self.path = os.path.join(out_dir, MANIFEST)
        config = json.loads(json.dumps(config))  # as stored: tuples become lists
        if os.path.exists(self.path):
            self.data = read_json(self.path)
            old = self.data["config"]
            if old != config:
                changed = differences(old, config)
                raise InputError(
                    f"{out_dir!r} holds a pipeline run with other settings ({', '.join(changed)} "
                    "differ); resume with the same flags, or use a new --out.")
        else:
            self.data = {"config": config, "steps": {}}

    def finished(self, name):
        return name in self.data["steps"]

    def record(self, name, summary):
        self.data["steps"][name] = dict(summary, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        write_json(self.path, self.data)

    def summary(self, name):
        return self.data["steps"][name]
