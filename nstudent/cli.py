"""Flags shared by the tools in tools/, and turning them into library objects."""

import contextlib
import dataclasses
import json
import os
import shutil
import sys

from absl import flags, logging

from nstudent import augment, data, models, ranges, training
from nstudent.errors import InputError

FLAGS = flags.FLAGS


# {group: the flag names its define_*_flags defined}, filled as they run
GROUPS = {}


def _group(name):
    """Records which flags a define_*_flags function defines, so that a tool can list
    whole groups in its --help (`help_lists`); a group is defined once per process (a
    tool module and the Python API in one process both ask for it)."""
    def wrap(define):
        def defines():
            if name in GROUPS:
                return
            before = set(FLAGS)
            define()
            GROUPS[name] = tuple(sorted(set(FLAGS) - before))
        defines.__doc__ = define.__doc__
        return defines
    return wrap


def define_shared_flags():
    """Every tool takes every shared flag, so one flagfile serves all the stages; its
    --help lists only those it reads (`help_lists`), --helpfull all of them."""
    define_data_flags()
    define_model_flags()
    define_train_flags()
    define_pseudo_label_flags()
    define_student_flags()
    define_finetune_flags()
    define_pretrain_flags()
    define_distribution_flags()


def shared_flag_names():
    """Every shared flag's name (define_shared_flags must have run)."""
    return [name for names in GROUPS.values() for name in names]


def help_lists(*groups, names=()):
    """The shared flags a tool's --help lists beside its own: whole groups (GROUPS) and
    single `names`. The others are still accepted (a shared flagfile) and validated,
    and listed by --helpfull; a misspelt flag is still refused by name."""
    # key flags of the calling tool's module: absl names a script's module by argv[0]
    module = sys._getframe(1).f_globals["__name__"]
    module = sys.argv[0] if module == "__main__" else module
    for name in [n for g in groups for n in GROUPS[g]] + list(names):
        FLAGS.register_key_flag_for_module(module, FLAGS[name])


@_group("data")
def define_data_flags():
    flags.DEFINE_string(
        "dataset", "fashion_mnist",
        "fashion_mnist (embedded default: Debian's dataset-fashion-mnist files), "
        "tfds:NAME, folder:PATH (PATH/<split>/<class>/<images>) or tfrecord:PATH "
        "(PATH/<split>*.tfrecord* with 'image' bytes and 'label' int64).")
    flags.DEFINE_string("train_split", "train", "Training split (TFDS split or subfolder).")
    flags.DEFINE_string("test_split", "test", "Evaluation split.")
    flags.DEFINE_integer("channels", 3, "Channels of folder/TFRecord images, 1 or 3: "
                      "every image is converted (grey, RGBA, CMYK, palette -> RGB; colour "
                      "-> grey), as Keras' image_dataset_from_directory does.")
    flags.DEFINE_string(
        "unlabeled_dataset", None,
        "A separate collection of unlabeled images to pseudo-label: folder:PATH (every "
        "image under PATH; subfolders are not labels), tfds:NAME[:SPLIT] (default split: "
        "unlabelled, else train; labels ignored) or tfrecord:PATH (records with an encoded "
        "'image'). Unset: the train split's images outside the labeled subset.")
    flags.DEFINE_bool("verify_images", False, "Decode every image of an image folder once "
                      "at start (slow for large folders) instead of while streaming.")
    flags.DEFINE_integer("num_classes", 0, "Classes of a TFRecord dataset; 0: from "
                         "dataset_info.json or the largest label.")
    flags.DEFINE_string("tfds_data_dir", None, "TFDS data folder.")
    flags.DEFINE_bool("tfds_download", False, "Let TFDS download a dataset that is not "
                      "prepared locally (needs network).")
    flags.DEFINE_bool("drop_empty_classes", False, "An image folder's class folders that "
                      "hold no training image are left out of every split (recorded in "
                      "model_info.json and metrics.json) instead of refused by name.")
    flags.DEFINE_bool("skip_corrupt_images", False, "Skip unreadable images in an image "
                      "folder (counted, the first named, in the log and metrics.json) "
                      "instead of stopping with an error that names the file.")
    flags.DEFINE_integer("labels_per_class", 0, "Labeled examples kept per class; the "
                         "rest of the train split is unlabeled. 0: all labeled. "
                         "Multi-label: images picked until every class has this many "
                         "positives.")
    flags.DEFINE_enum("task", "multiclass", list(data.TASKS), "multiclass: one class per "
                      "image (softmax). multilabel: any number of classes per image (a "
                      "sigmoid per class; folder with --labels_file or TFRecords with a "
                      "'labels' list; train.py's supervised stage only in this version).")
    flags.DEFINE_string("labels_file", "", "--task=multilabel on a folder: the CSV in "
                        "every split folder naming its images' classes, rows "
                        "`path,class;class` (path relative to the split folder; empty: "
                        "no class present; an optional header `path,labels`).")
    flags.DEFINE_integer("seed", 0, "Seed of the labeled subset, initialization and noise.")


