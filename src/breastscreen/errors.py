"""Exception types shared by every stage, so callers can tell user-input problems from bugs."""

from __future__ import annotations

import logging

# Library code logs unexpected per-item failures (with tracebacks) to the "breastscreen" logger;
# the command line sends them to the output folder's error log. Applications decide for
# themselves, so by default nothing is printed (the logging HOWTO's advice for libraries).
logging.getLogger("breastscreen").addHandler(logging.NullHandler())


class BreastscreenError(Exception):
    """Base class for errors caused by user input (files, manifests, options)."""


class ManifestError(BreastscreenError):
    """A manifest line or field breaks the documented format."""


class ImageReadError(BreastscreenError):
    """An image file cannot be read or is not a usable breast image."""


class PreprocessError(BreastscreenError):
    """Preprocessing failed for one image (for example, no breast tissue found)."""


class CheckpointError(BreastscreenError):
    """A checkpoint is missing, unsafe, or does not match its model."""
