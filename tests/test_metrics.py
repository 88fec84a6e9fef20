"""Whole-set metrics against hand-computed cases and straightforward NumPy references."""

import numpy as np
import pytest

from trainer.evaluation import metrics

NAMES = ["a", "b", "c", "d"]


def reference_macro_f1(y_true, y_pred, num_classes):
    f1s = []
    for c in range(num_classes):
        tp = np.sum((y_true == c) & (y_pred == c))
        fp = np.sum((y_true != c) & (y_pred == c))
        fn = np.sum((y_true == c) & (y_pred != c))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s))


def reference_ccc(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    sxy = np.mean((x - x.mean()) * (y - y.mean()))
    return 2 * sxy / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def test_perfect_expression_predictions_score_one():
    y = np.array([0, 1, 2, 3, 0, 1])
    m = metrics.expression_metrics(y, y, np.ones(6), NAMES)
    assert m["macro_f1"] == 1.0 and m["accuracy"] == 1.0
    assert m["score_2020"] == pytest.approx(1.0)
    assert m["confusion_matrix"] == np.diag([2, 2, 1, 1]).tolist()


def test_constant_prediction_gives_known_f1_and_accuracy():
    y_true = np.array([0, 0, 0, 1, 2, 3])
    y_pred = np.zeros(6, int)
    m = metrics.expression_metrics(y_true, y_pred, np.ones(6), NAMES)
    # class a: precision 3/6, recall 1 -> F1 = 2/3; others 0.
    assert m["per_class"]["a"]["f1"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((2 / 3) / 4)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["score_2020"] == pytest.approx(0.67 * (2 / 3) / 4 + 0.33 * 0.5)


def test_known_confusion_matrix_and_per_class_precision_recall():
    y_true = np.array([0, 0, 1, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 2])
    m = metrics.expression_metrics(y_true, y_pred, np.ones(6), ["a", "b", "c"])
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 1], [0, 0, 1]]
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["c"]["precision"] == pytest.approx(0.5)
    assert m["per_class"]["a"]["support"] == 2


def test_frames_with_zero_weight_do_not_count():
    y_true = np.array([0, 1, 2, 3])
    y_pred = np.array([0, 1, 0, 0])  # the two wrong ones are masked out
    m = metrics.expression_metrics(y_true, y_pred, np.array([1, 1, 0, 0]), NAMES)
    assert m["accuracy"] == 1.0 and m["frames"] == 2


def test_expression_metrics_match_numpy_reference_on_random_predictions():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, 500)
    scores = rng.random((500, 4)) + np.eye(4)[y_true] * 0.6
    w = (rng.random(500) > 0.2).astype(np.float32)
    m = metrics.expression_metrics(y_true, scores, w, NAMES)
    keep = w > 0
    pred = scores.argmax(1)
    assert m["macro_f1"] == pytest.approx(reference_macro_f1(y_true[keep], pred[keep], 4))
    assert m["accuracy"] == pytest.approx(np.mean(y_true[keep] == pred[keep]))


def test_ccc_perfect_constant_and_reference():
    x = np.linspace(-1, 1, 50)
    assert metrics.concordance_correlation(x, x) == pytest.approx(1.0)
    assert metrics.concordance_correlation(x, np.zeros_like(x)) == 0.0
    assert metrics.concordance_correlation(x, -x) == pytest.approx(-1.0)
    rng = np.random.default_rng(1)
    y = 0.5 * x + 0.2 + rng.normal(0, 0.1, 50)
    assert metrics.concordance_correlation(x, y) == pytest.approx(reference_ccc(x, y))


def test_va_metrics_are_whole_set_not_batch_average():
    rng = np.random.default_rng(2)
    t = rng.uniform(-1, 1, (40, 2))
    p = t * 0.7 + rng.normal(0, 0.2, (40, 2))
    m = metrics.valence_arousal_metrics(t, p, np.ones(40))
    assert m["ccc_valence"] == pytest.approx(reference_ccc(t[:, 0], p[:, 0]))
    assert m["ccc_arousal"] == pytest.approx(reference_ccc(t[:, 1], p[:, 1]))
    batch_avg = np.mean([reference_ccc(t[i:i + 4, 0], p[i:i + 4, 0]) for i in range(0, 40, 4)])
    assert m["ccc_valence"] != pytest.approx(batch_avg, abs=1e-3)


