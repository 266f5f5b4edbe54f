"""The generated task is deterministic, varied, and its held-out split is separate."""

import hashlib

import numpy as np

from glm4v_edge import shapes
from glm4v_edge.thinking import parse_reply


def fingerprint(sample: shapes.Sample) -> str:
    digest = hashlib.sha256(sample.question.encode())
    for image in sample.images:
        digest.update(image.tobytes())
    if sample.video is not None:
        digest.update(sample.video.frames.tobytes())
    return digest.hexdigest()


def test_same_seed_same_sample():
    for index in range(10):
        assert fingerprint(shapes.make_sample("train", index)) == fingerprint(shapes.make_sample("train", index))


def test_heldout_never_appears_in_training():
    train = {fingerprint(s) for s in shapes.make_samples("train", 1000)}
    heldout = {fingerprint(s) for s in shapes.make_samples("heldout", 500)}
    assert not train & heldout


def test_question_types_rotate_and_answers_are_spread():
    samples = shapes.make_samples("heldout", 500)
    assert {s.qtype for s in samples} == set(shapes.QUESTION_TYPES)
    for qtype in shapes.QUESTION_TYPES:
        answers = [s.answer for s in samples if s.qtype == qtype]
        assert len(answers) == 100
        assert len(set(answers)) >= 3
        assert max(answers.count(a) for a in set(answers)) <= 45  # no answer dominates a type


def test_images_vary_in_size_and_aspect_ratio():
    sizes = {image.size for s in shapes.make_samples("train", 200) for image in s.images}
    ratios = [w / h for w, h in sizes]
    assert len(sizes) > 50 and min(ratios) < 0.7 and max(ratios) > 1.4


def test_targets_use_the_real_output_format():
    for sample in shapes.make_samples("train", 10):
        reply = parse_reply(sample.target())
        assert reply.final_answer == sample.answer and reply.thinking and reply.answer_closed
        assert sample.answer in reply.thinking  # the thinking reaches the answer first


def test_two_images_and_video_media():
    two = shapes.make_sample("heldout", shapes.QUESTION_TYPES.index("two_images"))
    assert len(two.images) == 2 and two.video is None
    motion = shapes.make_sample("heldout", shapes.QUESTION_TYPES.index("motion"))
    assert motion.video.frames.shape[0] == shapes.VIDEO_FRAMES and not motion.images
    assert motion.video.metadata.fps == shapes.VIDEO_FPS


def test_count_matches_the_drawn_colours():
    # The number of distinct shape colours can never exceed the answer to "how many shapes".
    palette = np.array(list(shapes.COLORS.values()))
    for sample in [s for s in shapes.make_samples("heldout", 50) if s.qtype == "count"]:
        pixels = np.asarray(sample.images[0]).reshape(-1, 3)
        present = sum(bool((np.abs(pixels - colour).sum(1) < 10).sum() > 30) for colour in palette)
        assert 1 <= present <= int(sample.answer)


def test_curriculum_starts_with_one_big_shape():
    easy = shapes.Difficulty(0.0)
    assert easy.max_shapes == 1 and shapes.Difficulty(1.0).max_shapes == shapes.MAX_SHAPES
    assert easy.radius_range[0] > shapes.Difficulty(1.0).radius_range[0]
