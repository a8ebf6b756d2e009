"""The demo's pictures: one colour per class on every image, a legend of the classes drawn,
labels inside the image, small inputs enlarged, the input beside the result.

The drawing is checked on a recorded prediction (Detectron2's output format, segments placed
by hand) so that every pixel's expected colour is known; ``tests/e2e/test_demo.py`` runs it on the model.
"""
import numpy as np
import torch

from maskclip_d2.visualization import DRAW_MIN_SIZE, VisualizationDemo, class_colors

VOCABULARY = ["red blob", "green blob", "blue blob", "yellow blob", "pink blob", "cyan blob",
              "a pink blob with a very long name", "orange blob", "grass", "sand", "snow", "gravel",
              "water", "brick"]
IS_THING = [True] * 8 + [False] * 6
PINK, LONG, SAND = 4, 6, 9


class RecordedPrediction:
    """Calls like ``maskclip_d2.Predictor``; returns the panoptic output of a segment map
    (``segments``: {segment id: class}), the same for every image."""

    def __init__(self, segment_map, segments):
        self.segment_map, self.segments = segment_map, segments

    def __call__(self, rgb, vocabulary, task, is_thing):
        info = [{"id": i, "category_id": c, "isthing": is_thing[c], "score": 0.9,
                 "area": int((self.segment_map == i).sum())} for i, c in self.segments.items()]
        return {"panoptic_seg": (torch.as_tensor(self.segment_map), info)}


def draw(segment_map, segments, rgb, **options):
    demo = VisualizationDemo(RecordedPrediction(segment_map, segments), 0.5, **options)
    _, drawn, found = demo.run_on_image(rgb, VOCABULARY, ["panoptic"], IS_THING)
    return drawn["panoptic"], found["panoptic"]


def test_one_colour_per_class_on_every_image_and_a_legend_of_the_classes_drawn():
    colors = class_colors(len(VOCABULARY))
    assert len(set(colors)) == len(colors)
    assert min(np.abs(np.subtract(a, b)).sum() for i, a in enumerate(colors) for b in colors[i + 1:]) >= 100

    black = np.zeros((64, 64, 3), dtype=np.uint8)
    two = np.full((64, 64), 1)  # sand, two pink blobs
    two[8:24, 8:24], two[36:56, 36:56] = 2, 3
    one = np.full((64, 64), 1)  # sand, one pink blob elsewhere
    one[30:50, 4:24] = 2
    first, _ = draw(two, {1: SAND, 2: PINK, 3: PINK}, black)
    second, _ = draw(one, {1: SAND, 2: PINK}, black)
    k = DRAW_MIN_SIZE // 64
    # Inside each blob (away from its edge and its label), on black: alpha * the class colour.
    pixels = [first[10 * k, 10 * k], first[38 * k, 38 * k], second[32 * k, 6 * k]]
    assert all(np.array_equal(p, pixels[0]) for p in pixels)
    pink = np.asarray(colors[PINK], dtype=float)
    assert np.allclose(pixels[0] / pink, pixels[0][0] / pink[0], atol=0.03)  # the same hue
    assert np.array_equal(first[60 * k, 2 * k], second[60 * k, 60 * k])  # sand, on both

    # The legend (below the picture) shows the colours of pink blob and sand, no other class.
    legend = first[64 * k:].reshape(-1, 3)
    shown = {i for i, c in enumerate(colors) if (legend == c).all(1).any()}
    assert shown == {PINK, SAND}


def test_small_inputs_are_drawn_enlarged_and_segments_keep_the_input_resolution():
    segment_map = np.full((64, 48), 1)
    segment_map[10:30, 10:30] = 2
    picture, segments = draw(segment_map, {1: SAND, 2: PINK}, np.zeros((64, 48, 3), np.uint8))
    k = DRAW_MIN_SIZE // 64
    assert k == 8 and picture.shape[1] == 48 * k and picture.shape[0] > 64 * k
    assert sorted(s["area"] for s in segments) == [20 * 20, 64 * 48 - 20 * 20]
    # Nearest neighbour: each input pixel is a k x k block (the blob's inside, one colour).
    block = picture[12 * k:13 * k, 12 * k:13 * k].reshape(-1, 3)
    assert (block == block[0]).all()


def test_labels_stay_inside_the_image():
    """A thing near the right edge with a long name: its label (white text on a black box)
    would run past the edge; on a white image nothing dark may touch the right border."""
    white = np.full((64, 64, 3), 255, dtype=np.uint8)
    segment_map = np.zeros((64, 64), dtype=np.int64)
    segment_map[20:44, 50:61] = 1
    picture, _ = draw(segment_map, {1: LONG}, white)
    size = DRAW_MIN_SIZE // 64 * 64
    image = picture[:size, :size].astype(int)
    dark = (image < 80).all(axis=2)
    assert dark.any()  # the label's box is drawn
    assert not dark[:, -3:].any()  # and ends inside the image
    columns = np.nonzero(dark.any(axis=0))[0]
    assert columns.max() < size - 3


def test_side_by_side_shows_the_enlarged_input_left_of_the_result():
    rng = np.random.RandomState(0)
    rgb = rng.randint(0, 256, (32, 32, 3), dtype=np.uint8)
    segment_map = np.full((32, 32), 1)
    picture, _ = draw(segment_map, {1: SAND}, rgb, side_by_side=True)
    k = DRAW_MIN_SIZE // 32
    left = picture[:32 * k, :32 * k]
    assert np.array_equal(left, rgb.repeat(k, 0).repeat(k, 1))
    assert picture.shape[1] > 2 * 32 * k
    alone, _ = draw(segment_map, {1: SAND}, rgb)
    assert np.array_equal(picture[:32 * k, -32 * k:], alone[:32 * k])
