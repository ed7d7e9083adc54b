"""The versions of the software that make a result: recorded by evaluation reports and trained models, so that a
number can be traced to the code that computed it."""

from __future__ import annotations

import platform

from . import __version__


def software_versions() -> dict[str, str]:
    """pengi-search's own code, PyTorch's kernels (another release may round differently, which reorders near ties),
    transformers' tokenizers and text models (what a caption or label is cut into), NumPy's (the metrics'
    arithmetic) and Python's."""
    import numpy
    import torch  # loaded already by every caller, which runs a model or reads its library
    import transformers

    return {
        "pengi_search_version": __version__,
        "torch_version": str(torch.__version__),  # a str subclass of its own, which checkpoints may not unpickle
        "transformers_version": transformers.__version__,
        "numpy_version": numpy.__version__,
        "python_version": platform.python_version(),
    }