@_group("model")
def define_model_flags():
    flags.DEFINE_enum("model", "b0", list(models.VARIANTS), "EfficientNet variant, or "
                      "cnn: the plain small-image CNN (three blocks of two 3x3 convs with "
                      "batch norm, 0.29M parameters), the supervised baseline to beat.")
    flags.DEFINE_float("width_scale", 1.0, "Multiplies the variant's width coefficient.")
    flags.DEFINE_float("depth_scale", 1.0, "Multiplies the variant's depth coefficient.")
    flags.DEFINE_integer("stem_stride", 2, "Stride of the stem convolution; 1 suits "
                         "28-32 px images.")
    flags.DEFINE_enum("stage_strides", "auto", ["auto", *models.STAGE_STRIDES],
                      "Stride plan of the seven stages: imagenet (total stride 32 with "
                      "the stem's 2: a 1x1 map at the head at 32 px), small (the "
                      "reference's small-image plan, stages 2 and 3 at stride 1: total "
                      "stride 8, a 4x4 map at 28-32 px), auto: small from "
                      f"{models.efficientnet.SMALL_IMAGE_MIN} to "
                      f"{models.efficientnet.SMALL_IMAGE_MAX} px. The training log "
                      "prints each stage's map size.")
    flags.DEFINE_integer("image_size", 0, "Training resolution; 0: the variant's.")
    flags.DEFINE_float("dropout", -1.0, "Dropout before the classifier; <0: the variant's.")
    flags.DEFINE_float("stochastic_depth", 0.2, "Stochastic depth drop rate of the last "
                       "block (rising linearly from 0 at the first). It reaches only "
                       "the residual blocks (stride 1, as many channels out as in): at "
                       "B0 with --depth_scale=0.5, 3 of 10 (block4b, block5b, block6b); "
                       "the training log lists them.")


@_group("train")
def define_train_flags():
    flags.DEFINE_integer("batch_size", 128, "Labeled batch size.")
    flags.DEFINE_integer("epochs", 30, "Epochs.")
    flags.DEFINE_integer("steps_per_epoch", 0, "Steps per epoch; 0: one pass over the "
                         "labeled examples.")
    flags.DEFINE_integer("train_steps", 0, "Train for exactly this many steps, split into "
                         "equal epochs of at most one pass (or --steps_per_epoch); 0: "
                         "--epochs. Students: --student_steps.")
    flags.DEFINE_enum("optimizer", "adamw", list(training.OPTIMIZERS), "Optimizer.")
    flags.DEFINE_float("learning_rate", 2e-3, "Peak learning rate (cosine decay).")
    flags.DEFINE_float("weight_decay", 0.05, "Decoupled weight decay.")
    flags.DEFINE_float("warmup_epochs", 1.0, "Linear warm-up epochs.")
    flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing.")
    flags.DEFINE_integer("randaugment_layers", 2, "RandAugment operations per image (N).")
    flags.DEFINE_float("randaugment_magnitude", 9.0, "RandAugment magnitude M on the "
                       "0-10 scale; what M means differs by implementation (docs/tools.md's "
                       "table): only `reference` maps it as the Noisy Student reference.")
    flags.DEFINE_enum("randaugment_impl", "auto", list(augment.IMPLEMENTATIONS),
                      "RandAugment implementation: reference (the Noisy Student "
                      "reference's 15-op table and magnitudes), keras_cv or keras per "
                      "image in tf.data, device inside the compiled step on uint8 "
                      "batches, auto (device under JAX on a GPU/TPU, else keras_cv).")
    flags.DEFINE_integer("cutout", 0, "Side in pixels of one square cut out of every "
                         "noised training image after RandAugment, filled with "
                         "--fill_value (the reference's small-image input: half the "
                         "side, 16 at 32 px); 0: none.")
    flags.DEFINE_float("fill_value", 128.0, "Grey level (0-255) that fills what "
                       "RandAugment's rotate, shear and translate expose (the reference's "
                       "128; KerasCV and Keras would reflect, mirroring the object); 0 may "
                       "suit images on a black background.")
    flags.DEFINE_bool("random_flip", True, "Random horizontal flips.")
    flags.DEFINE_integer("crop_padding", 0, "Pad by this many pixels of --fill_value, "
                         "then random-crop back.")
    flags.DEFINE_enum("crop", "pad", list(data.CROPS), "pad: resize to a square, "
                      "pad by --crop_padding and crop back (small images); "
                      "random_resized: Inception-style crop of --crop_scale area and "
                      "--crop_ratio aspect, resized; evaluation then resizes the shorter "
                      "side and keeps the central --center_crop (photos).")
    flags.DEFINE_list("crop_scale", ["0.08", "1.0"], "random_resized: min,max area fraction.")
    flags.DEFINE_list("crop_ratio", ["0.75", "1.3333"], "random_resized: min,max aspect "
                      "ratio.")
    flags.DEFINE_float("center_crop", 0.875, "random_resized: central fraction kept at "
                       "evaluation and pseudo-labeling.")
    flags.DEFINE_enum("cache", "auto", list(data.CACHES), "Cache of prepared training "
                      "images: auto (memory when they fit 25% of RAM, else none), memory, "
                      "disk (a temporary file), none.")
    flags.DEFINE_integer("bn_recalibration_batches", 100, "After training, recompute "
                         "batch-norm statistics on up to this many clean training batches "
                         "(precise BN); 0: keep the moving averages.")
    flags.DEFINE_enum("calibration", "none", ["none", "temperature"], "temperature: after "
                      "training, fit one softmax temperature T on the held-out labeled "
                      "images (--validation_fraction; temperature scaling, Guo et al. "
                      "2017): the SavedModel then serves softmax(logits / T) (classes "
                      "unchanged), model_info.json records T, metrics.json ECE, NLL and "
                      "Brier on the test split before and after. Pseudo-labeling: filter "
                      "and label with the teacher's T (--temperature multiplies it).")
    flags.DEFINE_string("init_weights", None, "Start the model (a teacher, or a student "
                        "from scratch) from an EfficientNet weights file in Keras "
                        "applications' layout (.h5, .weights.h5 or .keras), by layer name; "
                        "nothing is downloaded.")
    flags.DEFINE_string("jit_compile", "auto", "auto|true|false. auto: XLA on "
                        "accelerators and on JAX, not on CPU with TensorFlow.")
    flags.DEFINE_float("ema_decay", 0.0, "Keep an exponential moving average of the "
                       "weights with this decay per step (e.g. 0.9999 for long runs, as the "
                       "reference; ~1 - 10/steps for short ones); evaluation, "
                       "pseudo-labeling and exports then use the averaged weights. 0: off.")
    flags.DEFINE_integer("grad_accum_steps", 1, "Accumulate gradients over this many "
                         "batches per update (an effective batch k x --batch_size, for "
                         "large models on small devices).")
    flags.DEFINE_integer("eval_every_epochs", 0, "Validate every this many epochs (and "
                         "after the last) to the console and TensorBoard; 0: off.")
    flags.DEFINE_float("validation_fraction", 0.0, "Validate on this fraction of each "
                       "class's labeled images, held out from training; 0: on the test "
                       "split.")
    flags.DEFINE_integer("backup_every_steps", 0, "Back up the training state every this "
                         "many steps as well as after every epoch (<out>/backup/); a "
                         "killed stage re-run with the same command resumes there.")
    flags.DEFINE_enum("precision", "float32", ["float32", "mixed_bfloat16", "mixed_float16"],
                      "Keras dtype policy.")


