"""Task, head and label-block names, declared once for the Beam job, the trainer and the tools.

A *task* is what a command line names (``--task expr``); a *head* is the model output and
the ``label_names`` block of ``dataset_info.json`` that carries that task's labels. Reference
these constants; never retype the strings.
"""

# Task names as the command lines spell them.
TASK_EXPRESSION = "expr"
TASK_VALENCE_AROUSAL = "va"
TASK_ACTION_UNITS = "au"
TASKS = (TASK_EXPRESSION, TASK_VALENCE_AROUSAL, TASK_ACTION_UNITS)
TASK_MULTI = "multi"  # the trainer's task of every head the data has.

# Head names: model outputs, metric blocks and ``label_names`` keys.
HEAD_EXPRESSION = "expression"
HEAD_VALENCE_AROUSAL = "valence_arousal"
HEAD_ACTION_UNITS = "action_units"
HEADS = (HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL, HEAD_ACTION_UNITS)

# The head that carries each task's labels.
HEAD_OF_TASK = {
    TASK_EXPRESSION: HEAD_EXPRESSION,
    TASK_VALENCE_AROUSAL: HEAD_VALENCE_AROUSAL,
    TASK_ACTION_UNITS: HEAD_ACTION_UNITS,
}
TASK_OF_HEAD = {head: task for task, head in HEAD_OF_TASK.items()}

# Characters a label name may not hold: they break the CSV files (comma, quote, line breaks) and the unquoted ABAW
# header lines a model's predictions are written with, and NUL ends C strings. Refused at conversion.
UNSAFE_LABEL_CHARACTERS = {",": "a comma", '"': "a quote", "\n": "a line break", "\r": "a line break",
                           "\0": "a NUL character"}


class LabelNameError(ValueError):
    """A label name in the data that :func:`label_name_problem` refuses, with where it was found."""


def label_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a label name (one phrase), or None when it can."""
    found = sorted({what for char, what in UNSAFE_LABEL_CHARACTERS.items() if char in name})
    if found:
        return f"it holds {' and '.join(found)}, which would break CSV columns and ABAW header lines"
    return None


def label_names_problem(label_names: dict) -> str | None:
    """The first label name of ``{head: names}`` that :func:`label_name_problem` refuses, said in one line."""
    for head, names in label_names.items():
        for name in names:
            problem = label_name_problem(str(name))
            if problem:
                return f"{head} label {name!r}: {problem}; rename that class (or pass --class_names)"
    return None
