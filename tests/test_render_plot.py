"""The PNG plot of ``predict --render``: its curves hold a bounded number of points, whatever the video's length."""

import matplotlib.axes
import numpy as np

from tfrecords_schema import HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL
from trainer.prediction import render
from trainer.prediction.outputs import VideoPredictions


def test_the_plot_of_a_long_video_draws_at_most_plot_points_a_curve(tmp_path, monkeypatch):
    # Before, every frame was a point of every curve: matplotlib held ~2 KB a point while it drew (a 20-minute video's
    # plot took 57 MB more than a 1-minute one's).
    frames = 20_007
    rng = np.random.default_rng(0)
    expression = rng.dirichlet(np.ones(8), frames).astype(np.float32)
    va = rng.uniform(-1, 1, (frames, 2)).astype(np.float32)
    preds = VideoPredictions(
        stem="long", fps=30.0, timestamps_us=np.arange(frames, dtype=np.int64) * 33_333,
        decoded=np.ones(frames, bool), has_face=np.ones(frames, bool), boxes=np.zeros((frames, 4), np.float32),
        outputs={HEAD_EXPRESSION: expression, HEAD_VALENCE_AROUSAL: va},
        label_names={HEAD_EXPRESSION: [f"c{i}" for i in range(8)], HEAD_VALENCE_AROUSAL: ["valence", "arousal"]})
    drawn = []
    stackplot, plot = matplotlib.axes.Axes.stackplot, matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "stackplot",
                        lambda self, x, *ys, **kw: drawn.append(("stack", len(x), ys[0].shape)) or stackplot(
                            self, x, *ys, **kw))
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, x, y, **kw: drawn.append(("line", len(x), len(y))) or plot(self, x, y, **kw))
    render.write_plot(str(tmp_path / "long.png"), preds)
    assert [kind for kind, *_ in drawn] == ["stack", "line", "line"]
    assert all(n <= frames // 8 for _, n, _ in drawn), drawn  # every frame a point, before
    assert all(n <= render.PLOT_POINTS for _, n, _ in drawn)
    _, points, shape = drawn[0]
    assert shape == (8, points)
    assert (tmp_path / "long.png").stat().st_size > 0
    # The thinned curves are the means of consecutive frames: the stacked probabilities still sum to 1.
    times, thinned = render._thinned(preds.timestamps_us / 1e6, expression)
    np.testing.assert_allclose(thinned.sum(axis=1), 1.0, rtol=1e-5)
    assert times[0] == 0.0 and len(times) == len(thinned) <= render.PLOT_POINTS