@_group("pseudo_label")
def define_pseudo_label_flags():
    from nstudent.pseudo_labels.selection import WARN_COPIES

    flags.DEFINE_bool("hard_labels", False, "One-hot pseudo-labels (the teacher's top "
                      "class) instead of its soft probabilities.")
    flags.DEFINE_float("temperature", 1.0, "Softmax temperature applied to the teacher's "
                       "logits (>1 softens, <1 sharpens).")
    flags.DEFINE_float("min_confidence", 0.3, "Drop unlabeled images whose top "
                       "probability is below this.")
    flags.DEFINE_integer("per_class", 0, "K: keep at most K images per predicted class "
                         "(most confident first) and repeat images of classes with fewer. "
                         "0: the mean count per class after filtering.")
    flags.DEFINE_integer("max_copies", 0, "Balancing repeats each image of a class with "
                         "fewer than K images up to K / n times; with this > 0 no image is "
                         "repeated more often and the rest of that class's quota stays "
                         "unfilled (stats.json says how much). 0: no limit (the paper's "
                         f"balance; a warning above {WARN_COPIES} copies).")
    flags.DEFINE_float("min_precision", 0.0, "Per-class cut-offs instead of "
                       "--min_confidence: for each class the lowest confidence at which "
                       "the teacher's precision on the held-out labeled images it predicts "
                       "as that class is at least this, there and at every cut-off above "
                       "(needs --validation_fraction as the teacher was trained with). "
                       "0: off.")
    flags.DEFINE_integer("min_precision_count", 20, "With --min_precision: a class needs "
                         "this many held-out images predicted as it for its own cut-off; "
                         "with fewer --min_confidence stands (said in the log and "
                         "stats.json).")
    flags.DEFINE_integer("to_label", 0, "Also write <out>/to_label.csv: the N unlabeled "
                         "images with the smallest margin between the teacher's two most "
                         "probable classes (the ones a label would help most; "
                         "near-duplicates may sit side by side). 0: none.")
    flags.DEFINE_bool("balance", True, "Balance the classes: K images per class (top-K, "
                      "repeats for rare classes), as the paper. --nobalance keeps every "
                      "image above --min_confidence once (the paper's ablation).")
    flags.DEFINE_float("positive_threshold", 0.7, "--task=multilabel: a class is a "
                       "confident positive of an image where the teacher's sigmoid (at "
                       "--temperature) is at least this.")
    flags.DEFINE_float("negative_threshold", 0.05, "--task=multilabel: a confident "
                       "negative where the sigmoid is at most this; entries between the "
                       "two stay out of the student's loss (masked).")
    flags.DEFINE_enum("multilabel_entries", "confident",
                      ["confident", "all", "top_class"],
                      "--task=multilabel: confident: the entries past the two thresholds, "
                      "the rest masked (UPS). Baselines to measure it against: all: every "
                      "entry, 1 at p >= 0.5 else 0, nothing masked; top_class: the "
                      "teacher's most probable class 1, every other 0 (single-label "
                      "pseudo-labels). Both baselines are hard labels.")
    flags.DEFINE_integer("label_batch_size", 512, "Inference batch size of the teacher.")
    flags.DEFINE_integer("label_chunk_size", 16384, "Images per chunk of a labeling shard: "
                         "each chunk is saved as it finishes, and a killed shard resumes "
                         "at its first missing chunk.")


