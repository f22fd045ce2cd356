"""The patch classifier (METHOD.md steps 6-7), in two forms, both on cached features and
trained with torch in seconds (on the CPU, or the device ``ClassifierSettings.device`` names).

* ``model="mil"`` (default): gated attention MIL trained on pseudo bags (LCMIL's scheme, see
  METHOD.md), one model per slide, every patch then scored as a one-patch bag. A bag of ten
  patches drawn inside the outline is labelled tumour; one drawn outside, normal. A bag only
  needs *some* tumour to be positive, so the normal tissue a coarse outline over-includes is
  not forced towards 1, which is what a patch classifier on the same labels does. Focal loss
  and balanced batches (half positive, half negative bags) as in the paper's DDS. On the
  real-tissue benchmark it separated what the outline mislabels far better than the patch
  MLP (BENCHMARKS.md), so it is the default.
* ``model="mlp"``: the paper's patch classifier: dynamic balanced sampling, focal loss,
  re-finetuning on all patches with labels from the model's own predictions.

Decision for the MLP (the paper trains and predicts on the same patches): its predictions
are cross-fitted. Patches are split into ``cross_fit_folds`` folds by spatial blocks, and
each patch is scored by the model trained on the other folds. A model scoring the patches it
was trained on reproduces their (noisy) labels: on the benchmark, transductive scores never
rose above 0.8 outside the coarse outline, so missed tumour could not be found; out-of-fold
scores can. Blocks, not single patches, because neighbours share texture and label.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from engine.devices import cuda_index, is_cuda
from engine.errors import SettingsError, TrainingDataError

if TYPE_CHECKING:
    import torch
    from torch import nn

# torch is imported where a model is trained, not here: a re-run whose scores are cached
# (engine.scores) trains nothing, and importing torch took 1-1.4 s of it (issue 11).


@dataclass(frozen=True)
class MilSettings:
    """Attention MIL on pseudo bags: ``epochs`` passes over ``n_bags`` freshly drawn bags of
    ``bag_size`` patches (half inside, half outside), ``bags_per_step`` bags a step, Adam at
    LCMIL's ``lr``. Several bags a step, not LCMIL's one: the same Dice in a fraction of the
    time, and the loss has flattened by the last epoch (BENCHMARKS.md, issue 4)."""

    n_bags: int = 1000
    bag_size: int = 10
    hidden: int = 128
    attention: int = 64
    epochs: int = 5
    bags_per_step: int = 8
    lr: float = 5e-5
    dropout: float = 0.25


@dataclass(frozen=True)
class ClassifierSettings:
    """``model``: ``"mil"`` or ``"mlp"`` (see the module's docstring).

    MLP: ``iterations`` DDS steps of ``batch_size`` patches (half positive, half negative);
    then ``refinetune_epochs`` passes over all patches with labels replaced by predictions
    (0 switches re-finetuning off). Both: ``min_per_class`` patches of each label are
    required, and the focal loss's ``focal_gamma`` and ``focal_alpha``. ``device``: a torch
    device, resolved (:func:`engine.devices.resolve_device`; ``refine`` sets it from
    ``RefineSettings.device``). Weights are initialised on the CPU whatever the device, so a
    seed starts every device from the same model."""

    model: str = "mil"
    mil: MilSettings = field(default_factory=MilSettings)
    hidden: int = 64
    dropout: float = 0.2
    iterations: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    focal_gamma: float = 2.0
    focal_alpha: float = 0.5
    refinetune_epochs: int = 2
    refinetune_lr: float = 2e-4
    min_per_class: int = 10
    cross_fit_folds: int = 5
    cross_fit_block: int = 8  # patches per side of a spatial block kept in one fold
    random_state: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        if self.model not in ("mil", "mlp"):
            raise SettingsError(f"ClassifierSettings.model is 'mil' or 'mlp', not {self.model!r}")


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float = 0.5
) -> torch.Tensor:
    """Binary focal loss (Lin et al. 2017), mean over the batch."""
    import torch
    from torch import nn

    bce = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    a_t = alpha * target + (1 - alpha) * (1 - target)
    return (a_t * (1 - p_t) ** gamma * bce).mean()


def balanced_batch(
    pos: npt.NDArray[np.int64], neg: npt.NDArray[np.int64], size: int, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """Indices of a batch with equal numbers of positives and negatives (with replacement,
    since tumour is often the rarer class by far)."""
    half = size // 2
    return np.concatenate([rng.choice(pos, half), rng.choice(neg, size - half)])


def _rng_devices(device: str) -> list[int]:
    """CUDA generators ``fork_rng`` must restore: dropout on the GPU draws from them."""
    return [cuda_index(device)] if is_cuda(device) else []


@contextmanager
def _one_thread() -> Iterator[None]:
    """A 64-unit MLP gains nothing from threads, and torch's spinning worker threads fight
    the JVM (paquo) and onnxruntime for 2 cores: measured 1.2 s on one thread vs 7-35 s."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class PatchClassifier:
    """Estimator: ``fit(X, y)`` returns self, ``predict_proba(X)`` the tumour probability."""

    def __init__(self, settings: ClassifierSettings = ClassifierSettings()) -> None:
        self.settings = settings

    def _net(self, dim: int) -> nn.Module:
        from torch import nn

        s = self.settings
        return nn.Sequential(
            nn.Linear(dim, s.hidden), nn.ReLU(), nn.Dropout(s.dropout), nn.Linear(s.hidden, 1)
        )

    def fit(
        self,
        x: npt.NDArray[np.floating],
        y: npt.NDArray[np.integer],
        fixed_negative: npt.NDArray[np.bool_] | None = None,
    ) -> PatchClassifier:
        """Train on pseudo-labels ``y``; ``fixed_negative`` patches stay 0 through
        re-finetuning (the user's hard negatives)."""
        s = self.settings
        y = np.asarray(y).astype(np.int64)
        n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
        if min(n_pos, n_neg) < s.min_per_class:
            raise TrainingDataError(
                f"Too few patches to train: {n_pos} labelled tumour and {n_neg} not "
                f"(need at least {s.min_per_class} of each). Draw the coarse annotation over "
                "more tissue, leave some tissue outside it, or use a smaller GridSettings.patch_um."
            )
        import torch

        x = np.asarray(x, dtype=np.float32)
        self.mean_ = x.mean(0)
        self.scale_ = x.std(0) + 1e-6
        xt = torch.from_numpy((x - self.mean_) / self.scale_).to(s.device)
        rng = np.random.default_rng(s.random_state)
        with torch.random.fork_rng(devices=_rng_devices(s.device)), _one_thread():
            torch.manual_seed(s.random_state)
            self.net_ = self._net(x.shape[1]).to(s.device)
            self._train_dds(xt, y, rng)
            self.dds_proba_ = self._proba(xt)
            self.refined_labels_ = (self.dds_proba_ >= 0.5).astype(np.int8)
            if fixed_negative is not None:
                self.refined_labels_[np.asarray(fixed_negative, dtype=bool)] = 0
            if s.refinetune_epochs > 0:
                self._refinetune(xt, self.refined_labels_, rng)
        return self

    def _train_dds(
        self, xt: torch.Tensor, y: npt.NDArray[np.integer], rng: np.random.Generator
    ) -> None:
        import torch

        s = self.settings
        pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
        yt = torch.from_numpy(y.astype(np.float32)).to(s.device)
        opt = torch.optim.AdamW(self.net_.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        self.net_.train()
        self.loss_history_: list[float] = []
        for _ in range(s.iterations):
            idx = torch.from_numpy(balanced_batch(pos, neg, s.batch_size, rng)).to(s.device)
            loss = focal_loss(self.net_(xt[idx]).squeeze(1), yt[idx], s.focal_gamma, s.focal_alpha)
            opt.zero_grad()
            loss.backward()
            opt.step()
            self.loss_history_.append(loss.item())

    def _refinetune(
        self, xt: torch.Tensor, labels: npt.NDArray[np.int8], rng: np.random.Generator
    ) -> None:
        import torch

        s = self.settings
        yt = torch.from_numpy(labels.astype(np.float32)).to(s.device)
        opt = torch.optim.AdamW(
            self.net_.parameters(), lr=s.refinetune_lr, weight_decay=s.weight_decay
        )
        self.net_.train()
        n = len(xt)
        for _ in range(s.refinetune_epochs):
            order = rng.permutation(n)
            for i0 in range(0, n, s.batch_size):
                idx = torch.from_numpy(order[i0 : i0 + s.batch_size]).to(s.device)
                loss = focal_loss(
                    self.net_(xt[idx]).squeeze(1), yt[idx], s.focal_gamma, s.focal_alpha
                )
                opt.zero_grad()
                loss.backward()
                opt.step()

    def _proba(self, xt: torch.Tensor) -> npt.NDArray[np.float32]:
        import torch

        self.net_.eval()
        with torch.inference_mode():
            return torch.sigmoid(self.net_(xt).squeeze(1)).cpu().numpy().astype(np.float32)

    def predict_proba(self, x: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        import torch

        x = np.asarray(x, dtype=np.float32)
        with _one_thread():
            xt = torch.from_numpy((x - self.mean_) / self.scale_).to(self.settings.device)
            return self._proba(xt)


def spatial_folds(groups: npt.NDArray[np.int64], n_folds: int, seed: int) -> npt.NDArray[np.int64]:
    """Fold of each patch; every patch of a group (a spatial block) lands in the same fold."""
    uniq, inverse = np.unique(groups, return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    return (order % n_folds)[inverse]


def cross_fit_proba(
    x: npt.NDArray[np.floating],
    y: npt.NDArray[np.integer],
    groups: npt.NDArray[np.int64] | None,
    settings: ClassifierSettings = ClassifierSettings(),
    fixed_negative: npt.NDArray[np.bool_] | None = None,
) -> npt.NDArray[np.float32]:
    """Tumour probability of every patch from a model that did not train on it.

    Falls back to one model trained and scored on all patches (the paper's transductive
    setting) when ``cross_fit_folds`` < 2, when there are fewer blocks than folds, or when a
    training split would lack either class.
    """
    y = np.asarray(y).astype(np.int64)
    k = settings.cross_fit_folds

    def transductive() -> npt.NDArray[np.float32]:
        return PatchClassifier(settings).fit(x, y, fixed_negative).predict_proba(x)

    if k < 2 or groups is None or len(np.unique(groups)) < k:
        return transductive()
    folds = spatial_folds(groups, k, settings.random_state)
    fixed = np.zeros(len(y), bool) if fixed_negative is None else np.asarray(fixed_negative)
    for f in range(k):
        yt = y[folds != f]
        if min((yt == 1).sum(), (yt == 0).sum()) < settings.min_per_class:
            return transductive()
    out = np.empty(len(y), dtype=np.float32)
    for f in range(k):
        test = folds == f
        model = PatchClassifier(settings).fit(x[~test], y[~test], fixed[~test])
        out[test] = model.predict_proba(x[test])
    return out


def standardise(x: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """Per-slide standardisation: also evens out stain and scanner differences between
    slides, since every slide's features are centred on its own tissue."""
    x = np.asarray(x, dtype=np.float32)
    return (x - x.mean(0)) / (x.std(0) + 1e-6)


def mil_proba(
    x: npt.NDArray[np.floating],
    y: npt.NDArray[np.integer],
    settings: ClassifierSettings = ClassifierSettings(),
    seed: int | None = None,
) -> npt.NDArray[np.float32]:
    """Tumour score of every patch of one slide (``x`` standardised per slide) from attention
    MIL trained on pseudo bags drawn from the patches labelled 1 and 0 in ``y`` (others,
    e.g. -1, are left out of the bags)."""
    s, m = settings, settings.mil
    y = np.asarray(y)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if min(len(pos), len(neg)) < s.min_per_class:
        raise TrainingDataError(
            f"Too few patches to train: {len(pos)} labelled tumour and {len(neg)} not "
            f"(need at least {s.min_per_class} of each)."
        )
    import torch

    from engine.mil_net import AttentionMIL

    seed = s.random_state if seed is None else seed
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(s.device)
    rng = np.random.default_rng(seed)
    half = m.n_bags // 2
    labels = torch.cat([torch.ones(half), torch.zeros(m.n_bags - half)]).to(s.device)
    with torch.random.fork_rng(devices=_rng_devices(s.device)), _one_thread():
        torch.manual_seed(seed)
        model = AttentionMIL(x.shape[1], m).to(s.device)
        opt = torch.optim.Adam(model.parameters(), lr=m.lr)
        model.train()
        for _ in range(m.epochs):
            bags = np.concatenate(
                [
                    rng.choice(pos, (half, m.bag_size)),
                    rng.choice(neg, (m.n_bags - half, m.bag_size)),
                ]
            )
            # one copy to the device per epoch, not one per step
            bags_t = torch.from_numpy(bags).to(s.device)
            order = torch.from_numpy(rng.permutation(m.n_bags)).to(s.device)
            for i0 in range(0, m.n_bags, m.bags_per_step):
                b = order[i0 : i0 + m.bags_per_step]
                logits = model(xt[bags_t[b]])
                loss = focal_loss(logits, labels[b], s.focal_gamma, s.focal_alpha)
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        with torch.inference_mode():
            return torch.sigmoid(model(xt.unsqueeze(1))).cpu().numpy().astype(np.float32)
