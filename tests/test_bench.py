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
                            "pseudo_label", "noisy_student_train"}
    for x in lines:
        assert x["images_per_second"] > 0 and x["backend"] == "tensorflow"
        assert x["device"] == "cpu" and x["keras"] and x["tensorflow"]
    assert figures["pseudo_label"]["records_written"] > 0
    assert figures["noisy_student_train"]["unlabeled_ratio"] == 3
