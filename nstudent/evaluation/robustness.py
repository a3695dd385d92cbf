"""Common corruptions (after Hendrycks & Dietterich's ImageNet-C) and FGSM.

Corruptions are applied on the fly to uint8 test images at their stored size,
with fixed seeds so that every model sees the same corrupted images. The
severity tables follow CIFAR-10-C, whose images (32 px) are the size of the
default dataset's.
"""

import keras
import numpy as np
import tensorflow as tf

from nstudent.errors import InputError

SEVERITIES = (1, 2, 3, 4, 5)
_TABLES = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # std, pixels in [0, 1]
    "shot_noise": (500, 250, 100, 75, 50),  # photons at full intensity
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # sigma, pixels
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor towards the mean
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added, pixels in [0, 1]
    "jpeg_compression": (80, 65, 58, 50, 40),  # JPEG quality
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # downscale factor
}
CORRUPTIONS = tuple(_TABLES)


def _blur(x, sigma):
    radius = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    channels = x.shape[-1]
    kx = tf.constant(np.tile(k[None, :, None, None], (1, 1, channels, 1)))
    ky = tf.constant(np.tile(k[:, None, None, None], (1, 1, channels, 1)))
    padded = tf.pad(x[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT")
    out = tf.nn.depthwise_conv2d(padded, kx, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(out, ky, [1, 1, 1, 1], "VALID")[0]


def corrupt(image, name, severity, seed):
    """uint8 [H, W, C] -> uint8 [H, W, C]; `seed` is a stateless seed [2]."""
    if name not in _TABLES:
        raise InputError(f"Unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}.")
    if severity not in SEVERITIES:
        raise InputError(f"Severity must be 1-5, got {severity}.")
    c = _TABLES[name][severity - 1]
    if name == "jpeg_compression":
        return tf.image.adjust_jpeg_quality(image, c)
    x = tf.cast(image, tf.float32) / 255.0
    if name == "gaussian_noise":
        x = x + tf.random.stateless_normal(tf.shape(x), seed, stddev=c)
    elif name == "shot_noise":
        x = tf.random.stateless_poisson(tf.shape(x), seed, x * c, dtype=tf.float32) / c
    elif name == "gaussian_blur":
        x = _blur(x, c)
    elif name == "contrast":
        mean = tf.reduce_mean(x, axis=[0, 1], keepdims=True)
        x = (x - mean) * c + mean
    elif name == "brightness":
        x = x + c
    elif name == "pixelate":
        size = tf.shape(x)[:2]
        small = tf.cast(tf.round(tf.cast(size, tf.float32) * c), tf.int32)
        x = tf.image.resize(tf.image.resize(x, small, "area"), size, "nearest")
    return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0), tf.uint8)


def corrupted(examples, name, severity, seed=0):
    """The (uint8 image, label) examples, each corrupted with its own fixed seed."""
    return examples.enumerate().map(
        lambda i, ex: (corrupt(ex[0], name, severity, tf.stack([tf.cast(i, tf.int32), seed])),
                       ex[1]),
        num_parallel_calls=tf.data.AUTOTUNE)


def input_gradient(model, images, labels, multilabel=False):
    """d loss / d images, with the Keras model in inference mode: cross-entropy of the
    softmax, or for a multi-label model the binary cross-entropy summed over classes
    (the sign FGSM takes ignores the positive scale of a mean over the batch)."""
    if multilabel:
        def loss_fn(labels, logits):  # Keras' BCE is a mean over the classes
            return keras.ops.sum(keras.losses.binary_crossentropy(
                keras.ops.cast(labels, "float32"), logits, from_logits=True)) * \
                logits.shape[-1]
    else:
        loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True)
    if keras.backend.backend() == "jax":
        import jax

        return np.asarray(jax.grad(
            lambda x: loss_fn(labels, model(x, training=False)))(images))
    if keras.backend.backend() == "tensorflow":
        x = tf.convert_to_tensor(images)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = loss_fn(labels, model(x, training=False))
        return tape.gradient(loss, x).numpy()
    raise NotImplementedError(f"FGSM is not wired for {keras.backend.backend()}.")


def fgsm(model, images, labels, epsilon, multilabel=False):
    """One signed-gradient step of `epsilon` (a fraction of the 0-255 pixel range)."""
    grad = input_gradient(model, images, labels, multilabel)
    return np.clip(images + 255.0 * epsilon * np.sign(grad), 0.0, 255.0).astype(np.float32)


def fgsm_logits(model, batches, epsilon, multilabel=False):
    """(logits of the FGSM images, targets) over (float images, targets) batches."""
    logits, targets = [], []
    for images, labels in batches.as_numpy_iterator():
        adv = fgsm(model, images, labels, epsilon, multilabel) if epsilon > 0 else images
        logits.append(np.asarray(model.predict_on_batch(adv), np.float32))
        targets.append(labels)
    return np.concatenate(logits), np.concatenate(targets)


