"""The Beam pipeline of a conversion: tracks → frames and crops → clips → spilled records → shards → dataset info.

Owns the job's options object (``config``), the frame sources (``frame_sources``: decoded video through the face
stage, or provided crops), clips and buckets (``clips``), the PTransforms (``transforms``), spill files (``spill``),
shard writing (``shards``), the accounting and ``dataset_info.json`` (``finalize``), progress and counters
(``progress``), Beam file-system helpers (``files``) and the output folder's ownership, lock and swap
(``output_folder``). May import: :mod:`beam_jobs.sources`, :mod:`beam_jobs.faces`, :mod:`beam_jobs.media`,
:mod:`tfrecords_schema`.
"""
