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
