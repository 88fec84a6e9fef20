"""The conversion: labelled face video → sharded TFRecord clips + ``dataset_info.json`` (an Apache Beam job).

Entry points: ``python -m beam_jobs.convert`` (:mod:`beam_jobs.convert`, options in :mod:`beam_jobs.convert_options`)
and ``python -m beam_jobs.inspect_dataset``. Rooms, from the ground up: ``media`` (reading video) and ``faces`` (the
face stage), both without Apache Beam, so prediction on new video uses them too; ``sources`` (one adapter per dataset
layout); ``pipeline`` (the Beam steps). Nothing here imports :mod:`trainer` or :mod:`affectstream`.
"""
