"""bench/throughput.py runs end to end at a tiny size and prints every figure."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_throughput_prints_every_figure():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "throughput.py"), "--width_scale=0.25",
         "--depth_scale=0.25", "--image_size=16", "--channels=1", "--num_classes=4",
         "--batch_size=8", "--steps=2", "--epochs=2"],
        capture_output=True, text=True, timeout=900,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow"))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    figures = {x["figure"]: x for x in lines}
    assert set(figures) == {"input_pipeline", "train_step", "supervised_train",
                            "pseudo_label", "noisy_student_train", "pretrain_train"}
    for x in lines:
        assert x["images_per_second"] > 0 and x["backend"] == "tensorflow"
        assert x["device"] == "cpu" and x["keras"] and x["tensorflow"]
    assert figures["pseudo_label"]["records_written"] > 0
    assert figures["noisy_student_train"]["unlabeled_ratio"] == 3
    assert figures["pretrain_train"]["views_per_image"] == 2


def test_pseudo_label_scale_prints_speed_and_memory(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "pseudo_label_scale.py"),
         "--images=1200", "--shards=1,2", "--repeats=1", "--stream_images=1024",
         f"--work_dir={tmp_path}"],
        capture_output=True, text=True, timeout=900,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow"))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    speed = [x for x in lines if x["figure"] == "teacher_inference"]
    assert [x["batch_size"] for x in speed] == [128, 512]
    assert all(x["network_images_per_second"] > 0 < x["labeling_path_images_per_second"]
               for x in speed)
    scale = {x["num_shards"]: x for x in lines if x["figure"] == "pseudo_label_scale"}
    assert set(scale) == {1, 2} and len(scale[2]["shards"]) == 2
    for x in scale.values():
        assert all(s["peak_rss_mib"] > 100 for s in x["shards"])
        assert x["in_process_images_per_second_end_to_end"] > 0
    one, two = (json.load(open(tmp_path / f"out-{n}" / "stats.json")) for n in (1, 2))
    assert one["classes"] == two["classes"] and one["images_read"] == 1200  # same set


def _paper(tmp_path, toy_folder, *args):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "paper_setting.py"),
         f"--out={tmp_path / 'runs'}", f"--results={tmp_path / 'results.jsonl'}",
         f"--results_md={tmp_path / 'RESULTS.md'}", "--student_steps=3",
         "--teacher_epochs=1", "--large_width=0.5",
         "--flags=--dataset=folder:%s,--channels=1,--width_scale=0.25,--depth_scale=0.25,"
         "--image_size=16,--batch_size=8,--min_confidence=0,--labels_per_class=20,"
         "--validation_fraction=0.25,--bn_recalibration_batches=2" % toy_folder, *args],
        capture_output=True, text=True, timeout=900,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow"))


def test_paper_setting_rows_are_recorded_skipped_and_rendered(tmp_path, toy_folder):
    """A row's figures go to the results file once finished; a second run skips it;
    --write renders mean +- std from the file alone."""
    result = _paper(tmp_path, toy_folder, "--rows=teacher,student_same", "--seeds=0")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(x) for x in open(tmp_path / "results.jsonl")]
    assert [(x["row"], x["seed"]) for x in lines] == [("teacher", 0), ("student_same", 0)]
    student = lines[1]
    assert student["steps"] == 3 and student["images_seen"] == 3 * 8 * 4
    assert student["minutes"] >= 0 and student["cpu_seconds"] > 0
    assert 0 <= student["test_top1"] <= 1 and student["parameters"] > 0
    # the validation recorded is the exported model's on its held-out labeled images
    # (metrics.json's, from network.evaluate); --revalidate recomputes an older line's
    # from the run folder with the exported classifier's own logits
    for line in lines:
        metrics = json.load(open(tmp_path / "runs" / "seed0" / line["row"] / "metrics.json"))
        assert metrics["validation_examples"] == 20  # 0.25 of 20 x 4 classes
        assert line["validation_top1"] == round(metrics["validation_top1"], 4)
        assert line["validation_of"] == "exported model"
    stale = [dict(line, validation_top1=-1.0) for line in lines]
    del stale[1]["validation_of"]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in stale))
    fixed = _paper(tmp_path, toy_folder, "--revalidate")
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    again = [json.loads(x) for x in open(tmp_path / "results.jsonl")]
    assert again[0]["validation_top1"] == -1.0  # already the exported model's: kept
    assert abs(again[1]["validation_top1"] - student["validation_top1"]) <= 1e-4
    assert again[1]["validation_of"] == "exported model"
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    again = _paper(tmp_path, toy_folder, "--rows=teacher,student_same", "--seeds=0")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "student_same seed 0: finished earlier; skipped" in again.stderr
    assert len(open(tmp_path / "results.jsonl").readlines()) == 2
    # the control matching a student started from the teacher: the teacher's steps on
    # top of the students'
    control = _paper(tmp_path, toy_folder, "--rows=control_from_teacher", "--seeds=0")
    assert control.returncode == 0, control.stderr[-3000:]
    teacher_steps = json.load(open(tmp_path / "runs" / "seed0" / "teacher" / "metrics.json"))[
        "optimizer_iterations"]
    line = json.loads(open(tmp_path / "results.jsonl").readlines()[-1])
    assert line["row"] == "control_from_teacher" and teacher_steps > 0
    assert line["steps"] == 3 + teacher_steps
    (tmp_path / "RESULTS.md").write_text("# Results\n\nhand-written\n")
    written = _paper(tmp_path, toy_folder, "--write")
    assert written.returncode == 0, written.stderr[-3000:]
    text = (tmp_path / "RESULTS.md").read_text()
    assert "hand-written" in text and "| student, same size, from scratch |" in text
    assert "| student_same - teacher | 1 |" in text
    # a recorded teacher whose model is gone is not trained again under its students
    import shutil

    shutil.rmtree(tmp_path / "runs" / "seed0" / "teacher")
    lost = _paper(tmp_path, toy_folder, "--rows=hard_labels", "--seeds=0")
    assert lost.returncode != 0 and "has a result line but its model is gone" in lost.stderr


def test_paper_setting_mean_std_and_paired_differences():
    """The table's arithmetic against a hand computation (in a subprocess: the bench
    defines absl flags that would clash with the tools' in this one)."""
    script = """
import json, sys
sys.path.insert(0, "bench")
import paper_setting as p
rows = [{"row": "a", "seed": s, "test_top1": v} for s, v in enumerate([0.80, 0.81, 0.85])]
rows += [{"row": "b", "seed": s, "test_top1": v} for s, v in enumerate([0.78, 0.78, 0.80])]
out = {"mean_std": p.mean_std([0.80, 0.82, 0.84]), "one": p.mean_std([0.5]),
       "paired": p.paired(rows, "a", "b")}
rows[2]["test_top1"] = 0.70
out["worse"] = p.paired(rows, "a", "b")
print(json.dumps(out))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    mean, std = out["mean_std"]
    assert abs(mean - 0.82) < 1e-12 and abs(std - 0.02) < 1e-12
    assert out["one"] == [0.5, None]
    diffs, mean, std, counts = out["paired"]
    # differences 0.02, 0.03, 0.05: mean 0.0333, std 0.01528, SE 0.00882 -> counts
    assert [round(d, 6) for d in diffs] == [0.02, 0.03, 0.05]
    assert abs(mean - 0.1 / 3) < 1e-9 and abs(std - 0.0152753) < 1e-6 and counts
    assert not out["worse"][3]  # differences 0.02, 0.03, -0.10: no longer counts


def test_trust_results_rows_on_a_small_slice(tmp_path):
    """bench/trust_results.py on 600 train images: the folders (two classes only in the
    unlabeled pool), a calibrated teacher, three cut-offs, their students, the table."""
    args = [sys.executable, os.path.join(ROOT, "bench", "trust_results.py"),
            f"--out={tmp_path / 'runs'}", f"--results={tmp_path / 'trust.jsonl'}",
            f"--results_md={tmp_path / 'RESULTS.md'}", "--max_train_images=600",
            "--labels_per_class=10", "--teacher_epochs=1", "--student_steps=2",
            "--min_precision=0.5", "--flags=--width_scale=0.25,--depth_scale=0.25,"
            "--image_size=16,--batch_size=2,--unlabeled_ratio=1,"
            "--bn_recalibration_batches=2,--min_precision_count=1"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(x) for x in open(tmp_path / "trust.jsonl")]
    assert [x["row"] for x in lines] == ["raw_0.3", "calibrated_0.3", "precision"]
    classes = json.load(open(tmp_path / "runs" / "seed0" / "data" / "classes.json"))
    assert len(classes) == 600 - 80 and classes.count("bag") > 0  # 8 classes x 10 labeled
    assert not os.path.exists(tmp_path / "runs" / "seed0" / "data" / "labeled" / "train" / "bag")
    # A 1-epoch toy teacher's confidences sit near the cut-offs, so which stage (if any)
    # refuses a row depends on the CPU's numerics: each possible outcome is pinned exactly.
    for x in lines:
        assert 0 <= x["kept_out_of_domain"] <= x["images_kept"] <= len(classes)
        stage = x.get("refused_stage")
        if stage == "pseudo_label":  # the cut-off kept none of the unlabeled images
            assert x["images_kept"] == x["records"] == 0 and x["student_top1"] is None
            assert x["student_steps"] == 0 and x["kept_accuracy"] is None
            assert "filters out every one of the 520 images" in x["refused"]
        elif stage == "student":  # it kept fewer images than one pseudo batch
            assert x["images_kept"] >= 1 and x["student_top1"] is None
            assert x["student_steps"] == 0 and "pseudo batch" in x["refused"]
        else:
            assert stage is None and x["images_kept"] >= 1
            assert x["student_steps"] == 2 and 0 <= x["student_top1"] <= 1
    (tmp_path / "RESULTS.md").write_text("# Results\n")
    written = subprocess.run(args + ["--write"], capture_output=True, text=True, timeout=300,
                             env=env)
    assert written.returncode == 0, written.stderr[-3000:]
    assert "| 0.3 on the calibrated softmax | 1 |" in (tmp_path / "RESULTS.md").read_text()


def test_trust_results_records_a_refusal_at_either_stage(tmp_path):
    """run_seed with the tools replaced: the precision row's labeling refuses, the
    calibrated row's student refuses, the raw row trains. Each refusal is a results line
    naming its stage and message (no crash, no student after a refused labeling), and
    the table says which stage refused and why."""
    script = r"""
