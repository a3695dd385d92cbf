"""The main job's loop from Python: a teacher, its pseudo-labels, a noisy student.

    .venv/bin/python examples/noisy_student.py                  # the main job's recipe
    .venv/bin/python examples/noisy_student.py epochs=2 student_epochs=1 out=runs/quick

Arguments `name=value` override the recipe's settings by flag name (see
`python tools/pipeline.py --helpfull`); `out=` names the folder of the three runs.
"""

import ast
import sys

import nstudent as ns


def overrides(args):
    """name=value pairs, values read as Python literals where they are ones."""
    pairs = dict(arg.split("=", 1) for arg in args)
    for name, value in pairs.items():
        try:
            pairs[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass  # a string: a path, a dataset spec
    return pairs


def main(args):
    settings = overrides(args)
    out = settings.pop("out", "runs/example")
    recipe = ns.preset("fashion_mnist_noisy_student", **settings)
    ns.setup(seed=recipe.settings["seed"])
    data = ns.load_data(recipe)
    teacher = ns.train_teacher(data, recipe, f"{out}/teacher")
    labels = ns.pseudo_label(teacher, data, recipe, f"{out}/labels")
    student = ns.train_student(data, labels, recipe, f"{out}/student")
    print(f"teacher {teacher.metrics['test_top1']:.4f} -> student "
          f"{student.metrics['test_top1']:.4f} ({labels.stats['records']} pseudo-labeled "
          f"records)")


if __name__ == "__main__":
    main(sys.argv[1:])
