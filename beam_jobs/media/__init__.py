"""Reading media: frames of a video in order, each at its true index, with no Apache Beam import.

May import: :mod:`tfrecords_schema` only. Used by the conversion and by prediction on new video.
"""