@_group("distribution")
def define_distribution_flags():
    flags.DEFINE_enum("distribution", "auto", list(training.DISTRIBUTIONS),
                      "auto: every local accelerator when there are several, else one "
                      "device; data_parallel: every local device (TensorFlow: "
                      "MirroredStrategy; JAX: keras.distribution.DataParallel); none: one "
                      "device. Several machines: TF_CONFIG (TensorFlow) or "
                      "KERAS_DISTRIBUTION_* (JAX), see docs/scale-out.md. --batch_size stays global.")
    flags.DEFINE_bool("sync_batchnorm", False, "TensorFlow, several replicas: batch-norm "
                      "statistics over the global batch instead of each replica's (JAX "
                      "always computes them over the global batch).")


def label_config():
    from nstudent.pseudo_labels import LabelConfig

    return LabelConfig(hard=FLAGS.hard_labels, temperature=FLAGS.temperature,
                       min_confidence=FLAGS.min_confidence, per_class=FLAGS.per_class,
                       max_copies=FLAGS.max_copies, balance=FLAGS.balance,
                       calibration=FLAGS.calibration, min_precision=FLAGS.min_precision,
                       min_precision_count=FLAGS.min_precision_count,
                       to_label=FLAGS.to_label,
                       positive_threshold=FLAGS.positive_threshold,
                       negative_threshold=FLAGS.negative_threshold,
                       multilabel_entries=FLAGS.multilabel_entries,
                       batch_size=FLAGS.label_batch_size, chunk_size=FLAGS.label_chunk_size)


@_group("student")
def define_student_flags():
    flags.DEFINE_integer("unlabeled_ratio", 3, "Pseudo-labeled batch size as a multiple "
                         "of --batch_size.")
    flags.DEFINE_float("pseudo_loss_weight", None, "Weight of the mean cross-entropy "
                       "against pseudo-labels (the labeled one has --labeled_loss_weight). "
                       "Unset: the reference's, --unlabeled_ratio (its loss is labeled CE "
                       "+ unlabel_ratio x pseudo CE, so each pseudo-labeled image weighs "
                       "as much as a labeled one); 1 for distillation and multi-label "
                       "students, as before.")
    flags.DEFINE_bool("init_from_teacher", False, "Start the student from the teacher's "
                      "weights (same architecture) instead of from scratch.")
    flags.DEFINE_integer("student_steps", 0, "Train each student for exactly this many "
                         "steps (the students' budget, apart from the teacher's), split "
                         "into equal epochs of at most one pass over the pseudo-labeled "
                         "images; 0: --student_epochs (tools/pipeline.py), else "
                         "--train_steps or --epochs.")
    flags.DEFINE_bool("pseudo_class_weights", False, "--task=multilabel: weigh each "
                      "class's pseudo-label loss by stats.json's class_weights (mean "
                      "confident positives / the class's). Off by default: on the mosaics "
                      "it cost validation mAP (docs/multilabel.md).")
    flags.DEFINE_bool("pseudo_noise", True, "RandAugment, crop and flip on the "
                      "pseudo-labeled images. --nopseudo_noise is the paper's ablation: "
                      "clean pseudo-labeled images, noised labeled ones; dropout and "
                      "stochastic depth stay on both (one forward pass).")
    flags.DEFINE_float("distill_temperature", 0.0, "SimCLRv2 distillation: the student's "
                       "logits on pseudo-labeled images divided by T against the "
                       "teacher's softmax at T (label with --temperature=T), loss x T^2. "
                       "0: the noisy student's cross-entropy.")
    flags.DEFINE_float("labeled_loss_weight", 1.0, "Weight of the cross-entropy on the "
                       "labels in a student (0: pseudo-labels only, as SimCLRv2's "
                       "distillation).")


def student_config():
    from nstudent.training import StudentConfig

    return StudentConfig(
        unlabeled_ratio=FLAGS.unlabeled_ratio, pseudo_loss_weight=FLAGS.pseudo_loss_weight,
        labeled_loss_weight=FLAGS.labeled_loss_weight,
        init_from_teacher=FLAGS.init_from_teacher, init_weights=FLAGS.init_weights or None,
        distill_temperature=FLAGS.distill_temperature, pseudo_noise=FLAGS.pseudo_noise,
        pseudo_class_weights=FLAGS.pseudo_class_weights)


