"""Classifier results cached beside the features: a re-run whose slide, labels and settings
are unchanged trains nothing, which was most of a re-run once the features are cached.

Two kinds of entry, each under a key made of everything that determines it, and the torch
version and the engine's source code (new code, new results):

* ``scores/``: one MIL model's scores of a slide's patches (float32, exactly what training
  returned). Key: the features' content (a digest, so a re-embedded slide is a new key even
  where its feature key is not), the labels the model learnt from (outline and hard
  negatives as patch labels: an edit that moves no patch's label reuses the scores), every
  classifier setting, the seed and the device kind.
* ``self-tests/``: the guard's self-test (:func:`engine.guard.redraw_self_test`, which
  trains the slide's model again on a loosened outline), keyed by all its arguments.

Both follow the feature cache's rules (:func:`engine.files.read_entry`): a checksum, a
damaged entry deleted and recomputed with one warning, a write failure a warning.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import shapely

from engine.files import checksum, read_entry, write_entry

if TYPE_CHECKING:
    from engine.classifier import ClassifierSettings
    from engine.guard import SelfTest

#: 1: the scores of one attention-MIL model (:func:`engine.classifier.mil_proba`)
SCORES_VERSION = 1

#: how a slide's scores were had, as summary.json says it
CACHED, TRAINED = "cached", "trained"
#: a slide no model scored (its outline kept: too few patches to learn from)
UNSCORED = "none"


def features_digest(x: npt.NDArray) -> str:
    """A digest of a slide's features (dtype, shape and every byte)."""
    return checksum({"x": x})


def combined_digest(digests: list[str]) -> str:
    """The digest of several slides' features taken together (a pooled model's)."""
    return hashlib.sha256("|".join(digests).encode()).hexdigest()


@functools.cache
def _code() -> str:
    """The engine's source (its top-level modules: the classifier, the guard, the regions
    they use) and the torch that trains: new code, new results. Encoders are left out: a
    new encoder gives new features, which are a new key already."""
    try:
        torch = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch = "none"
    h = hashlib.sha256()
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        h.update(importlib.metadata.version("qupath-refine").encode())  # if sources are absent
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"torch {torch}, engine {h.hexdigest()[:16]}"


def device_kind(device: str) -> str:
    """``cuda:1`` -> ``cuda``: the same kind of device gives the same scores."""
    return device.partition(":")[0]


def score_key(
    features: str, labels: npt.NDArray[np.integer], settings: ClassifierSettings, seed: int
) -> str:
    """The key of the scores of a model trained with ``settings`` and ``seed`` on the
    features whose digest is ``features`` and on ``labels``."""
    return _entry_key(
        features=features,
        labels=checksum({"y": np.ascontiguousarray(labels, dtype=np.int8)}),
        classifier=asdict(replace(settings, device=device_kind(settings.device))),
        seed=int(seed),
    )


def _entry_key(**payload: Any) -> str:
    """A cache entry's key: ``payload`` (JSON) with the entries' version, the engine's code
    and torch's version."""
    full = {"v": SCORES_VERSION, **payload, "code": _code()}
    return hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:24]


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


@dataclass(frozen=True)
class Derived:
    """An argument computed only when the cache misses: ``fn(arg)``, keyed by the function's
    name and ``arg`` (e.g. standardised features, keyed by the features)."""

    fn: Callable[[Any], Any]
    arg: Any

    def value(self) -> Any:
        return self.fn(self.arg)


def _value(v: Any) -> Any:
    return v.value() if isinstance(v, Derived) else v


def _canonical(v: Any) -> Any:
    """``v`` as JSON for a key: arrays and geometries by digest, dataclasses field by field
    (a ``device`` as its kind)."""
    if isinstance(v, Derived):
        return {"derived": [v.fn.__qualname__, _canonical(v.arg)]}
    if isinstance(v, np.ndarray):
        return {"array": checksum({"a": v})}
    if isinstance(v, shapely.Geometry):
        return {"geometry": hashlib.sha256(shapely.to_wkb(v)).hexdigest()}
    if is_dataclass(v) and not isinstance(v, type):
        return {
            type(v).__name__: {
                f.name: device_kind(getattr(v, f.name))
                if f.name == "device"
                else _canonical(getattr(v, f.name))
                for f in fields(v)
            }
        }
    if isinstance(v, tuple | list):
        return [_canonical(x) for x in v]
    if isinstance(v, float | np.floating):
        return repr(float(v))
    if isinstance(v, bool | int | str | np.integer) or v is None:
        return v if not isinstance(v, np.integer) else int(v)
    raise TypeError(f"no cache key for a {type(v).__name__}")


def cached_self_test(
    cache_dir: Path, test: Callable[..., SelfTest], *args: Any, **kwargs: Any
) -> SelfTest:
    """``test(*args, **kwargs)`` (the guard's self-test), from the cache when it holds the
    result for the same arguments, code and torch; :class:`Derived` arguments are computed
    only on a miss."""
    from engine.guard import SelfTest

    key = _entry_key(
        test=test.__qualname__,
        args=_canonical(args),
        kwargs={k: _canonical(v) for k, v in kwargs.items()},
    )
    path = Path(cache_dir) / "self-tests" / f"{key}.npz"

    def check(arrays: dict[str, np.ndarray]) -> None:
        if arrays["result"].dtype.kind != "U" or arrays["result"].shape != ():
            raise ValueError("the result is not one string")
        SelfTest(**json.loads(str(arrays["result"])))  # a KeyError/TypeError: damaged

    arrays = read_entry(path, ("result",), check, "self-test cache")
    if arrays is not None:
        return SelfTest(**json.loads(str(arrays["result"])))
    result = test(*map(_value, args), **{k: _value(v) for k, v in kwargs.items()})
    write_entry(
        path,
        {"result": np.array(json.dumps(asdict(result)))},
        "self-test cache",
        "the next run will run the guard's self-test again",
    )
    return result