import json, os, sys
sys.path.insert(0, "bench")
import common, trust_results as t
from absl import flags
out, results = sys.argv[1], sys.argv[2]
flags.FLAGS(["trust", f"--out={out}", f"--results={results}"])
root = os.path.join(out, "seed0")
os.makedirs(os.path.join(root, "data"))
os.makedirs(os.path.join(root, "teacher"))
json.dump(["bag", "dress"], open(os.path.join(root, "data", "classes.json"), "w"))
cal = {"test_before": {"ece": 0.2}, "test_after": {"ece": 0.1, "examples": 9},
       "temperature": 0.8}
json.dump({"test_top1": 0.5, "calibration": cal},
          open(os.path.join(root, "teacher", "metrics.json"), "w"))
json.dump({"dataset": {"class_names": ["dress"]}},
          open(os.path.join(root, "teacher", "model_info.json"), "w"))
calls = []

def tool(name, run, *args):
    row = os.path.basename(run).partition("_")[2]
    calls.append((name, row))
    if name == "pseudo_label.py":
        if row == "precision":
            raise common.ToolRefused(name, "error: every per-class cut-off "
                                     "(--min_precision) filters out every one of the 2 images.")
        os.makedirs(run)
        json.dump({"distinct_images": 2, "records": 3},
                  open(os.path.join(run, "stats.json"), "w"))
    elif row == "calibrated_0.3":
        raise common.ToolRefused(name, "error: 1 pseudo-labeled image is fewer than one "
                                 "pseudo batch (2).")
    elif row:
        os.makedirs(run)
        json.dump({"test_top1": 0.75, "optimizer_iterations": 2},
                  open(os.path.join(run, "metrics.json"), "w"))

