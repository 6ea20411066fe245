"""The memorizing warning reads the curves' trend: histories shaped like real runs where the old
three-rises-in-a-row rule fired wrongly or stayed silent."""

from __future__ import annotations

from nettrain.training.overfit import memorizing


def history(train_loss, val_loss, train_acc=None, val_acc=None):
    rows = []
    for i, (t, v) in enumerate(zip(train_loss, val_loss)):
        row = {"epoch": i + 1, "train_loss": t, "val_loss": v}
        if train_acc:
            row |= {"train_accuracy": train_acc[i], "val_accuracy": val_acc[i]}
        rows.append(row)
    return rows


def test_red_wine_val_loss_creeping_up_with_dips_is_memorizing():
    # val loss 0.895 -> 1.135 with dips (never three rises in a row); train 81 %, val 65 %.
    val = [1.05, 0.95, 0.91, 0.895, 0.92, 0.91, 0.95, 0.94, 0.99, 0.97, 1.03, 1.01, 1.08, 1.06, 1.135]
    train = [1.1, 0.98, 0.93, 0.89, 0.86, 0.83, 0.80, 0.77, 0.74, 0.71, 0.68, 0.65, 0.62, 0.59, 0.56]
    train_acc = [0.5 + 0.022 * i for i in range(15)]
    val_acc = [0.55, 0.6, 0.62, 0.64, 0.64, 0.65, 0.65, 0.64, 0.65, 0.65, 0.64, 0.65, 0.65, 0.65, 0.65]
    assert "started memorizing" in memorizing(history(train, val, train_acc, val_acc), patience=3)


def test_noisy_val_loss_of_a_model_still_at_69_percent_is_not_memorizing():
    # cat/dog photos: val loss rose three epochs running, but train accuracy is 69 %, val alike.
    val = [0.69, 0.67, 0.655, 0.66, 0.67, 0.68]
    train = [0.69, 0.675, 0.66, 0.65, 0.64, 0.63]
    train_acc = [0.52, 0.58, 0.62, 0.65, 0.67, 0.69]
    val_acc = [0.55, 0.6, 0.64, 0.66, 0.68, 0.68]
    assert memorizing(history(train, val, train_acc, val_acc), patience=3) is None


def test_a_table_reaching_new_bests_late_is_still_learning():
    # val loss wobbles up for stretches, then new bests at epochs 18 and 20.
    val = [1.0 - 0.02 * i for i in range(12)] + [0.8, 0.81, 0.83, 0.84, 0.79, 0.77, 0.78, 0.76]
    train = [1.0 - 0.025 * i for i in range(20)]
    assert memorizing(history(train, val), patience=3) is None


def test_the_textbook_curve_warns_once_val_has_turned_up():
    train = [1.0, 0.7, 0.5, 0.35, 0.25, 0.18, 0.12, 0.08]
    val = [1.0, 0.75, 0.6, 0.58, 0.62, 0.68, 0.75, 0.83]
    assert memorizing(history(train[:5], val[:5]), patience=3) is None   # the best (epoch 4) is recent
    assert "against its best 0.58 at epoch 4" in memorizing(history(train, val), patience=3)


def test_regression_needs_no_accuracy():
    train = [1.0, 0.6, 0.4, 0.3, 0.22, 0.15, 0.1]
    val = [1.0, 0.7, 0.55, 0.6, 0.66, 0.72, 0.8]
    assert memorizing(history(train, val), patience=3) is not None


def test_one_noisy_epoch_on_200_val_photos_is_not_a_trend():
    """The cats_dogs recipe, epochs 1-21 (800 photos, 200 val): two bad validations after a new best,
    then one back near it. The run went on to 0.81 val accuracy at epoch 50: no memorizing yet."""
    val = [0.725, 0.691, 0.71, 0.649, 0.628, 0.741, 0.656, 0.626, 0.78, 0.691, 0.605, 0.619, 0.616, 0.652, 0.623,
           0.62, 0.597, 0.577, 0.65, 0.658, 0.584]
    train = [0.695, 0.673, 0.693, 0.677, 0.676, 0.648, 0.663, 0.648, 0.632, 0.646, 0.659, 0.632, 0.618, 0.618,
             0.609, 0.578, 0.585, 0.571, 0.584, 0.567, 0.541]
    train_acc = [0.561, 0.603, 0.583, 0.583, 0.6, 0.642, 0.649, 0.651, 0.669, 0.631, 0.615, 0.669, 0.686, 0.688,
                 0.682, 0.714, 0.719, 0.729, 0.725, 0.743, 0.751]
    val_acc = [0.505, 0.58, 0.58, 0.625, 0.64, 0.54, 0.615, 0.645, 0.6, 0.59, 0.68, 0.665, 0.705, 0.605, 0.67,
               0.675, 0.71, 0.7, 0.635, 0.64, 0.71]
    assert memorizing(history(train, val, train_acc, val_acc), patience=3) is None
