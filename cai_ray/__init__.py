"""cai-ray: Constitutional AI (Bai et al. 2022) on Ray, vLLM and DeepSpeed."""

import sys as _sys

__version__ = "0.1.0"


class _NoSklearnInTransformers:
    """transformers imports scikit-learn (about a second per process) for one helper of assisted
    generation, which cai-ray never uses; every process of ours (each engine, learner, trainer
    worker) skips it. An import hook: nothing is imported until transformers' generation is."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "transformers.generation.candidate_generator":
            import transformers.utils as tu

            tu.is_sklearn_available = lambda: False
        return None  # the usual finders load every module


if not any(isinstance(f, _NoSklearnInTransformers) for f in _sys.meta_path):
    _sys.meta_path.insert(0, _NoSklearnInTransformers())
