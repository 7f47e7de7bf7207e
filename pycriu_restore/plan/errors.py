"""Errors found while turning images into a plan.

``InconsistentImages`` means the images contradict themselves (a page outside every VMA, two
VMAs that overlap): exit code 2, like any bad image. ``UnsupportedFeature`` means the images
are fine but use something pycrestore does not restore (a zombie, a SysV shm mapping): exit
code 3, and the message names the feature and the object that uses it.
"""

from __future__ import annotations

from pycriu_restore.errors import EXIT_BAD_IMAGE, EXIT_UNSUPPORTED, PycrestoreError


class PlanError(PycrestoreError):
    """The images cannot be turned into a restore plan."""


class InconsistentImages(PlanError):
    """The images are readable but contradict each other."""

    exit_code = EXIT_BAD_IMAGE

    def __init__(self, image: str, cause: str) -> None:
        self.image = image
        super().__init__(f"{image}: {cause}")


class UnsupportedFeature(PlanError):
    """The images use a feature pycrestore cannot restore (yet)."""

    exit_code = EXIT_UNSUPPORTED

    def __init__(self, image: str, feature: str) -> None:
        self.image = image
        self.feature = feature
        super().__init__(f"{image}: unsupported: {feature}")
