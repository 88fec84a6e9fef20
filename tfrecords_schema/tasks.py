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
