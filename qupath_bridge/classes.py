"""Every naming rule for the objects qupath-refine reads and writes, in one place.

Refined objects get the derived class ``<coarse>: refined`` (so they never mix with the user's
own objects) and tiles carry the measurement ``p_<coarse>``. The Groovy menu script does not
re-derive these names: Python writes the refined class into each image's entry of the results
manifest and into the memory files the script reads (see :mod:`qupath_bridge.memory`).
"""

from __future__ import annotations

from dataclasses import dataclass

REFINED_SUFFIX = "refined"
REFINED_COLOR = (0, 170, 60)


def refined_class(coarse: str) -> str:
    """``Tumor`` -> ``Tumor: refined`` (QuPath's notation for a derived class)."""
    return f"{coarse}: {REFINED_SUFFIX}"


def probability_key(coarse: str) -> str:
    """The per-tile measurement holding the patch's probability of being ``coarse``."""
    return f"p_{coarse}"


def is_refined(name: str | None) -> bool:
    """A class qupath-refine writes (``<anything>: refined``)."""
    return name is not None and name.endswith(f": {REFINED_SUFFIX}")


def class_matches(name: str | None, wanted: str) -> bool:
    """QuPath class equality; ``Tumor`` also matches derived classes like ``Tumor: grade 2``
    but not ``Tumor: refined`` (our own output, never an input). A trailing ``*`` is part of
    the name (QuPath's ``Ignore*``), not a wildcard."""
    if name is None:
        return False
    if name == wanted:
        return True
    return name.startswith(wanted + ":") and not is_refined(name)


@dataclass(frozen=True)
class ClassNames:
    """The coarse class, the class marking tissue that is not tumour, and the derived class
    refined objects get (``Tumor: refined``), so they never mix with the user's objects."""

    coarse: str = "Tumor"
    negative: str | None = "Ignore*"

    @property
    def refined(self) -> str:
        return refined_class(self.coarse)

    @property
    def probability(self) -> str:
        return probability_key(self.coarse)
