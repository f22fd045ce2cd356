"""Prototype-guided pseudo-labels (METHOD.md step 5, eqs. 3-4).

Each global prototype k gets two counts over the cohort: patches inside the coarse annotation
that map to it (``inside_k``) and all patches that map to it (``members_k``). The paper calls
the prototypes that "dominate" the inside distribution the major-class prototypes G+ and
leaves the rule open. Ours, explicit and configurable:

* **major rule**: k is in G+ when it holds at least ``min_share`` of all inside patches *and*
  is enriched inside: ``purity_k = inside_k / members_k`` is at least ``min_enrichment``
  times the cohort's base rate (the share of all patches inside). The share test keeps rare
  patterns out; the enrichment test rejects patterns the annotation merely brushes, e.g.
  stroma that runs across its border. Enrichment, not an absolute purity, because tumour is
  a small share of most slides: where no prototype has half its patches inside, an absolute
  50% rule relabels most true tumour as normal (measured in BENCHMARKS.md). If no prototype
  passes, the most enriched among those passing the share test is taken alone (a warning is
  recorded), so a cohort always has a positive pattern.
* **inside patches** on G+ are positive; inside patches on other prototypes are the
  over-included normal tissue and become negative (``relabel_inside``).
* **outside patches** become positive when ``max_{g in G+} cos(z, g) > tau`` (eq. 4). ``tau``
  is a cosine in the standardised feature space (see :mod:`engine.prototypes`); ``None``
  (the default) switches outside relabelling off: on the real-tissue benchmark it added more
  false than true tumour at every noise level, and missed tumour outside the outline is found
  by the cross-fitted classifier instead (:mod:`engine.classifier`). ``"auto"`` sets tau from
  the data: the
  ``tau_quantile`` quantile of the same similarity over the inside patches on G+, so an
  outside patch turns positive only when it is at least as typical of the tumour patterns as
  (1 - ``tau_quantile``) of the patches that define them; a fixed cosine would mean different
  things for different encoders. ``tau_floor`` keeps a loose cohort from flipping everything.
* **hard negatives** (regions the user marked as not tumour) are negative whatever the rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from engine.errors import SettingsError


@dataclass(frozen=True)
class PseudoLabelSettings:
    min_share: float = 0.02
    min_enrichment: float = 1.0
    tau: float | str | None = None
    tau_quantile: float = 0.25
    tau_floor: float = 0.3
    relabel_inside: bool = True

    def validate(self) -> None:
        if isinstance(self.tau, str) and self.tau != "auto":
            raise SettingsError(
                f"PseudoLabelSettings.tau is a cosine, 'auto' or None (off), not {self.tau!r}"
            )
        if not 0 <= self.tau_quantile <= 1:
            raise SettingsError("PseudoLabelSettings.tau_quantile is a fraction between 0 and 1")


@dataclass
class PseudoLabels:
    """Labels and what led to them, for reports and tests."""

    labels: npt.NDArray[np.int8]
    major: npt.NDArray[np.bool_]  # (K,) which prototypes are in G+
    inside_counts: npt.NDArray[np.int64]
    member_counts: npt.NDArray[np.int64]
    n_flipped_in: int  # outside -> positive
    n_flipped_out: int  # inside -> negative
    tau: float | None  # the threshold used (resolved when "auto")
    warnings: list[str] = field(default_factory=list)


def major_prototypes(
    assignment: npt.NDArray[np.integer],
    coarse: npt.NDArray[np.integer],
    n_prototypes: int,
    min_share: float = 0.02,
    min_enrichment: float = 1.0,
) -> tuple[npt.NDArray[np.bool_], list[str]]:
    """G+ by the share-and-enrichment rule; returns the mask and any warnings."""
    inside = np.bincount(assignment[coarse == 1], minlength=n_prototypes)
    members = np.bincount(assignment, minlength=n_prototypes)
    total_inside = inside.sum()
    if total_inside == 0:
        return np.zeros(n_prototypes, dtype=bool), ["no patch lies inside the coarse annotation"]
    share = inside / total_inside
    purity = np.divide(inside, members, out=np.zeros(n_prototypes), where=members > 0)
    base = total_inside / max(1, len(assignment))
    need = min(1.0, min_enrichment * base)
    major = (share >= min_share) & (purity >= need)
    warnings: list[str] = []
    if not major.any():
        candidates = np.where(share >= min_share, purity, -1.0)
        best = int(np.argmax(candidates))
        major[best] = True
        warnings.append(
            f"no prototype has {need:.0%} of its patches inside the coarse annotation; "
            f"using the most enriched one alone ({purity[best]:.0%} inside)"
        )
    return major, warnings


def resolve_tau(
    similarity: npt.NDArray[np.floating],
    coarse: npt.NDArray[np.integer],
    major: npt.NDArray[np.bool_],
    on_major: npt.NDArray[np.bool_],
    settings: PseudoLabelSettings,
) -> float | None:
    """The cosine threshold for outside patches; None when relabelling is off or impossible."""
    if settings.tau is None or not major.any():
        return None
    if settings.tau != "auto":
        return float(settings.tau)
    core = (coarse == 1) & on_major
    if not core.any():
        return None
    typical = similarity[core][:, major].max(axis=1)
    return max(float(np.quantile(typical, settings.tau_quantile)), settings.tau_floor)


def pseudo_labels(
    similarity: npt.NDArray[np.floating],
    coarse: npt.NDArray[np.integer],
    settings: PseudoLabelSettings = PseudoLabelSettings(),
    hard_negative: npt.NDArray[np.bool_] | None = None,
) -> PseudoLabels:
    """Pseudo-labels of every patch from its similarity to the global prototypes (n, K)."""
    settings.validate()
    n, k = similarity.shape
    coarse = np.asarray(coarse).astype(np.int8)
    assignment = np.argmax(similarity, axis=1)
    major, warnings = major_prototypes(
        assignment, coarse, k, settings.min_share, settings.min_enrichment
    )
    on_major = major[assignment]
    labels = coarse.copy()
    flipped_out = 0
    if settings.relabel_inside:
        drop = (coarse == 1) & ~on_major
        labels[drop] = 0
        flipped_out = int(drop.sum())
    flipped_in = 0
    tau = resolve_tau(similarity, coarse, major, on_major, settings)
    if tau is not None:
        best_major = similarity[:, major].max(axis=1)
        add = (coarse == 0) & (best_major > tau)
        labels[add] = 1
        flipped_in = int(add.sum())
    if hard_negative is not None:
        labels[np.asarray(hard_negative, dtype=bool)] = 0
    return PseudoLabels(
        labels=labels,
        major=major,
        inside_counts=np.bincount(assignment[coarse == 1], minlength=k),
        member_counts=np.bincount(assignment, minlength=k),
        n_flipped_in=flipped_in,
        n_flipped_out=flipped_out,
        tau=tau,
        warnings=warnings,
    )