def fgsm_accuracy(model, batches, epsilon):
    """Top-1 on FGSM images made from (float images, one-hot labels) batches."""
    logits, labels = fgsm_logits(model, batches, epsilon)
    return float(np.mean(logits.argmax(-1) == labels.argmax(-1))) if len(labels) else 0.0


def spread_subset(total, examples):
    """`examples` indices spread evenly over a split (class-sorted splits stay mixed)."""
    if examples <= 0 or examples >= total:
        return None
    return np.unique(np.linspace(0, total - 1, examples).round().astype(np.int64))


def _scorer(classifier, info):
    """(metric name, batches -> its scores' dict): top-1 (and top-5), or a multi-label
    model's mAP."""
    from nstudent.evaluation.classify import multilabel_scores, top_k_accuracy

    if classifier.multilabel:
        return "map", lambda b: multilabel_scores(classifier, b, info.class_names)
    return "top1", lambda b: top_k_accuracy(classifier, b, info.num_classes)


def robustness_report(classifier, split, info, image_size, batch_size=256,
                      corruptions=CORRUPTIONS, severities=SEVERITIES, epsilons=(),
                      examples=0, seed=0):
    """Clean, per-corruption (and mean) and FGSM scores of one model on one split:
    top-1, or mAP for a multi-label model (`metric` says which; keys clean_<metric>,
    mean_corruption_<metric>).

    `examples` > 0 evaluates that many images, spread over the split (quicker).
    FGSM needs the Keras model (a run folder or `.keras` file), since it takes
    gradients through it.
    """
    from nstudent.data import InputConfig, eval_dataset
    from nstudent.evaluation.multilabel import mean_average_precision

    unknown = [c for c in corruptions if c not in _TABLES]
    if unknown:
        raise InputError(f"Unknown corruption(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(CORRUPTIONS)}.")
    indices = spread_subset(len(split), examples)
    config = InputConfig.for_evaluation(image_size, batch_size, classifier.crop_fraction)
    metric, score = _scorer(classifier, info)

    def batches(ds):
        return eval_dataset(ds, info.num_classes, config)

    clean = score(batches(split.dataset(indices)))
    report = {"metric": metric, f"clean_{metric}": clean[metric],
              "examples": clean["examples"], "image_size": image_size,
              "corruptions": {}, "fgsm": {}}
    if "top5" in clean:
        report["clean_top5"] = clean["top5"]
    for name in corruptions:
        report["corruptions"][name] = {
            str(s): score(batches(corrupted(split.dataset(indices), name, s, seed)))[metric]
            for s in severities}
    if corruptions:
        per = [np.mean(list(v.values())) for v in report["corruptions"].values()]
        report[f"mean_corruption_{metric}"] = float(np.mean(per))
    if epsilons:
        if classifier.keras_model is None:
            raise InputError(f"FGSM needs the Keras model; {classifier.path!r} is a "
                             "SavedModel (pass the run folder with --prefer=keras).")
        model = classifier.keras_model
        for eps in epsilons:
            adversarial = batches(split.dataset(indices))
            report["fgsm"][f"{eps:.6g}"] = (
                mean_average_precision(*fgsm_logits(model, adversarial, eps, True))["map"]
                if classifier.multilabel else fgsm_accuracy(model, adversarial, eps))
    return report


def parse_epsilon(text):
    """'2/255' or '0.0078' -> float fraction of the pixel range."""
    try:
        if "/" in text:
            num, den = text.split("/")
            value = float(num) / float(den)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise InputError(f"Cannot read FGSM epsilon {text!r}; write e.g. 2/255 or 0.008.")
    if not 0 <= value <= 1:
        raise InputError(f"FGSM epsilon {text!r} is outside [0, 1] of the pixel range.")
    return value


METRIC_NAMES = {"top1": "top-1", "map": "mAP"}


def report_table(report):
    metric = report.get("metric", "top1")
    name = METRIC_NAMES[metric]
    lines = [f"clean {name} {report[f'clean_{metric}']:.4f} ({report['examples']} images, "
             f"{report['image_size']} px)"]
    if report["corruptions"]:
        sev = list(next(iter(report["corruptions"].values())))
        lines.append("| corruption | " + " | ".join(f"s{s}" for s in sev) + " | mean |")
        lines.append("|---" * (len(sev) + 2) + "|")
        for corruption, scores in report["corruptions"].items():
            lines.append(f"| {corruption} | " + " | ".join(f"{a:.4f}" for a in scores.values())
                         + f" | {np.mean(list(scores.values())):.4f} |")
        lines.append(f"mean corruption {name} {report[f'mean_corruption_{metric}']:.4f}")
    for eps, score in report["fgsm"].items():
        lines.append(f"FGSM eps={float(eps) * 255:.3g}/255: {name} {score:.4f}")
    return "\n".join(lines)