@_group("finetune")
def define_finetune_flags():
    flags.DEFINE_integer("finetune_resolution", 0, "Fine-tune at this test resolution "
                         "(pixels); 0: no fine-tuning in tools/pipeline.py.")
    flags.DEFINE_integer("freeze_blocks", -1, "Blocks frozen (after the stem) while "
                         "fine-tuning; -1: all but the last stage's.")
    flags.DEFINE_integer("finetune_epochs", 2, "Fine-tuning epochs over the labeled data.")
    flags.DEFINE_float("finetune_learning_rate", 5e-4, "Peak fine-tuning learning rate.")


LR_SCALING = ("linear", "sqrt", "none")


@_group("pretrain")
def define_pretrain_flags():
    flags.DEFINE_integer("pretrain_epochs", 100, "Contrastive pretraining epochs (one "
                         "epoch: every labeled and unlabeled image once, in two views).")
    flags.DEFINE_integer("pretrain_batch_size", 256, "Images per pretraining step (each "
                         "in two views); the negatives of an image are the other views "
                         "of the global batch.")
    flags.DEFINE_enum("pretrain_optimizer", "lars", list(training.OPTIMIZERS),
                      "Pretraining optimizer (SimCLR: LARS).")
    flags.DEFINE_float("pretrain_learning_rate", 0.3, "Base learning rate of pretraining, "
                       "scaled by --lr_scaling.")
    flags.DEFINE_enum("lr_scaling", "linear", list(LR_SCALING), "Pretraining learning "
                      "rate = base x batch/256 (linear), base x sqrt(batch) (sqrt; SimCLR "
                      "uses base 0.075 for small batches) or base (none).")
    flags.DEFINE_float("pretrain_weight_decay", 1e-6, "Pretraining weight decay (kernels "
                       "only).")
    flags.DEFINE_float("pretrain_warmup_epochs", 10.0, "Pretraining warm-up epochs.")
    flags.DEFINE_float("contrastive_temperature", 0.1, "NT-Xent temperature (SimCLR's "
                       "CIFAR recipe: 0.5). Named apart from --temperature, the "
                       "pseudo-labels' softmax temperature, so one flagfile holds both.")
    flags.DEFINE_integer("proj_head_layers", 3, "Layers of the projection head (SimCLRv2: "
                         "3; SimCLR: 2).")
    flags.DEFINE_integer("proj_dim", 128, "Width of the projection (the head's last layer).")
    flags.DEFINE_float("color_jitter_strength", 1.0, "Colour jitter strength s of the "
                       "views (CIFAR recipe: 0.5).")
    flags.DEFINE_enum("blur", "auto", ["auto", "true", "false"], "Gaussian blur on the "
                      "views; auto: for images of 96 px and more (SimCLR leaves it off "
                      "for small images).")
    flags.DEFINE_integer("knn_k", 20, "Neighbours of the kNN evaluation of a pretrained "
                         "encoder.")
    flags.DEFINE_string("init_from_pretrained", None, "A pretraining run "
                        "(tools/pretrain.py): the teacher starts from its encoder and the "
                        "first --ft_proj_selector layers of its projection head, with a "
                        "new classifier, and fine-tunes all of it (SimCLRv2).")
    flags.DEFINE_integer("ft_proj_selector", 1, "Projection-head layers kept when "
                         "fine-tuning from a pretraining run (0: the encoder alone; "
                         "SimCLRv2: 1).")


def scaled_learning_rate(base, batch_size, rule):
    """SimCLR's learning-rate scaling with the batch size."""
    if rule == "linear":
        return base * batch_size / 256.0
    if rule == "sqrt":
        return base * batch_size ** 0.5
    return base


def pretrain_input_config(image_size):
    return input_config(image_size, FLAGS.pretrain_batch_size)


def pretrain_train_config():
    import dataclasses

    return dataclasses.replace(
        train_config(), epochs=FLAGS.pretrain_epochs, optimizer=FLAGS.pretrain_optimizer,
        learning_rate=scaled_learning_rate(FLAGS.pretrain_learning_rate,
                                           FLAGS.pretrain_batch_size, FLAGS.lr_scaling),
        weight_decay=FLAGS.pretrain_weight_decay, warmup_epochs=FLAGS.pretrain_warmup_epochs,
        label_smoothing=0.0, total_steps=0, calibration="none")


def contrastive_config(image_size):
    from nstudent.models import HeadConfig
    from nstudent.pretraining import ContrastiveConfig

    blur = image_size >= 96 if FLAGS.blur == "auto" else FLAGS.blur == "true"
    return ContrastiveConfig(
        HeadConfig(FLAGS.proj_head_layers, FLAGS.proj_dim), FLAGS.contrastive_temperature,
        FLAGS.color_jitter_strength, blur, FLAGS.knn_k)


def finetune_train_config():
    import dataclasses

    return dataclasses.replace(train_config(), epochs=FLAGS.finetune_epochs,
                               learning_rate=FLAGS.finetune_learning_rate,
                               warmup_epochs=0.0, steps_per_epoch=0, total_steps=0)


