"""The names of what a training job writes in ``--job_dir``, declared once: the job writes them, the preflight looks
for them in a folder that is not a job's (:func:`trainer.training.preflight.check_job_dir`), and ``trainer.train``
names them for its users. (``checkpoints/`` and ``export/`` are :mod:`trainer.model.export`'s, ``train_config.json``
and its history :mod:`trainer.training.options_record`'s.)"""

# {"epoch", "score"} of the last epoch evaluated: a rerun that only exports (the job was stopped in its export) still
# reports it beside a best epoch selected on the report split.
LAST_EPOCH_FILENAME = "last_epoch.json"
LOGS_DIRNAME = "logs"  # TensorBoard's runs
REPORTS_DIRNAME = "reports"  # the exported model's final reports
BEST_DIRNAME = "best"  # the best epoch's checkpoint (trainer.training.state)
