"""Local-to-global prototypes (METHOD.md steps 2-4).

Per slide, k-means of its patch features gives local prototypes; k-means of the union of all
slides' local prototypes gives the global prototypes G, which drop patterns repeated across
slides and keep those the cohort shares. Every patch then maps to its most cosine-similar
global prototype.

Decision (the paper is silent): features are standardised and projected with PCA before
clustering, and cosine similarity is taken in that space. CNN features after ReLU are all
positive, so raw cosine similarities crowd near 1 and barely separate patterns; centred
features spread them over [-1, 1] and make tau meaningful across encoders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

# scikit-learn is imported where it is used: only --method prototype needs it, and at the top
# it cost every command about a second of start-up (BENCHMARKS.md, issue 11).
if TYPE_CHECKING:
    from sklearn.decomposition import PCA


@dataclass(frozen=True)
class PrototypeSettings:
    """``n_local`` prototypes per slide, ``n_global`` for the cohort, ``n_components`` PCA
    dimensions before clustering (None: no projection)."""

    n_local: int = 32
    n_global: int = 16
    n_components: int | None = 32
    random_state: int = 0


class LocalGlobalPrototypes:
    """Estimator in scikit-learn's shape: settings in ``__init__``, learned state ends in ``_``."""

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

    def fit(self, features: Sequence[npt.NDArray[np.floating]]) -> LocalGlobalPrototypes:
        """Learn prototypes from one feature array per slide."""
        from sklearn.cluster import KMeans
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler, normalize

        if self.n_local < 1 or self.n_global < 1:
            raise ValueError("n_local and n_global must be at least 1")
        feats = [np.asarray(f, dtype=np.float32) for f in features if len(f)]
        if not feats:
            raise ValueError("no patches to learn prototypes from")
        pooled = np.concatenate(feats)
        self.scaler_ = StandardScaler().fit(pooled)
        z = self.scaler_.transform(pooled)
        n_comp = self.n_components
        if n_comp is not None and n_comp < min(z.shape):
            self.pca_: PCA | None = PCA(n_comp, random_state=self.random_state).fit(z)
        else:
            self.pca_ = None
        local = []
        for f in feats:
            zf = self.transform(f)
            k = min(self.n_local, len(zf))
            km = KMeans(k, n_init=3, random_state=self.random_state).fit(zf)
            local.append(normalize(km.cluster_centers_))
        self.local_prototypes_ = local
        union = np.concatenate(local)
        k = min(self.n_global, len(union))
        km = KMeans(k, n_init=5, random_state=self.random_state).fit(union)
        self.global_prototypes_ = normalize(km.cluster_centers_).astype(np.float32)
        return self

    def transform(self, x: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """Standardised, projected, unit-length features: dot products are cosines."""
        from sklearn.preprocessing import normalize

        z = self.scaler_.transform(np.asarray(x, dtype=np.float32))
        if self.pca_ is not None:
            z = self.pca_.transform(z)
        return normalize(z).astype(np.float32)

    def similarity(self, x: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """Cosine similarity of each patch to each global prototype, (n, K) (eq. 1)."""
        return self.transform(x) @ self.global_prototypes_.T

    def assign(self, x: npt.NDArray[np.floating]) -> npt.NDArray[np.int64]:
        """Index of each patch's nearest global prototype (eq. 2)."""
        return np.argmax(self.similarity(x), axis=1)