def load_dataset(split_names=None):
    """The --dataset's splits: --train_split and --test_split unless named."""
    if FLAGS.channels not in (1, 3):
        raise data.DataError(f"--channels must be 1 or 3, got {FLAGS.channels}.")
    return data.load(
        FLAGS.dataset, split_names or (FLAGS.train_split, FLAGS.test_split),
        channels=FLAGS.channels,
        num_classes=FLAGS.num_classes, tfds_data_dir=FLAGS.tfds_data_dir,
        tfds_download=FLAGS.tfds_download, skip_corrupt=FLAGS.skip_corrupt_images,
        verify=FLAGS.verify_images, task=FLAGS.task, labels_file=FLAGS.labels_file,
        drop_empty_classes=FLAGS.drop_empty_classes)


def load_stage_data(test=True, unlabeled=False):
    """The data a stage works on; the unlabeled source is opened only when asked."""
    names = (FLAGS.train_split, FLAGS.test_split) if test else (FLAGS.train_split,)
    info, splits = load_dataset(names)
    source = None
    if unlabeled and FLAGS.unlabeled_dataset:
        source = data.load_unlabeled(
            FLAGS.unlabeled_dataset, info.channels, tfds_data_dir=FLAGS.tfds_data_dir,
            tfds_download=FLAGS.tfds_download, skip_corrupt=FLAGS.skip_corrupt_images,
            verify=FLAGS.verify_images)
    return data.StageData(
        info, splits[FLAGS.train_split], splits.get(FLAGS.test_split) if test else None,
        FLAGS.labels_per_class, FLAGS.seed, FLAGS.dataset, source,
        FLAGS.unlabeled_dataset or "", FLAGS.validation_fraction)


def _pair(name):
    values = getattr(FLAGS, name)
    try:
        low, high = (float(v) for v in values)
    except ValueError:
        raise InputError(f"--{name} takes two numbers min,max; got {','.join(values)}.")
    return low, high


def model_config(info=None):
    """The architecture the flags ask for; without `info` (before the data is read)
    the class count is a stand-in, so only the flags' own settings are checked."""
    return models.ModelConfig(
        variant=FLAGS.model, num_classes=info.num_classes if info else 2,
        channels=info.channels if info else FLAGS.channels,
        image_size=FLAGS.image_size, width_scale=FLAGS.width_scale,
        depth_scale=FLAGS.depth_scale, stem_stride=FLAGS.stem_stride,
        stage_strides=FLAGS.stage_strides, dropout=FLAGS.dropout, stochastic_depth=FLAGS.stochastic_depth)


def input_config(image_size, batch_size=None):
    return data.InputConfig(
        image_size=image_size, batch_size=batch_size or FLAGS.batch_size,
        randaugment_layers=FLAGS.randaugment_layers,
        randaugment_magnitude=FLAGS.randaugment_magnitude,
        randaugment_impl=augment.resolve_impl(FLAGS.randaugment_impl),
        random_flip=FLAGS.random_flip, crop=FLAGS.crop, crop_padding=FLAGS.crop_padding,
        crop_scale=_pair("crop_scale"), crop_ratio=_pair("crop_ratio"),
        center_crop=FLAGS.center_crop, cache=FLAGS.cache, fill_value=FLAGS.fill_value,
        cutout=FLAGS.cutout, geometric_noise=FLAGS.task != "multilabel")


def student_schedule(train, epochs, learning_rate, warmup_epochs):
    """A student's TrainConfig from the teacher's: its own epochs, peak learning rate
    and warm-up where set (0, 0 and < 0: the teacher's), --student_steps as its exact
    budget (0: the epochs)."""
    return dataclasses.replace(
        train, epochs=epochs or train.epochs, total_steps=FLAGS.student_steps,
        learning_rate=learning_rate or train.learning_rate,
        warmup_epochs=warmup_epochs if warmup_epochs >= 0 else train.warmup_epochs)


def train_config():
    return training.TrainConfig(
        epochs=FLAGS.epochs, steps_per_epoch=FLAGS.steps_per_epoch,
        optimizer=FLAGS.optimizer, learning_rate=FLAGS.learning_rate,
        weight_decay=FLAGS.weight_decay, warmup_epochs=FLAGS.warmup_epochs,
        label_smoothing=FLAGS.label_smoothing, jit_compile=FLAGS.jit_compile,
        bn_recalibration_batches=FLAGS.bn_recalibration_batches,
        ema_decay=FLAGS.ema_decay, grad_accum_steps=FLAGS.grad_accum_steps,
        eval_every_epochs=FLAGS.eval_every_epochs,
        backup_every_steps=FLAGS.backup_every_steps, total_steps=FLAGS.train_steps,
        calibration=FLAGS.calibration)


check_range = ranges.check_range  # the tools' own flags' ranges use it too


def check_flag_ranges(table=ranges.RANGES):
    """Every defined flag of `table` (nstudent/ranges.py's, or a tool's own) in range."""
    for name, *bounds in table:
        if name in FLAGS and getattr(FLAGS, name) is not None:  # None: unset, a rule
            check_range(name, getattr(FLAGS, name), *bounds)