t._tool = tool
t._kept = lambda *args: {"kept_out_of_domain": 1, "kept_accuracy": 1.0}
t.run_seed(0, set())
print(json.dumps({"calls": calls, "table": t.render(common.read_jsonl(results))}))
"""
    results = tmp_path / "trust.jsonl"
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "runs"),
                             str(results)], capture_output=True, text=True, cwd=ROOT,
                            timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert ["pseudo_label.py", "precision"] in out["calls"]
    assert ["train.py", "precision"] not in out["calls"]  # nothing to train on
    lines = {x["row"]: x for x in map(json.loads, open(results))}
    assert set(lines) == {"raw_0.3", "calibrated_0.3", "precision"}
    raw, cal, precision = lines["raw_0.3"], lines["calibrated_0.3"], lines["precision"]
    assert raw["student_top1"] == 0.75 and "refused_stage" not in raw
    assert (cal["refused_stage"], cal["student_top1"], cal["images_kept"]) == ("student",
                                                                              None, 2)
    assert (precision["refused_stage"], precision["images_kept"], precision["records"]) == (
        "pseudo_label", 0, 0)
    assert "filters out every one of the 2 images" in precision["refused"]
    assert "(pseudo_label refused in 1 of 1: every per-class cut-off (--min_precision) " \
        "filters out every one of the 2 images) |" in out["table"]
    assert "(student refused in 1 of 1: 1 pseudo-labeled image is fewer than one pseudo " \
        "batch (2)) |" in out["table"]


def test_a_refused_tool_is_an_outcome_and_the_table_says_so():
    """run_tool turns a tool's exit 2 (bad input, a bad flag included) into ToolRefused
    with its one-line message (a bug's traceback stays a CalledProcessError); the trust
    table counts seeds with no student."""
    script = """
import json, subprocess, sys
sys.path.insert(0, "bench")
import common, trust_results as t
out = {}
try:
    common.run_tool("predict.py", "--model=/nonexistent", "--input=folder:/nonexistent",
                    "--output=/nonexistent/p.csv", "--top_k=0")
except common.ToolRefused as e:
    out["refused"] = e.message
try:
    common.run_tool("predict.py", "--no_such_flag_at_all")  # a bad flag: exit 2 too
except common.ToolRefused as e:
    out["flag"] = e.message
except subprocess.CalledProcessError as e:
    out["flag_rc"] = e.returncode
row = {"images_kept": 1, "kept_accuracy": 1.0, "kept_out_of_domain": 0, "teacher_top1": 0.5,
       "teacher_ece": 0.1, "teacher_ece_calibrated": 0.1, "temperature": 1.0,
       "test_images": 9}
rows = [dict(row, row="precision", seed=0, student_top1=0.5),
        dict(row, row="precision", seed=1, student_top1=0.7),
        dict(row, row="precision", seed=2, student_top1=None)]
out["table"] = t.render(rows)
print(json.dumps(out))
"""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=ROOT, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["refused"].startswith("error:") and "top_k" in out["refused"]
    assert "flag_rc" not in out and out["flag"].startswith("error:")
    assert "no_such_flag_at_all" in out["flag"]
    # student top-1 over the two seeds that had one: 0.6 ± 0.1414 (numpy std, ddof=1)
    assert "| 0.6000 ± 0.1414 (student refused in 1 of 3) |" in out["table"]


def test_multilabel_results_rows_on_tiny_mosaics(tmp_path):
    """bench/multilabel_results.py on a few mosaics: the teacher and masked rows, the
    pseudo-labels' precision and recall against the hidden labels (recounted here from
    the records, in the classes' order of the teacher), a larger and longer student
    (masked_large_long) and its second generation, a rerun that adds nothing, and the
    table."""
    import csv

    import pytest

    from nstudent.pseudo_labels import read_records

    args = [sys.executable, os.path.join(ROOT, "bench", "multilabel_results.py"),
            f"--out={tmp_path / 'runs'}", f"--results={tmp_path / 'ml.jsonl'}",
            f"--results_md={tmp_path / 'RESULTS.md'}", "--train_mosaics=60",
            "--test_mosaics=20", "--unlabeled_mosaics=40", "--teacher_epochs=1",
            "--student_steps=2", "--rows=masked_large_long,masked_large_long_gen2",
            "--long_steps=3",
            "--large_width=0.5", "--flags=--width_scale=0.25,--depth_scale=0.25,--image_size=16,"
            "--batch_size=4,--bn_recalibration_batches=1,--negative_threshold=0.3"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(x) for x in open(tmp_path / "ml.jsonl")]
    assert [x["row"] for x in lines] == ["teacher", "masked_large_long",
                                         "masked_large_long_gen2"]
    seed = tmp_path / "runs" / "seed0"
    names = json.load(open(seed / "teacher" / "model_info.json"))["dataset"]["class_names"]
    with open(seed / "mosaics" / "unlabeled_labels.csv") as f:
        hidden = {r[0]: r[1].split(";") for r in list(csv.reader(f))[1:]}
    files = sorted(hidden)
    right = called = 0
    for r in read_records(str(seed / "labels_masked")):  # masked_large_long's
        truth = hidden[files[int(r["index"])]]
        for c, name in enumerate(names):
            if r["mask"][c] and r["label"][c] >= 0.5:
                called += 1
                right += name in truth
    row = lines[1]
    assert row["pseudo_precision"] == pytest.approx(right / max(called, 1), abs=1e-4)
    assert row["pseudo_recall"] == pytest.approx(
        right / sum(len([c for c in v if c]) for v in hidden.values()), abs=1e-4)
    # the larger row: its student at --large_width (the teacher's 0.25 from --flags
    # overridden) for --long_steps, on the teacher's masked pseudo-labels
    large = json.load(open(seed / "student_masked_large_long" / "model_info.json"))
    assert large["model"]["width_scale"] == 0.5 and row["steps"] == 3
    assert 0 <= row["test_map"] <= 1 and row["labeled_by"] == "teacher"
    # the held-out mosaics' mAP, as each run's exported model scored them
    for x, run in zip(lines, ("teacher", "student_masked_large_long",
                              "student_masked_large_long_gen2")):
        assert x["validation_map"] == round(
            json.load(open(seed / run / "metrics.json"))["validation_map"], 4)
    # generation 2: the same student again, on pseudo-labels of generation 1
    gen2 = json.load(open(seed / "labels_masked_large_long_gen2" / "stats.json"))
    assert gen2["settings"]["teacher"] == str(seed / "student_masked_large_long")
    assert lines[2]["labeled_by"] == "student_masked_large_long"
    assert json.load(open(seed / "student_masked_large_long_gen2" / "model_info.json"))[
        "model"]["width_scale"] == 0.5
    again = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and len(open(tmp_path / "ml.jsonl").readlines()) == 3
    (tmp_path / "RESULTS.md").write_text("# Results\n")
    written = subprocess.run(args + ["--write"], capture_output=True, text=True, timeout=300,
                             env=env)
    assert written.returncode == 0, written.stderr[-3000:]
    table = (tmp_path / "RESULTS.md").read_text()
    assert "| teacher (labeled mosaics only) | 1 |" in table
    assert ", at width 0.5 (larger), 3 steps | 1 |" in table
    assert ", 3 steps, generation 2 (labeled by generation 1, the row above) | 1 |" in table
    # --labels_per_class: a table of its own, on the same mosaics, teacher by steps
    k_args = [a for a in args if not a.startswith(("--results=", "--rows="))] + [
        f"--results={tmp_path / 'ml_k.jsonl'}", "--rows=", "--labels_per_class=3",
        "--teacher_steps=2"]
    for extra in ([], ["--write"]):
        done = subprocess.run(k_args + extra, capture_output=True, text=True, timeout=600,
                              env=env)
        assert done.returncode == 0, done.stderr[-3000:]
    info = json.load(open(tmp_path / "runs" / "seed0_k3" / "teacher" / "model_info.json"))
    assert info["held_out"]["labels_per_class"] == 3
    assert info["held_out"]["dataset"] == f"folder:{seed / 'mosaics' / 'labeled'}"
    (k_row,) = [json.loads(x) for x in open(tmp_path / "ml_k.jsonl")]
    assert k_row["steps"] == 2 and k_row["settings"]["labels_per_class"] == 3
    both = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- bench/multilabel_results.py --labels_per_class=3: begin -->" in both
    assert both.count("| teacher (labeled mosaics only) | 1 |") == 2


def test_paired_t_test_against_closed_forms_and_a_table():
    """Student's t two-sided p against its closed forms (df 1: 1 - 2 atan(t) / pi; df 2:
    1 - t / sqrt(t^2 + 2)) and the printed table's 0.05 critical values; the paired test
    of 0.02, 0.03, 0.05 is t = 3.78 on 2 df, p = 0.063: no finding, although its mean
    is beyond twice its standard error (the older benches' "counts")."""
    import math

    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import common

    for t in (0.3, 1.0, 2.5, 12.0):
        assert abs(common.t_two_sided_p(t, 1) - (1 - 2 * math.atan(t) / math.pi)) < 1e-9
        assert abs(common.t_two_sided_p(-t, 2) - (1 - t / math.sqrt(t * t + 2))) < 1e-9
    for df, critical in ((2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042)):
        assert abs(common.t_two_sided_p(critical, df) - 0.05) < 3e-4
    rows = [{"row": "a", "seed": s, "test_top1": v} for s, v in enumerate([0.80, 0.81, 0.85])]
    rows += [{"row": "b", "seed": s, "test_top1": v} for s, v in enumerate([0.78, 0.78, 0.80])]
    test = common.paired_t_test(rows, "a", "b")
    t = (0.1 / 3) / (0.0152753 / math.sqrt(3))
    assert test["seeds"] == 3 and abs(test["t"] - t) < 1e-4
    assert abs(test["p"] - (1 - t / math.sqrt(t * t + 2))) < 1e-5 and not test["finding"]
    assert common.paired(rows, "a", "b")[3]  # the 2-SE rule calls it a difference
    rows += [{"row": r, "seed": 3, "test_top1": v} for r, v in (("a", 0.84), ("b", 0.80))]
    assert common.paired_t_test(rows, "a", "b")["finding"]  # 4 seeds: t = 5.42, p = 0.012
    one = common.paired_t_test(rows[:1] + rows[3:4], "a", "b")
    assert one["seeds"] == 1 and one["p"] is None and not one["finding"]


def test_converged_grid_records_curves_commit_and_renders_t_tests(tmp_path, toy_folder):
    """bench/converged.py on a toy folder: the plain CNN, the teacher and a student
    labeled by it; each line records the commit it ran from, the steps, images seen and
    the validation curve's plateau; the runs' metrics.json hold the curve and curves.png
    is drawn; a rerun adds nothing; --write renders the paired t-test columns."""
    args = [sys.executable, os.path.join(ROOT, "bench", "converged.py"),
            f"--out={tmp_path / 'runs'}", f"--results={tmp_path / 'c.jsonl'}",
            f"--results_md={tmp_path / 'RESULTS.md'}", "--teacher_epochs=2",
            "--cnn_epochs=2", "--student_steps=3", "--control_steps=3", "--seeds=0",
            "--rows=plain_cnn,teacher,student",
            "--flags=--dataset=folder:%s,--channels=1,--width_scale=0.25,--depth_scale=0.25,"
            "--image_size=16,--batch_size=8,--min_confidence=0,--labels_per_class=20,"
            "--validation_fraction=0.25,--bn_recalibration_batches=2" % toy_folder]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(x) for x in open(tmp_path / "c.jsonl")]
    assert [x["row"] for x in lines] == ["plain_cnn", "teacher", "student"]
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip()
    for line in lines:
        run = tmp_path / "runs" / "seed0" / line["row"]
        metrics = json.load(open(run / "metrics.json"))
        assert line["commit"].rstrip("+") == head
        assert line["validation_top1"] == round(metrics["validation_top1"], 4)
        curve = metrics["validation_curve"]
        assert curve and curve[-1]["step"] == metrics["optimizer_iterations"]
        assert line["plateau"]["best"] == round(max(p["top1"] for p in curve), 4)
        assert (run / "curves.png").stat().st_size > 0
    cnn, teacher, student = lines
    assert json.load(open(tmp_path / "runs" / "seed0" / "plain_cnn" / "model_info.json"))[
        "model"]["variant"] == "cnn"
    for line in (cnn, teacher):  # 2 epochs of one pass over the labels
        steps_per_epoch = json.load(open(tmp_path / "runs" / "seed0" / line["row"] /
                                         "metrics.json"))["steps_per_epoch"]
        assert line["steps"] == 2 * steps_per_epoch and line["images_seen"] == 8 * line["steps"]
    assert [p["epoch"] for p in json.load(open(
        tmp_path / "runs" / "seed0" / "teacher" / "metrics.json"))["validation_curve"]] == [1, 2]
    assert student["steps"] == 3 and student["images_seen"] == 3 * 8 * 4
    again = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and len(open(tmp_path / "c.jsonl").readlines()) == 3
    (tmp_path / "RESULTS.md").write_text("# Results\n")
    written = subprocess.run(args + ["--write"], capture_output=True, text=True,
                             timeout=300, env=env)
    assert written.returncode == 0, written.stderr[-3000:]
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| p (two-sided) | finding (p < 0.05) |" in text
    assert "| teacher - plain_cnn | 1 |" in text and "(one run)" in text
