"""Training: the options (``config``), the plan resolved against the data (``plan``, ``preflight``), the stages
(``stages``, ``features``), the one distributed step (``step``, ``distribution``), state and resume (``state``,
``fingerprint``), schedules, progress, the export's ``model_info.json`` (``model_info``) and the job itself (``job``).

May import: :mod:`trainer.evaluation`, :mod:`trainer.model`, :mod:`trainer.input`, :mod:`trainer.common`,
:mod:`tfrecords_schema` and the Beam-free face stage (:mod:`beam_jobs.faces`). Never prediction.
"""