def test_au_metrics_per_au_f1_and_2020_score():
    y = np.array([[1, 0], [1, 1], [0, 0], [0, 1]])
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.7], [0.3, 0.6]])
    m = metrics.action_unit_metrics(y, p, np.ones(4), ["AU1", "AU2"])
    # AU1: tp 1, fn 1, fp 0 -> 2/3; AU2: tp 2, fp 1 -> 4/5
    assert m["per_au"]["AU1"]["f1"] == pytest.approx(2 / 3)
    assert m["per_au"]["AU2"]["f1"] == pytest.approx(0.8)
    assert m["mean_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["score_2020"] == pytest.approx(0.5 * m["mean_f1"] + 0.5 * 0.75)


def test_accumulator_over_batches_equals_metrics_on_the_concatenation():
    rng = np.random.default_rng(3)
    acc = metrics.PredictionAccumulator(["expression", "valence_arousal", "action_units"], NAMES, ["AU1", "AU2", "AU3"])
    all_t, all_p, all_w, all_vt, all_vp, all_at, all_ap = [], [], [], [], [], [], []
    for _ in range(5):
        t = rng.integers(0, 4, (3, 6))
        probs = rng.random((3, 6, 4))
        w = (rng.random((3, 6)) > 0.3).astype(np.float32)
        vt, vp = rng.uniform(-1, 1, (3, 6, 2)), rng.uniform(-1, 1, (3, 6, 2))
        at, ap = rng.integers(0, 2, (3, 6, 3)), rng.random((3, 6, 3))
        acc.update({"expression": t, "valence_arousal": vt, "action_units": at},
                   {"expression": probs, "valence_arousal": vp, "action_units": ap},
                   {"expression": w, "valence_arousal": w, "action_units": w})
        all_t.append(t.ravel())
        all_p.append(probs.reshape(-1, 4).argmax(1))
        all_w.append(w.ravel())
        all_vt.append(vt.reshape(-1, 2))
        all_vp.append(vp.reshape(-1, 2))
        all_at.append(at.reshape(-1, 3))
        all_ap.append(ap.reshape(-1, 3))
    r = acc.result()
    keep = np.concatenate(all_w) > 0
    t, p = np.concatenate(all_t)[keep], np.concatenate(all_p)[keep]
    assert r["expression"]["macro_f1"] == pytest.approx(reference_macro_f1(t, p, 4))
    vt, vp = np.concatenate(all_vt)[keep], np.concatenate(all_vp)[keep]
    assert r["valence_arousal"]["ccc_arousal"] == pytest.approx(reference_ccc(vt[:, 1], vp[:, 1]))
    assert r["action_units"]["frames"] == keep.sum()
    assert r["score"] == pytest.approx(r["expression"]["macro_f1"] + r["valence_arousal"]["ccc_mean"]
                                       + r["action_units"]["mean_f1"])


def test_accumulator_rejects_unknown_head():
    with pytest.raises(ValueError, match="valid"):
        metrics.PredictionAccumulator(["emotion"])


def test_macro_f1_counts_absent_classes_as_zero_and_macro_f1_present_leaves_them_out():
    # Classes 0 and 1 perfectly predicted; classes 2 and 3 neither present nor predicted.
    y = np.array([0, 0, 1, 1, 1])
    m = metrics.expression_metrics(y, y, np.ones(5), NAMES)
    assert m["macro_f1"] == pytest.approx(0.5)  # ABAW: mean over all 4 classes
    assert m["macro_f1_present"] == pytest.approx(1.0)  # scikit-learn's default: labels seen only
    # A class predicted but never true counts among the present ones (F1 0).
    pred = np.array([0, 0, 1, 1, 2])
    m = metrics.expression_metrics(y, pred, np.ones(5), NAMES)
    f1_1 = 2 * 1.0 * (2 / 3) / (1.0 + 2 / 3)
    assert m["macro_f1_present"] == pytest.approx((1.0 + f1_1 + 0.0) / 3)
    assert m["macro_f1"] == pytest.approx((1.0 + f1_1) / 4)


def test_accumulator_adds_a_with_face_block_and_counts_every_scored_frame():
    acc = metrics.PredictionAccumulator(["expression", "valence_arousal"], NAMES)
    true = np.array([[0, 1, 2, 3, 0, 1]])
    # Right on the face frames, wrong (always class 0) on the two frames without a face.
    pred = np.eye(4)[np.array([[0, 1, 2, 3, 0, 0]])]
    pred[0, 3] = np.eye(4)[0]
    face = np.array([[True, True, True, False, True, False]])
    weights = np.array([[1, 1, 1, 1, 1, 0]], np.float32)  # the last frame has an invalid label
    va_true = np.linspace(-0.9, 0.9, 12).reshape(1, 6, 2)
    va_pred = np.where(face[..., None], va_true, -va_true)
    acc.update({"expression": true, "valence_arousal": va_true}, {"expression": pred, "valence_arousal": va_pred},
               {"expression": weights, "valence_arousal": np.ones((1, 6), np.float32)}, has_face=face,
               media_ids=np.array([b"vid"]))
    r = acc.result()
    e = r["expression"]
    assert e["frames"] == 5 and e["with_face"]["frames"] == 4
    assert e["with_face"]["accuracy"] == 1.0 and e["accuracy"] == pytest.approx(4 / 5)
    assert e["with_face"]["macro_f1"] == pytest.approx(reference_macro_f1(true[0, [0, 1, 2, 4]], true[0, [0, 1, 2, 4]], 4))
    assert e["macro_f1"] == pytest.approx(reference_macro_f1(true[0, :5], np.array([0, 1, 2, 0, 0]), 4))
    va = r["valence_arousal"]
    assert va["frames"] == 6 and va["with_face"]["frames"] == 4 and va["with_face"]["ccc_mean"] == pytest.approx(1.0)
    assert va["ccc_mean"] < 0.9
    # The official score is over every frame, never the face-only figure.
    assert r["score"] == pytest.approx(e["macro_f1"] + va["ccc_mean"])


def test_per_video_rows_score_each_video_on_its_own_frames():
    acc = metrics.PredictionAccumulator(["expression", "action_units"], NAMES, ["AU1", "AU2"])
    rng = np.random.default_rng(4)
    for batch in range(3):
        true = rng.integers(0, 4, (2, 5))
        scores = rng.random((2, 5, 4))
        au_true = rng.integers(0, 2, (2, 5, 2))
        au_pred = rng.random((2, 5, 2))
        face = rng.random((2, 5)) > 0.3
        w_expr = np.ones((2, 5), np.float32)
        w_expr[1, 3:] = 0  # no expression label there, but AU labels: still frames of the video
        acc.update({"expression": true, "action_units": au_true}, {"expression": scores, "action_units": au_pred},
                   {"expression": w_expr, "action_units": np.ones((2, 5), np.float32)}, has_face=face,
                   media_ids=np.array([b"a", b"b" if batch < 2 else b"c"]))
    rows = {row["media_id"]: row for row in acc.per_video()}
    assert list(rows) == ["a", "b", "c"]
    assert rows["a"]["frames"] == 15 and rows["a"]["expression_frames"] == 15
    assert rows["b"]["frames"] == 10 and rows["b"]["expression_frames"] == 6 and rows["b"]["action_units_frames"] == 10
    assert rows["c"]["frames"] == 5
    assert sum(r["expression_frames"] for r in rows.values()) == acc.result()["expression"]["frames"]
    assert 0.0 <= rows["a"]["face_rate"] <= 1.0
    assert set(rows["b"]) >= {"expression_macro_f1", "action_units_mean_f1"}
    # Video c scores only the batch it appeared in.
    assert rows["c"]["expression_macro_f1"] == pytest.approx(
        metrics.expression_metrics(true[1], scores[1], w_expr[1], NAMES)["macro_f1"])


def test_accumulator_takes_batches_holding_a_subset_of_the_heads():
    acc = metrics.PredictionAccumulator(["expression", "valence_arousal"], NAMES)
    acc.update({"expression": np.array([[1, 2]])}, {"expression": np.eye(4)[[[1, 2]]]},
               {"expression": np.ones((1, 2))}, media_ids=["v"])
    acc.update({"valence_arousal": np.zeros((1, 3, 2))}, {"valence_arousal": np.zeros((1, 3, 2))},
               {"valence_arousal": np.ones((1, 3))}, media_ids=["v"])
    r = acc.result()
    assert r["expression"]["frames"] == 2 and r["valence_arousal"]["frames"] == 3
    with pytest.raises(ValueError, match="none of the heads"):
        acc.update({}, {}, {"action_units": np.ones((1, 1))})


def test_a_frame_without_a_prediction_misses_its_true_class_and_counts_in_no_precision():
    names = ["a", "b", "c"]
    m = metrics.expression_metrics([0, 0, 1, 1, 2], [0, metrics.NO_PREDICTION, 1, 0, metrics.NO_PREDICTION],
                                   np.ones(5), names)
    assert m["frames"] == 5 and m["missed_frames"] == 2 and m["accuracy"] == pytest.approx(2 / 5)
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["per_class"]["c"]["support"] == 1 and m["per_class"]["c"]["recall"] == 0.0
    assert np.asarray(m["confusion_matrix"]).sum() == 3  # the predicted frames only


def test_coverage_accounts_for_every_labelled_frame_of_the_split():
    from tfrecords_schema import Accounting, SplitInfo
    from trainer.evaluation.coverage import split_coverage

    class Info:
        splits = {"validation": SplitInfo(accounting=Accounting(
            labelled_frames=100, written_frames_with_face=70, written_frames_without_face=10,
            dropped={"no_media": 12, "decode_error": 8, "beyond_video_end": 0}))}

    block = split_coverage(Info, "validation", scored_frames=75)  # 5 written frames carry only another task's label
    assert block == {"labelled_frames": 100, "scored_frames": 75, "coverage": 0.75,
                     "not_scored": {"decode_error": 8, "no_media": 12, "not_for_this_model": 5}}
    assert block["scored_frames"] + sum(block["not_scored"].values()) == block["labelled_frames"]

    # An evaluation that read 77 of the 80 written labelled frames lost 3 to records skipped as corrupt; of the 77,
    # 2 carry only another task's label.
    block = split_coverage(Info, "validation", scored_frames=75, labelled_read=77, skipped_records=1)
    assert block["not_scored"] == {"decode_error": 8, "no_media": 12, "not_for_this_model": 2,
                                   "skipped_as_corrupt": 3}
    # The same shortfall with no record skipped: labels the trainer does not take as valid (edited records).
    block = split_coverage(Info, "validation", scored_frames=75, labelled_read=77)
    assert block["not_scored"] == {"decode_error": 8, "no_media": 12, "not_for_this_model": 2, "invalid_label": 3}
    assert block["scored_frames"] + sum(block["not_scored"].values()) == block["labelled_frames"]
