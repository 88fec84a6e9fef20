"""The face stage, with no Apache Beam import: detectors, box holding and shot cuts, square and eye-aligned crops.

``stage`` is the face stage itself (:class:`~beam_jobs.faces.stage.FaceStageConfig`,
:class:`~beam_jobs.faces.stage.FaceCropper`), built from ``detectors``, ``tracking`` and ``align``. The conversion and
``affectstream predict`` both use it, so a model is served the crops it was trained on.
May import: :mod:`beam_jobs.media`, :mod:`tfrecords_schema`.
"""
