"""Local-to-global prototypes (METHOD.md steps 2-4).

Per slide, k-means of its patch features gives local prototypes; k-means of the union of all
slides' local prototypes gives the global prototypes G, which drop patterns repeated across
slides and keep those the cohort shares. Every patch then maps to its most cosine-similar
global prototype.

The two steps are pure functions so that a cluster can split them (:mod:`engine.cluster`):
:func:`local_prototypes` sees one slide's features (a worker's task), :func:`global_prototypes`
only the local prototypes (the driver's step). A single process calls the same two functions,
so the same slides and seed give the same G either way.

Decisions (the paper is silent):

* Each slide's features are standardised on the slide itself and projected on its own
  ``n_components`` principal components before clustering; cosine similarity is taken in
  that space. CNN features after ReLU are all positive, so raw cosine similarities crowd near
  1 and barely separate patterns; centred features spread them over [-1, 1] and make tau
  meaningful across encoders. Per slide, not pooled: a slide's local step then needs no other
  slide, and centring each slide on its own tissue evens out stain and scanner differences
  (as the MIL route's per-slide standardisation does).
* Local prototypes are lifted back from the slide's principal axes to the encoder's
  dimensions (unit length), the one space all slides share; a patch's similarity to a global
  prototype is the cosine between the patch, projected on its slide's axes, and the prototype.
* scikit-learn's k-means, and BLAS's matrix products, sum over threads in an order that
  depends on their number: the fits and the projections run on one thread, so a worker and
  the driver (or two machines) give identical prototypes for the same slides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from engine.errors import SettingsError

# scikit-learn is imported where it is used: only --method prototype needs it, and at the top
# it cost every command about a second of start-up (BENCHMARKS.md, issue 11).
if TYPE_CHECKING:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler


@dataclass(frozen=True)
class PrototypeSettings:
    """``n_local`` prototypes per slide, ``n_global`` for the cohort, ``n_components`` PCA
    dimensions of each slide before clustering (None: no projection)."""

    n_local: int = 32
    n_global: int = 16
    n_components: int | None = 32
    random_state: int = 0

    def validate(self) -> None:
        if self.n_local < 1 or self.n_global < 1:
            raise SettingsError("PrototypeSettings.n_local and n_global must be at least 1")


@dataclass(frozen=True)
class SlideSpace:
    """One slide's feature space: standardised on the slide, projected on its principal axes
    (``pca`` None: not projected)."""

    scaler: StandardScaler
    pca: PCA | None

    @classmethod
    def fit(cls, features: npt.NDArray[np.floating], s: PrototypeSettings) -> SlideSpace:
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler
        from threadpoolctl import threadpool_limits

        x = np.asarray(features, dtype=np.float32)
        if not len(x):
            raise ValueError("no patches to learn prototypes from")
        with threadpool_limits(1):  # see the module's docstring
            scaler = StandardScaler().fit(x)
            n = s.n_components
            if n is None or n >= min(x.shape):
                return cls(scaler, None)
            return cls(scaler, PCA(n, random_state=s.random_state).fit(scaler.transform(x)))

    def coords(self, x: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """Unit-length coordinates of patches on the slide's axes: dot products are cosines."""
        from sklearn.preprocessing import normalize
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            z = self.scaler.transform(np.asarray(x, dtype=np.float32))
            if self.pca is not None:
                z = self.pca.transform(z)
            return normalize(z).astype(np.float32)

    def lift(self, c: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """Directions on the slide's axes as unit vectors of the encoder's dimensions."""
        from sklearn.preprocessing import normalize
        from threadpoolctl import threadpool_limits

        c = np.asarray(c, dtype=np.float32)
        with threadpool_limits(1):  # BLAS sums in an order that depends on its threads, too
            lifted = c if self.pca is None else c @ self.pca.components_
            return normalize(lifted).astype(np.float32)

    def transform(self, x: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """Patches projected on the slide's axes, as unit vectors of the encoder's dimensions
        (the space of :func:`local_prototypes` and :func:`global_prototypes`)."""
        return self.lift(self.coords(x))

    def similarity(
        self, x: npt.NDArray[np.floating], prototypes: npt.NDArray[np.floating]
    ) -> npt.NDArray[np.float32]:
        """Cosine similarity of each of the slide's patches to each prototype, (n, K)
        (eq. 1); computed on the slide's axes, which is the same and cheaper."""
        from threadpoolctl import threadpool_limits

        p = np.asarray(prototypes, dtype=np.float32)
        z = self.coords(x)
        with threadpool_limits(1):
            on_axes = p if self.pca is None else p @ self.pca.components_.T
            return z @ on_axes.T


def local_prototypes(
    features: npt.NDArray[np.floating], s: PrototypeSettings, space: SlideSpace | None = None
) -> npt.NDArray[np.float32]:
    """One slide's ``n_local`` prototypes (fewer if it has fewer patches), unit vectors of
    the encoder's dimensions; a function of this slide's features and ``s`` alone.
    ``space``: the slide's :meth:`SlideSpace.fit`, when already fitted."""
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import normalize
    from threadpoolctl import threadpool_limits

    s.validate()
    space = space or SlideSpace.fit(features, s)
    z = space.coords(features)
    with threadpool_limits(1):
        km = KMeans(min(s.n_local, len(z)), n_init=3, random_state=s.random_state).fit(z)
    return space.lift(normalize(km.cluster_centers_))


def global_prototypes(
    local: Sequence[npt.NDArray[np.floating]], s: PrototypeSettings
) -> npt.NDArray[np.float32]:
    """The cohort's ``n_global`` prototypes (fewer if there are fewer local ones) from every
    slide's :func:`local_prototypes`, in the slides' order (k-means' seeding depends on it)."""
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import normalize
    from threadpoolctl import threadpool_limits

    s.validate()
    if not local:
        raise ValueError("no patches to learn prototypes from")
    union = np.concatenate([np.asarray(p, dtype=np.float32) for p in local])
    with threadpool_limits(1):
        km = KMeans(min(s.n_global, len(union)), n_init=5, random_state=s.random_state)
        km.fit(union)
    return normalize(km.cluster_centers_).astype(np.float32)


class LocalGlobalPrototypes:
    """Estimator in scikit-learn's shape (settings in ``__init__``, learned state ends in
    ``_``) over :func:`local_prototypes` and :func:`global_prototypes`: ``fit`` takes one
    feature array per slide, and the other methods take one slide's features and its index."""

    def __init__(
        self,
        n_local: int = 32,
        n_global: int = 16,
        n_components: int | None = 32,
        random_state: int = 0,
    ) -> None:
        self.n_local = n_local
        self.n_global = n_global
        self.n_components = n_components
        self.random_state = random_state

    @classmethod
    def from_settings(cls, s: PrototypeSettings) -> LocalGlobalPrototypes:
        return cls(s.n_local, s.n_global, s.n_components, s.random_state)

    @property
    def settings(self) -> PrototypeSettings:
        return PrototypeSettings(self.n_local, self.n_global, self.n_components, self.random_state)

    def fit(self, features: Sequence[npt.NDArray[np.floating]]) -> LocalGlobalPrototypes:
        """Learn prototypes from one feature array per slide (each with patches)."""
        s = self.settings
        s.validate()
        if not features or not all(len(f) for f in features):
            raise ValueError("no patches to learn prototypes from (a slide without patches?)")
        self.spaces_ = [SlideSpace.fit(f, s) for f in features]
        self.local_prototypes_ = [
            local_prototypes(f, s, sp) for f, sp in zip(features, self.spaces_, strict=True)
        ]
        self.global_prototypes_ = global_prototypes(self.local_prototypes_, s)
        return self

    def transform(self, x: npt.NDArray[np.floating], slide: int) -> npt.NDArray[np.float32]:
        """Slide ``slide``'s patches ``x`` in the prototypes' space (unit length)."""
        return self.spaces_[slide].transform(x)

    def similarity(self, x: npt.NDArray[np.floating], slide: int) -> npt.NDArray[np.float32]:
        """Cosine similarity of slide ``slide``'s patches to each global prototype (eq. 1)."""
        return self.spaces_[slide].similarity(x, self.global_prototypes_)

    def assign(self, x: npt.NDArray[np.floating], slide: int) -> npt.NDArray[np.int64]:
        """Index of each patch's nearest global prototype (eq. 2)."""
        return np.argmax(self.similarity(x, slide), axis=1)
