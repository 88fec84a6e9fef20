"""Runs an import right after Keras is first imported: how ``import trainer`` registers its layers lazily.

The custom layers (:mod:`trainer.model.layers`) must be registered before ``keras.models.load_model`` reads an
export, and ``import trainer`` promises that; but importing Keras imports TensorFlow (seconds, and CUDA
noise), which ``python -m trainer.train --help`` must not pay. So when Keras is not loaded yet, an import
hook (this module's one piece of state, in ``sys.meta_path``) waits for it and imports the registering
module as soon as Keras has finished loading, then removes itself.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys


class _AfterKeras(importlib.abc.MetaPathFinder):
    """Finds ``keras`` as the standard path finder does, with a loader that imports ``then`` after it.

    It stays until Keras is actually loaded: a mere ``importlib.util.find_spec("keras")`` probe (TensorFlow
    makes one) gets a spec that is never executed.
    """

    def __init__(self, then: str):
        self.then = then

    def find_spec(self, fullname, path, target=None):
        if fullname != "keras":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            importlib.import_module(self.then)

        spec.loader.exec_module = exec_module
        return spec


def import_after_keras(module: str) -> None:
    """Imports ``module`` now if Keras is loaded, else right after Keras is first imported."""
    if "keras" in sys.modules:
        importlib.import_module(module)
    elif not any(isinstance(f, _AfterKeras) and f.then == module for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterKeras(module))
