"""Classifier scores cached beside the features: a re-run whose slide, labels and settings are
unchanged skips training, the slow part of a re-run once the features are cached.

An entry holds one model's scores of a slide's patches (float32, exactly what training
returned), under a key made of everything that determines them: the features' content (a
digest, so a re-embedded slide is a new key even where its feature key is not), the labels
the model learnt from (the coarse outline and the hard negatives, as patch labels: an edit
that moves no patch's label reuses the scores), every classifier setting, the seed, the
device kind, the torch version and the classifier's source code. Entries live in
``<cache dir>/scores/`` with the feature cache's rules (:func:`engine.files.read_entry`): a
checksum, a damaged entry deleted and recomputed with one warning, a write failure a
warning.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from engine.files import checksum, read_entry, write_entry

if TYPE_CHECKING:
    from engine.classifier import ClassifierSettings

#: 1: the scores of one attention-MIL model (:func:`engine.classifier.mil_proba`)
SCORES_VERSION = 1

#: how a slide's scores were had, as summary.json says it
CACHED, TRAINED = "cached", "trained"


def features_digest(x: npt.NDArray) -> str:
    """A digest of a slide's features (dtype, shape and every byte)."""
    return checksum({"x": x})


def combined_digest(digests: list[str]) -> str:
    """The digest of several slides' features taken together (a pooled model's)."""
    return hashlib.sha256("|".join(digests).encode()).hexdigest()


@functools.cache
def _code() -> str:
    """The classifier's source and the torch that runs it: new code, new scores."""
    try:
        torch = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch = "none"
    source = (Path(__file__).parent / "classifier.py").read_bytes()
    return f"torch {torch}, classifier {hashlib.sha256(source).hexdigest()[:16]}"


def device_kind(device: str) -> str:
    """``cuda:1`` -> ``cuda``: the same kind of device gives the same scores."""
    return device.partition(":")[0]


def score_key(
    features: str, labels: npt.NDArray[np.integer], settings: ClassifierSettings, seed: int
) -> str:
    """The key of the scores of a model trained with ``settings`` and ``seed`` on the
    features whose digest is ``features`` and on ``labels``."""
    payload = {
        "v": SCORES_VERSION,
        "features": features,
        "labels": checksum({"y": np.ascontiguousarray(labels, dtype=np.int8)}),
        "classifier": asdict(replace(settings, device=device_kind(settings.device))),
        "seed": int(seed),
        "code": _code(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _entry_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / "scores" / f"{key}.npz"


def load_scores(cache_dir: Path, key: str, n: int) -> npt.NDArray[np.float32] | None:
    """The cached scores of ``n`` patches under ``key``, or None (damaged: deleted, with a
    warning)."""

    def check(arrays: dict[str, np.ndarray]) -> None:
        p = arrays["proba"]
        if p.dtype != np.float32 or p.shape != (n,):
            raise ValueError(f"scores {p.dtype} {p.shape} for {n} patches")

    arrays = read_entry(_entry_path(cache_dir, key), ("proba",), check, "score cache")
    return None if arrays is None else arrays["proba"]


def store_scores(cache_dir: Path, key: str, proba: npt.NDArray[np.float32]) -> Path | None:
    """Store scores under ``key``; None, with a warning, when the cache cannot be written."""
    return write_entry(
        _entry_path(cache_dir, key),
        {"proba": np.asarray(proba, dtype=np.float32)},
        "score cache",
        "the next run will train this slide's model again",
    )


def cached_mil_proba(
    cache_dir: Path,
    features: str,
    x: Callable[[], npt.NDArray[np.float32]],
    y: npt.NDArray[np.integer],
    settings: ClassifierSettings,
    seed: int,
) -> tuple[npt.NDArray[np.float32], str]:
    """:func:`engine.classifier.mil_proba` of ``x()`` (standardised features whose raw
    digest is ``features``) and ``y``, from the cache when it has them; also whether they
    were ``"cached"`` or ``"trained"``. ``x`` is called only to train."""
    key = score_key(features, y, settings, seed)
    hit = load_scores(cache_dir, key, len(y))
    if hit is not None:
        return hit, CACHED
    from engine.classifier import mil_proba  # torch: imported only to train

    p = mil_proba(x(), y, settings, seed=seed)
    store_scores(cache_dir, key, p)
    return p, TRAINED
