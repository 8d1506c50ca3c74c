"""easy-VQA: real images with questions and answers, from the installed PyPI package ``easy-vqa`` 1.0.

The package ships its data inside the wheel (``easy_vqa/data``; nothing is downloaded): 4,000 training and 1,000
test images (64 × 64 RGB PNG, one coloured shape on a white background), 38,575 / 9,673 questions about them
and 13 answers (3 shapes, 8 colours, yes/no). The package is located with ``importlib.util.find_spec`` and its
files are read directly (JSON and PNG; PNGs are decoded with Pillow), so no code of it is imported or run.

* :func:`load_easy_vqa` — one of the package's two splits as a :class:`VQAData`;
* :func:`easy_vqa_splits` — train / validation / test, the validation images carved from the training images
  **by image** (every question about an image stays with it: no image is in two splits);
* :func:`load_easy_vqa_sample` — the 40-image sample shipped with probattn (for tests and ``--sample``);
* question types (:data:`QUESTION_TYPES`): ``yes/no``, ``color`` and ``shape``, from the answer (VQA's
  answer-type convention; in easy-VQA each question template has exactly one type).

Questions are tokenized with :class:`probattn.data.WordTokenizer` (``[CLS] words [SEP]``, padded with 0).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from probattn.data.sources import _package_dir

__all__ = [
    "ANSWER_TYPES",
    "QUESTION_TYPES",
    "SAMPLE_DIR",
    "VQAData",
    "VQASplits",
    "easy_vqa_splits",
    "load_easy_vqa",
    "load_easy_vqa_sample",
    "read_vqa_folder",
]

INSTALL = "pip install easy-vqa==1.0 (or pip install 'probattn[vqa]')"
SAMPLE_DIR = Path(__file__).with_name("samples") / "easy_vqa"
QUESTION_TYPES = ("yes/no", "color", "shape")
ANSWER_TYPES: dict[str, str] = {
    "yes": "yes/no", "no": "yes/no",
    **{c: "color" for c in ("red", "green", "blue", "black", "gray", "teal", "yellow", "brown")},
    **{s: "shape" for s in ("circle", "rectangle", "triangle")},
}
IMAGE_SIZE = 64


@dataclass(frozen=True)
class VQAData:
    """Questions about images.

    Attributes:
        images: uint8 ``(M, 3, H, W)``, the distinct images of this set.
        image_ids: the data set's id of each image (``M``), e.g. the PNG file's number.
        questions: ``N`` question strings.
        answers: ``N`` answer ids in ``[0, len(answer_names))``.
        image_index: ``N`` indices into ``images`` (the image each question is about).
        answer_names: the answer vocabulary (answer id ``i`` means ``answer_names[i]``).
        name: which set this is.
    """

    images: Tensor
    image_ids: list[int]
    questions: list[str]
    answers: list[int]
    image_index: list[int]
    answer_names: tuple[str, ...]
    name: str = ""

    def __post_init__(self) -> None:
        n = len(self.questions)
        if len(self.answers) != n or len(self.image_index) != n:
            raise ValueError(f"questions ({n}), answers ({len(self.answers)}) and image_index "
                             f"({len(self.image_index)}) must have one entry per question")
        if self.images.dim() != 4 or self.images.dtype != torch.uint8 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (M, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.image_ids) != self.images.shape[0]:
            raise ValueError(f"image_ids has {len(self.image_ids)} entries for {self.images.shape[0]} images")
        bad = [a for a in self.answers if not 0 <= a < len(self.answer_names)]
        if bad:
            raise ValueError(f"answer id {bad[0]} is outside [0, {len(self.answer_names)})")
        if any(not 0 <= i < self.images.shape[0] for i in self.image_index):
            raise ValueError(f"image_index must lie in [0, {self.images.shape[0]})")

    def __len__(self) -> int:
        return len(self.questions)

    @property
    def question_types(self) -> list[str]:
        """``yes/no``, ``color`` or ``shape`` per question (from its answer, see :data:`ANSWER_TYPES`)."""
        return [ANSWER_TYPES.get(self.answer_names[a], "other") for a in self.answers]

    def subset_images(self, keep: Sequence[int], name: str) -> VQAData:
        """The images at positions ``keep`` (into ``images``) with every question about them."""
        keep = list(keep)
        new_position = {old: new for new, old in enumerate(keep)}
        rows = [i for i, img in enumerate(self.image_index) if img in new_position]
        return VQAData(
            images=self.images[keep].clone(), image_ids=[self.image_ids[i] for i in keep],
            questions=[self.questions[i] for i in rows], answers=[self.answers[i] for i in rows],
            image_index=[new_position[self.image_index[i]] for i in rows], answer_names=self.answer_names, name=name)


@dataclass(frozen=True)
class VQASplits:
    """train / validation / test sets sharing ``answer_names``; no image is in two of them."""

    train: VQAData
    validation: VQAData
    test: VQAData

    @property
    def answer_names(self) -> tuple[str, ...]:
        return self.train.answer_names


def _read_png(path: Path) -> np.ndarray:
    try:
        from PIL import Image
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("reading the easy-VQA images needs Pillow: pip install pillow "
                                  "(or pip install 'probattn[vqa]')", name="PIL") from exc
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if array.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"{path}: expected a {IMAGE_SIZE}x{IMAGE_SIZE} image, got {array.shape[1]}x{array.shape[0]}")
    return array


def read_vqa_folder(folder: Path, answer_names: Sequence[str], name: str) -> VQAData:
    """Read an easy-VQA split folder: ``questions.json`` (``[question, answer, image_id]`` rows) and ``images/<id>.png``.

    Raises:
        FileNotFoundError naming a missing file; ValueError naming a malformed row or an unknown answer.
    """
    folder = Path(folder)
    path = folder / "questions.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall the data with {INSTALL}")
    rows = json.loads(path.read_text(encoding="utf-8"))
    index = {a: i for i, a in enumerate(answer_names)}
    questions, answers, image_ids = [], [], []
    for n, row in enumerate(rows):
        if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str) and isinstance(row[2], int)):
            raise ValueError(f"{path}: row {n} must be [question, answer, image_id], got {row!r}")
        if row[1] not in index:
            raise ValueError(f"{path}: row {n} has answer {row[1]!r}, not one of the answers {list(answer_names)}")
        questions.append(row[0])
        answers.append(index[row[1]])
        image_ids.append(row[2])
    ids = sorted(set(image_ids))
    pngs = []
    for image_id in ids:
        png = folder / "images" / f"{image_id}.png"
        if not png.is_file():
            raise FileNotFoundError(f"{png} is missing (image {image_id} of {path})")
        pngs.append(_read_png(png))
    images = torch.from_numpy(np.stack(pngs)).permute(0, 3, 1, 2).contiguous() if pngs else \
        torch.zeros(0, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    position = {image_id: i for i, image_id in enumerate(ids)}
    return VQAData(images=images, image_ids=ids, questions=questions, answers=answers,
                   image_index=[position[i] for i in image_ids], answer_names=tuple(answer_names), name=name)


def _read_answers(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall the data with {INSTALL}")
    answers = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if len(set(answers)) != len(answers):
        raise ValueError(f"{path} lists an answer twice")
    return answers


def _data_dir() -> Path:
    return _package_dir("easy_vqa", INSTALL) / "data"


def load_easy_vqa(split: str = "train") -> VQAData:
    """One of the package's splits (``"train"``: 4,000 images, 38,575 questions; ``"test"``: 1,000 / 9,673).

    Raises:
        ModuleNotFoundError naming ``easy-vqa`` and the pip command when the package is not installed.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data = _data_dir()
    return read_vqa_folder(data / split, _read_answers(data / "answers.txt"), name=f"easy_vqa_{split}")


