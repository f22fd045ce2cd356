"""Prototype-guided pseudo-labels (METHOD.md step 5, eqs. 3-4).

Each global prototype k gets two counts over the cohort: patches inside the coarse annotation
that map to it (``inside_k``) and all patches that map to it (``members_k``). The paper calls
the prototypes that "dominate" the inside distribution the major-class prototypes G+ and
leaves the rule open. Ours, explicit and configurable:

* **major rule**: k is in G+ when it holds at least ``min_share`` of all inside patches *and*
  at least ``min_purity`` of its own members lie inside (``purity_k = inside_k / members_k``).
  The share test keeps rare patterns out; the purity test rejects patterns the annotation
  merely brushes, e.g. stroma that runs across its border. If no prototype passes, the one
  with the highest purity among those passing the share test is taken alone (a warning is
  recorded), so a cohort always has a positive pattern.
* **inside patches** on G+ are positive; inside patches on other prototypes are the
  over-included normal tissue and become negative (``relabel_inside``).
* **outside patches** become positive when ``max_{g in G+} cos(z, g) > tau`` (eq. 4). ``tau``
  is a cosine in the standardised feature space (see :mod:`engine.prototypes`); ``None``
  switches outside relabelling off. ``"auto"`` (default) sets tau from the data: the
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


@dataclass(frozen=True)
class PseudoLabelSettings:
    min_share: float = 0.05
    min_purity: float = 0.5
    tau: float | str | None = "auto"
    tau_quantile: float = 0.25
    tau_floor: float = 0.3
    relabel_inside: bool = True

    def validate(self) -> None:
        if isinstance(self.tau, str) and self.tau != "auto":
            raise ValueError(f"tau is a cosine, 'auto' or None (off), not {self.tau!r}")
        if not 0 <= self.tau_quantile <= 1:
            raise ValueError("tau_quantile is a fraction between 0 and 1")


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
    min_share: float = 0.05,
    min_purity: float = 0.5,
) -> tuple[npt.NDArray[np.bool_], list[str]]:
    """G+ by the share-and-purity rule; returns the mask and any warnings."""
    inside = np.bincount(assignment[coarse == 1], minlength=n_prototypes)
    members = np.bincount(assignment, minlength=n_prototypes)
    total_inside = inside.sum()
    if total_inside == 0:
        return np.zeros(n_prototypes, dtype=bool), ["no patch lies inside the coarse annotation"]
    share = inside / total_inside
    purity = np.divide(inside, members, out=np.zeros(n_prototypes), where=members > 0)
    major = (share >= min_share) & (purity >= min_purity)
    warnings: list[str] = []
    if not major.any():
        candidates = np.where(share >= min_share, purity, -1.0)
        best = int(np.argmax(candidates))
        major[best] = True
        warnings.append(
            f"no prototype has {min_purity:.0%} of its patches inside the coarse annotation; "
            f"using the most enriched one alone ({purity[best]:.0%} inside)"
        )
    return major, warnings


def resolve_tau(
    similarity: npt.NDArray[np.floating],
    coarse: npt.NDArray[np.int8],
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
        assignment, coarse, k, settings.min_share, settings.min_purity
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
