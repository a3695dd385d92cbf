"""Top-1/top-5 of an exported model (run folder, .keras or SavedModel); optionally
its accuracy under common corruptions and FGSM. A multi-label model
(--task=multilabel): mAP, per-class AP, and micro and macro F1 at the thresholds
its run recorded; under corruptions and FGSM (on the summed binary cross-entropy),
mAP.

  python tools/evaluate.py --model=runs/teacher --dataset=fashion_mnist --split=test
  python tools/evaluate.py --model=runs/fashion_mnist/gen1 --corruptions=all \
      --fgsm_epsilons=2/255,8/255 --output=gen1_robustness.json
  python tools/evaluate.py --model=runs/tags/gen1 --task=multilabel \
      --dataset=folder:tagged --labels_file=labels.csv
"""

import os

from absl import flags, logging

from nstudent.startup import import_tensorflow_quietly

import_tensorflow_quietly()  # before anything imports it
from nstudent import cli  # noqa: E402
from nstudent.errors import InputError  # noqa: E402

cli.define_data_flags()
flags.DEFINE_string("model", None, "Run folder, .keras file or SavedModel folder.",
                    required=True)
flags.DEFINE_enum("prefer", "saved_model", ["saved_model", "keras"],
                  "Which export of a run folder to load.")
flags.DEFINE_string("split", "test", "Split to evaluate.")
flags.DEFINE_integer("image_size", 0, "Resize images to this; 0: the run's training size.")
flags.DEFINE_integer("batch_size", 256, "Batch size.")
flags.DEFINE_string("output", None, "Also write the metrics to this JSON file.")
flags.DEFINE_list("corruptions", [], "Common corruptions to evaluate under ('all' or "
                  "names: gaussian_noise, shot_noise, gaussian_blur, contrast, brightness, "
                  "jpeg_compression, pixelate).")
flags.DEFINE_list("severities", ["1", "2", "3", "4", "5"], "Corruption severities (1-5).")
flags.DEFINE_list("fgsm_epsilons", [], "FGSM step sizes as fractions of the pixel range, "
                  "e.g. 2/255,8/255 (needs the Keras model).")
flags.DEFINE_integer("examples", 0, "Evaluate N images spread over the split; 0: all.")
flags.adopt_module_key_flags(cli)  # --help lists the shared flags too
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from nstudent import data, evaluation, export

    def stage():
        classifier = evaluation.load_classifier(FLAGS.model, prefer=FLAGS.prefer,
                                                multilabel=True)
        _check_task(classifier)
        info, splits = cli.load_dataset((FLAGS.split,))
        classifier.check_dataset(info)
        size = FLAGS.image_size or classifier.image_size or info.image_size
        if not size:
            raise InputError("Cannot tell the image size: pass --image_size.")
        if FLAGS.corruptions or FLAGS.fgsm_epsilons:
            return _robustness(classifier, info, splits[FLAGS.split], size)
        indices = evaluation.spread_subset(len(splits[FLAGS.split]), FLAGS.examples)
        batches = data.eval_dataset(
            splits[FLAGS.split].dataset(indices), info.num_classes,
            data.InputConfig.for_evaluation(size, FLAGS.batch_size, classifier.crop_fraction))
        if classifier.multilabel:
            return _multilabel(classifier, info, batches, size)
        metrics = evaluation.top_k_accuracy(classifier, batches, info.num_classes)
        metrics.update(model=os.path.abspath(classifier.path), format=classifier.kind,
                       dataset=FLAGS.dataset, split=FLAGS.split, image_size=size)
        calibrated = ("" if classifier.temperature == 1
                      else f", calibrated T={classifier.temperature:.3f}")
        print(f"{FLAGS.dataset}:{FLAGS.split} ({metrics['examples']} images, {size} px) "
              f"top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}  "
              f"ECE {metrics['ece']:.4f}{calibrated}  [{classifier.kind}]")
        if FLAGS.output:
            export.write_json(FLAGS.output, metrics)
        logging.info("done")

    return cli.run_stage(stage, validate=False)


def _check_task(classifier):
    """The model and --task must agree: a sigmoid per class or a softmax."""
    if classifier.multilabel and FLAGS.task != "multilabel":
        raise InputError(f"{FLAGS.model} is a multi-label classifier: pass "
                         "--task=multilabel (and --labels_file for a folder).")
    if FLAGS.task == "multilabel" and not classifier.multilabel:
        raise InputError(f"{FLAGS.model} is a single-label classifier (a softmax); "
                         "--task=multilabel needs a model trained with it.")


def _multilabel(classifier, info, batches, size):
    from nstudent import evaluation, export

    names = list(info.class_names)
    scores = evaluation.multilabel_scores(classifier, batches, names)
    metrics = {"task": "multilabel", "map": scores["map"],
               "average_precision": dict(zip(names, scores["per_class"])),
               "skipped_classes": scores["skipped"], "micro_f1": scores["micro_f1"],
               "macro_f1": scores["macro_f1"], "examples": scores["examples"],
               "thresholds": dict(zip(names, classifier.thresholds.tolist())),
               "model": os.path.abspath(classifier.path), "format": classifier.kind,
               "dataset": FLAGS.dataset, "split": FLAGS.split, "image_size": size}
    skipped = (f"; no positives for {', '.join(map(str, scores['skipped']))} (left out "
               "of the mAP)" if scores["skipped"] else "")
    print(f"{FLAGS.dataset}:{FLAGS.split} ({scores['examples']} images, {size} px) "
          f"mAP {scores['map']:.4f}  micro F1 {scores['micro_f1']:.4f}  macro F1 "
          f"{scores['macro_f1']:.4f} at the run's thresholds{skipped}  [{classifier.kind}]")
    if FLAGS.output:
        export.write_json(FLAGS.output, metrics)
    return 0


def _robustness(classifier, info, split, size):
    from nstudent import evaluation, export

    corruptions = (evaluation.CORRUPTIONS if FLAGS.corruptions == ["all"]
                   else FLAGS.corruptions)
    epsilons = [evaluation.parse_epsilon(e) for e in FLAGS.fgsm_epsilons]
    if epsilons and classifier.keras_model is None:
        classifier = evaluation.load_classifier(FLAGS.model, prefer="keras",
                                                multilabel=True)
    try:
        severities = [int(s) for s in FLAGS.severities]
    except ValueError:
        raise InputError(f"--severities must be integers 1-5, got {FLAGS.severities}.")
    report = evaluation.robustness_report(
        classifier, split, info, size, FLAGS.batch_size, corruptions, severities, epsilons,
        FLAGS.examples)
    report.update(model=os.path.abspath(classifier.path), dataset=FLAGS.dataset,
                  split=FLAGS.split)
    print(evaluation.report_table(report))
    if FLAGS.output:
        export.write_json(FLAGS.output, report)
    return 0


if __name__ == "__main__":
    cli.main_of(main)
