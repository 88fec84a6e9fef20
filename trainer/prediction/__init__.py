"""Prediction on new video: the videos of a run (``videos``), an export served on a video through the conversion's
own face stage (``serving``), the no-face rule, smoothing and the output files (``outputs``), scoring against ABAW
annotations (``scoring``), rendering (``render``) and the ``affectstream predict`` command (``predict``).

May import: :mod:`trainer.evaluation`, :mod:`trainer.model`, :mod:`trainer.input`, :mod:`trainer.common`,
:mod:`tfrecords_schema` and the Beam-free parts of :mod:`beam_jobs` (``faces``, ``media``, ``sources``). Never training.
"""
