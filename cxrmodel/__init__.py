"""cxrd's model as a plain library: labels, DICOM/PNG -> tensor, DenseNet121, weights import,
registry, batched inference engine, Grad-CAM, and (by another module set) ChestX-ray14 training.

No database, no network, no settings objects: every function takes paths, bytes and numbers, so
it works the same in a notebook, a test and the daemon. Import submodules explicitly
(`from cxrmodel import preprocess`); this package file stays light on purpose.
"""
from .errors import ImageError, IntegrityError, ModelError, NoModelError
from .labels import LABELS, NUM_LABELS

__all__ = ["LABELS", "NUM_LABELS", "ModelError", "ImageError", "NoModelError", "IntegrityError"]
