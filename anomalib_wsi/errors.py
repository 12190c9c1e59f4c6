"""User-facing errors.

Every error a user can cause (a bad file, a missing option) is a :class:`WSIError`: its message is one line that
names the file and the fix. The command line prints it without a traceback; Python callers can catch it.
"""

from __future__ import annotations

__all__ = [
    "AnnotationError",
    "CohortError",
    "EvaluationError",
    "SlideOpenError",
    "SlideReadError",
    "SlideResolutionError",
    "SlideTooSmallError",
    "WSIError",
]


class WSIError(Exception):
    """Base class of every error caused by user input (files, options); the message is meant for the user."""


class SlideOpenError(WSIError):
    """The file is not a slide that openslide can open."""


class SlideReadError(WSIError):
    """The slide opened but its pixels cannot be read."""


class SlideResolutionError(WSIError):
    """The slide's resolution is unknown (no mpp) or cannot serve the requested mpp."""


class SlideTooSmallError(WSIError):
    """The slide is smaller than one tile at the requested resolution."""


class AnnotationError(WSIError):
    """An annotation file cannot be read or makes no sense."""


class CohortError(WSIError):
    """A slide list, manifest or slide-label file cannot be read or makes no sense."""


class EvaluationError(WSIError):
    """An evaluation input (labels, predictions, ground truth) is missing or cannot be read."""