def validate_flags(trains=True, multilabel=False):
    """Checks what can be checked before any data is read (fast errors); `trains`:
    the tool trains a model (pseudo-labeling alone does not); `multilabel`: the tool
    takes --task=multilabel."""
    check_flag_ranges()
    model_config()  # stem stride, ...
    input_config(FLAGS.image_size or 1)  # crop and cache settings
    if FLAGS.init_weights and not os.path.exists(FLAGS.init_weights):
        raise data.DataError(f"--init_weights: no file at {FLAGS.init_weights!r}.")
    if FLAGS.channels not in (1, 3):
        raise data.DataError(f"--channels must be 1 or 3, got {FLAGS.channels}.")
    if "min_confidence" in FLAGS:
        label_config()  # raises on a bad --temperature, --min_confidence, sizes
    train_config()  # --grad_accum_steps, --ema_decay, ...
    if trains and FLAGS.calibration == "temperature" and not FLAGS.validation_fraction:
        raise InputError("--calibration=temperature fits T on labeled images held out from "
                         "training: set --validation_fraction (e.g. 0.1).")
    if "contrastive_temperature" in FLAGS:
        from nstudent.pretraining import check_batch

        contrastive_config(FLAGS.image_size or 1)  # temperature, head, k
        pretrain_train_config()
        check_batch(FLAGS.pretrain_batch_size, 1)  # the replicas are counted later
        if FLAGS.init_from_pretrained:
            from nstudent.training.from_pretrained import check_pretrained

            check_pretrained(FLAGS.init_from_pretrained, FLAGS.ft_proj_selector)
    if "distill_temperature" in FLAGS:
        student_config()  # ratio, weights, distillation
    check_task(multilabel)
    training.check_distribution(FLAGS.distribution)
    training.parse_tf_config(os.environ.get("TF_CONFIG", ""))  # names a malformed field


def check_task(multilabel):
    """--task=multilabel where a tool takes it (`multilabel`), with the settings it
    needs: every label inside the training crop, no softmax temperature."""
    if FLAGS.task != "multilabel":
        for name in ("labels_file", "positive_threshold", "negative_threshold",
                     "multilabel_entries", "pseudo_class_weights"):
            if name in FLAGS and FLAGS[name].present:
                raise InputError(f"--{name} is for --task=multilabel.")
        return
    if not multilabel:
        raise InputError("--task=multilabel: train.py (a teacher or a student), "
                         "pseudo_label.py, pipeline.py and evaluate.py take multi-label "
                         "data; this tool does not in this version.")
    if FLAGS.crop == "random_resized":
        raise InputError("--task=multilabel needs --crop=pad: a random-resized crop can "
                         "cut a labeled object out of the image and keep its label.")
    if FLAGS.calibration != "none":
        raise InputError("--calibration=temperature scales a softmax; a multi-label run "
                         "chooses a threshold per class on --validation_fraction's "
                         "held-out images instead.")
    for name in ("min_precision", "to_label"):
        if name in FLAGS and getattr(FLAGS, name):
            raise InputError(f"--{name} is for single-label pseudo-labels; multi-label "
                             "ones keep confident entries (--positive_threshold, "
                             "--negative_threshold).")


def already_finished(out, redo):
    """True (and says so) when `out` holds a finished run and --overwrite is not set."""
    from nstudent import export

    if export.is_finished(out) and not FLAGS.overwrite:
        logging.info("%s already holds a finished run (metrics.json); pass --overwrite "
                     "to %s.", out, redo)
        return True
    return False


