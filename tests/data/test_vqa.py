"""easy-VQA loader: the shipped sample, the real package (skipped when missing), splits by image, errors."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch

from probattn.data import sources
from probattn.data.vqa import (
    ANSWER_TYPES,
    SAMPLE_DIR,
    easy_vqa_splits,
    load_easy_vqa,
    load_easy_vqa_sample,
    read_vqa_folder,
)

EASY_VQA_ANSWERS = ("circle", "green", "red", "gray", "yes", "teal", "black", "rectangle", "yellow", "triangle",
                    "brown", "blue", "no")


def _assert_split_by_image(splits):
    ids = [set(s.image_ids) for s in (splits.train, splits.validation)]
    assert not ids[0] & ids[1]
    for s in (splits.train, splits.validation, splits.test):
        assert len(s.image_ids) == s.images.shape[0] == len(set(s.image_index))  # every image has a question


def test_sample_splits_by_image_and_keeps_every_question():
    splits = load_easy_vqa_sample()
    _assert_split_by_image(splits)
    assert set(splits.test.image_ids).isdisjoint(set(splits.train.image_ids) | set(splits.validation.image_ids))
    rows = json.loads((SAMPLE_DIR / "questions.json").read_text())
    got = {(q, s.answer_names[a], s.image_ids[i]) for s in (splits.train, splits.validation, splits.test)
           for q, a, i in zip(s.questions, s.answers, s.image_index)}
    assert got == {tuple(r) for r in rows} and sum(map(len, (splits.train, splits.validation, splits.test))) == len(rows)
    assert [s.images.shape[0] for s in (splits.train, splits.validation, splits.test)] == [20, 10, 10]
    assert splits.answer_names == EASY_VQA_ANSWERS
    assert load_easy_vqa_sample().test.questions == splits.test.questions  # seeded


def test_question_and_image_line_up():
    """The image of a question is the PNG of the id in the questions file, decoded to (3, 64, 64) uint8."""
    splits = load_easy_vqa_sample()
    import numpy as np
    from PIL import Image

    s = splits.train
    i = s.image_index[0]
    expected = np.array(Image.open(SAMPLE_DIR / "images" / f"{s.image_ids[i]}.png").convert("RGB"))
    assert torch.equal(s.images[i], torch.from_numpy(expected).permute(2, 0, 1))
    assert s.images.dtype == torch.uint8 and s.images.shape[1:] == (3, 64, 64)


def test_question_types_follow_the_answer():
    s = load_easy_vqa_sample().train
    for question, answer, kind in zip(s.questions, s.answers, s.question_types):
        assert kind == ANSWER_TYPES[s.answer_names[answer]]
        if kind == "color":
            assert "color" in question
        elif kind == "yes/no":
            assert question.split()[0] in ("is", "does")
    assert set(s.question_types) == {"yes/no", "color", "shape"}


@pytest.mark.data
def test_real_easy_vqa_counts_vocabulary_and_image_split():
    if importlib.util.find_spec("easy_vqa") is None:
        pytest.skip("easy-vqa not installed")
    train = load_easy_vqa("train")
    assert (train.images.shape[0], len(train)) == (4000, 38575)
    assert train.answer_names == EASY_VQA_ANSWERS
    splits = easy_vqa_splits(seed=0)
    _assert_split_by_image(splits)
    assert [s.images.shape[0] for s in (splits.train, splits.validation, splits.test)] == [3600, 400, 1000]
    assert len(splits.train) + len(splits.validation) == 38575 and len(splits.test) == 9673
    assert sum(t == "yes/no" for t in splits.test.question_types) == 7136  # the package README's count
    seen = {bytes(x.numpy()) for x in torch.cat([splits.train.images, splits.validation.images]).flatten(1)}
    assert not any(bytes(x.numpy()) in seen for x in splits.test.images.flatten(1))  # no test image in train
    assert easy_vqa_splits(seed=1).validation.image_ids != splits.validation.image_ids


def test_missing_package_names_easy_vqa(monkeypatch):
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"easy_vqa.*pip install easy-vqa==1\.0"):
        load_easy_vqa("train")


def test_bad_arguments_and_files(tmp_path):
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_easy_vqa("validation")
    with pytest.raises(ValueError, match="validation_fraction must lie in"):
        load_easy_vqa_sample(validation_fraction=0.0)
    folder = tmp_path / "split"
    shutil.copytree(SAMPLE_DIR, folder)
    rows = json.loads((folder / "questions.json").read_text())
    (folder / "questions.json").write_text(json.dumps([*rows, ["what is it?", "purple", rows[0][2]]]))
    with pytest.raises(ValueError, match="'purple', not one of the answers"):
        read_vqa_folder(folder, EASY_VQA_ANSWERS, "x")
    (folder / "questions.json").write_text(json.dumps([["what is it?", "red"]]))
    with pytest.raises(ValueError, match=r"row 0 must be \[question, answer, image_id\]"):
        read_vqa_folder(folder, EASY_VQA_ANSWERS, "x")
    (folder / "questions.json").write_text(json.dumps([["what is it?", "red", 99999]]))
    with pytest.raises(FileNotFoundError, match=r"99999\.png is missing"):
        read_vqa_folder(folder, EASY_VQA_ANSWERS, "x")
    (folder / "questions.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"questions\.json is missing"):
        read_vqa_folder(folder, EASY_VQA_ANSWERS, "x")