def _carve_by_image(data: VQAData, validation_fraction: float, seed: int) -> tuple[VQAData, VQAData]:
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must lie in (0, 1), got {validation_fraction!r}")
    m = data.images.shape[0]
    n_validation = round(m * validation_fraction)
    if not 1 <= n_validation < m:
        raise ValueError(f"validation_fraction={validation_fraction} of {m} images leaves an empty split")
    order = np.random.default_rng(seed).permutation(m)
    validation, train = sorted(order[:n_validation].tolist()), sorted(order[n_validation:].tolist())
    return data.subset_images(train, "train"), data.subset_images(validation, "validation")


def easy_vqa_splits(*, validation_fraction: float = 0.1, seed: int = 0) -> VQASplits:
    """The package's train set cut **by image** into train / validation (seeded), and its test set.

    Default: 3,600 training and 400 validation images (every question about an image stays with it).
    """
    train, validation = _carve_by_image(load_easy_vqa("train"), validation_fraction, seed)
    test = load_easy_vqa("test")
    return VQASplits(train=train, validation=validation, test=VQAData(**{**test.__dict__, "name": "test"}))


def load_easy_vqa_sample(*, validation_fraction: float = 0.25, test_fraction: float = 0.25,
                         seed: int = 0) -> VQASplits:
    """The sample shipped with probattn (40 easy-VQA training images, 10 questions each at most, and the 13
    answers), split by image into train / validation / test (default 20 / 10 / 10 images)."""
    data = read_vqa_folder(SAMPLE_DIR, _read_answers(SAMPLE_DIR / "answers.txt"), name="easy_vqa_sample")
    rest, test = _carve_by_image(data, test_fraction, seed)
    train, validation = _carve_by_image(rest, validation_fraction / (1.0 - test_fraction), seed + 1)
    return VQASplits(train=train, validation=validation, test=VQAData(**{**test.__dict__, "name": "test"}))