def parse_flags(argv):
    """absl's flag parsing for the tools, where a bad flag (misspelt, of the wrong type
    or outside its choices) ends as every other bad input does: one `error:` line
    naming it and exit code 2 (absl's own parser prints FATAL and exits 1)."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e} (see --help).", file=sys.stderr)
        sys.exit(2)


def main_of(main):
    """The tools' entry point: `main(argv)`'s return value is the exit code."""
    from absl import app

    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)


# What picks the labeled subset a teacher trained on (model_info.json's "held_out")
TEACHER_SUBSET = ("dataset", "labels_per_class", "seed", "validation_fraction",
                  "drop_empty_classes")


def _same_setting(name, a, b):
    if name == "validation_fraction":
        return abs(float(a) - float(b)) < 1e-9
    if name == "dataset" and str(a).startswith("folder:") and str(b).startswith("folder:"):
        return os.path.abspath(a[7:]) == os.path.abspath(b[7:])
    return a == b


def adopt_teacher_settings(teacher):
    """A stage that uses a teacher takes what defines it from its run folder's
    model_info.json: its channels and, where recorded, the labeled subset it trained
    on. A flag set (on the command line or in a flagfile) to another value is refused
    by name before any work; an unset one takes the teacher's. Returns what was taken."""
    path = os.path.join(teacher, "model_info.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        info = json.load(f)
    wanted = {"channels": (info.get("model") or {}).get("channels")}
    held = info.get("held_out") or {}
    wanted.update({name: held[name] for name in TEACHER_SUBSET if name in held})
    return _adopt(wanted, f"the teacher {teacher!r}, trained with", path,
                  "the teacher's run", "they pick the labeled subset it trained on, so "
                  "the unlabeled pool would hold some of its training images (or miss "
                  "some others)")


def adopt_pseudo_label_settings(directory):
    """The student takes its labeled subset and channels from the pseudo-label folder
    (stats.json), as labeling took them from the teacher: a student on another subset
    would train on images its teacher labeled, or miss labeled ones."""
    path = os.path.join(directory, "stats.json")
    if not os.path.isfile(path):
        return {}  # load_pseudo_labels names what is missing
    with open(path) as f:
        stats = json.load(f)
    settings = stats.get("settings") or {}
    wanted = {"channels": stats.get("channels")}
    wanted.update({name: settings[name] for name in TEACHER_SUBSET if name in settings})
    held = settings.get("held_out") or {}
    if "validation_fraction" in held:
        wanted["validation_fraction"] = held["validation_fraction"]
    return _adopt(wanted, f"the pseudo-labels {directory!r}, made with", path,
                  "the pseudo-labels' teacher", "they pick the labeled subset, so the "
                  "student would train on labeled images its teacher also pseudo-labeled "
                  "(or miss some)")


def _adopt(wanted, source, path, short, subset_why):
    adopted = {}
    for name, value in wanted.items():
        if value is None or name not in FLAGS or _same_setting(name, FLAGS[name].value,
                                                               value):
            continue
        if FLAGS[name].present:
            why = ("it takes images of that many channels" if name == "channels" else
                   subset_why)
            raise InputError(
                f"--{name}={FLAGS[name].value} disagrees with {source} {name}={value} "
                f"({path}): {why}. Pass that value, or leave the flag out to take it "
                "from there.")
        FLAGS[name].value = value
        adopted[name] = value
    if adopted:
        logging.info("From %s: %s.", short, ", ".join(f"--{k}={v}" for k, v in adopted.items()))
    return adopted


def writer_role():
    """What tells apart the processes that write one --out by design: a distributed
    run's task (TF_CONFIG, or Keras' JAX process id) and a labeling job's shard."""
    roles = []
    if os.environ.get("TF_CONFIG"):
        try:
            task = json.loads(os.environ["TF_CONFIG"]).get("task", {})
            roles.append(f"{task.get('type', 'task')}{task.get('index', '')}")
        except (ValueError, AttributeError):  # distribute.py names what is wrong with it
            roles.append("task")
    if os.environ.get("KERAS_DISTRIBUTION_PROCESS_ID"):
        roles.append(f"process{os.environ['KERAS_DISTRIBUTION_PROCESS_ID']}")
    if "num_shards" in FLAGS and FLAGS.num_shards > 1 and FLAGS.shard_index >= 0:
        roles.append(f"shard{FLAGS.shard_index}")
    return "-".join(roles)


@contextlib.contextmanager
def _writing(out):
    """The output folder's lock while the stage runs (export/lock.py); none without
    an --out. A stage that fails before it leaves anything to resume or read (its new
    folder holds at most TensorBoard's logs/) leaves no folder; a killed one leaves
    its lock file beside the folder, which says the folder is incomplete (the next
    run takes the lock over and resumes or replaces it)."""
    if not out:
        yield
        return
    from nstudent.export.lock import output_lock

    existed = os.path.exists(out)
    with output_lock(out, writer_role()):
        try:
            yield
        except BaseException:
            if not existed and os.path.isdir(out) and set(os.listdir(out)) <= {"logs"}:
                shutil.rmtree(out, ignore_errors=True)
            raise


def run_stage(stage, validate=True):
    """Runs `stage()` after the flag checks (`validate`: True for the shared ones, or a
    function that runs them and the tool's own). Bad input ends in one line on stderr
    and exit code 2, never a traceback: an InputError (DataError, ShardError,
    WeightsError, MissingInput, ...) and an unreadable image met while streaming
    (named; see data/decode.py). Anything else is a bug: it propagates, and absl
    prints its traceback and exits 1."""
    try:
        if callable(validate):
            validate()
        elif validate:
            validate_flags()
        with _writing(FLAGS["out"].value if "out" in FLAGS and FLAGS.is_parsed() else None):
            return stage() or 0
    except InputError as e:
        if os.environ.get("NSTUDENT_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a TensorFlow error from inside tf.data
        from nstudent.data.decode import unreadable_path

        path = unreadable_path(e)
        if path is None:
            raise
        print(f"error: {path} is not a readable image (truncated, empty or not an image). "
              "Pass --skip_corrupt_images to skip such files (they are counted and "
              "logged), or --verify_images to check every image before any work.", file=sys.stderr)
        return 2


def setup_runtime():
    """Precision policy and seeds; logs the backend so every run says what it ran on."""
    import keras

    import logging as py_logging

    py_logging.getLogger("tensorflow").setLevel(py_logging.WARNING)  # export chatter
    # first: a multi-worker strategy must exist before TensorFlow runs any op
    training.configure_distribution(FLAGS.distribution, FLAGS.sync_batchnorm)
    keras.mixed_precision.set_global_policy(FLAGS.precision)
    keras.utils.set_random_seed(FLAGS.seed)
    logging.info("Keras %s, backend %s, precision %s", keras.__version__,
                 keras.backend.backend(), FLAGS.precision)
