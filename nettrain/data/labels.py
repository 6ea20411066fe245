"""What every labelled dataset needs: a seeded train/val split and per-class loss weights."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.utils.class_weight import compute_class_weight

from nettrain.errors import UserError


def split_indices(labels: Sequence[int] | Sequence[float], val_fraction: float, seed: int, *,
                  stratify: bool = True, class_names: Sequence[str] = (), what: str = "the data"
                  ) -> tuple[list[int], list[int]]:
    """Train and val indices: a seeded split, stratified by class for classification (each class
    keeps its share in both parts)."""
    if stratify:
        counts = Counter(labels)
        rare = [c for c, n in counts.items() if n < 2]
        if rare:
            name = class_names[rare[0]] if class_names else rare[0]
            raise UserError(f"cannot split {what} into train and val: class {name!r} has only {counts[rare[0]]} "
                            f"sample; every class needs at least 2 (or give a separate validation set)")
    try:
        train, val = train_test_split(list(range(len(labels))), test_size=val_fraction, random_state=seed,
                                      stratify=list(labels) if stratify else None)
    except ValueError as e:
        raise UserError(f"cannot split {what} ({len(labels)} samples) with data.val_fraction={val_fraction}: "
                        f"{str(e).splitlines()[0]}") from None
    return sorted(train), sorted(val)


def balanced_weights(labels: Sequence[int], num_classes: int) -> list[float]:
    """n_samples / (n_classes x n_c) per class (scikit-learn's 'balanced'): rare classes weigh more."""
    present = np.unique(np.asarray(labels))
    weights = dict(zip(present.tolist(), compute_class_weight("balanced", classes=present, y=np.asarray(labels))))
    return [float(weights.get(c, 1.0)) for c in range(num_classes)]


def keep_order(found: Sequence[str], known: Sequence[str] | None) -> list[str]:
    """Class names: a trained model's `known` ones first, in its order (its output indices), then those
    `found` here that it lacks, in their order. Without `known`, `found` as it is."""
    if known is None:
        return list(found)
    return list(known) + [name for name in found if name not in set(known)]
