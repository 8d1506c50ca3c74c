"""Rebuild ``src/probattn/data/samples/easy_vqa/`` from the installed ``easy-vqa`` 1.0 package.

40 training images drawn with seed 0 (their PNG files copied byte for byte), every question about them, and the
13 answers. Run: ``PYTHONPATH=src python tests/data/make_easy_vqa_sample.py``.
"""

from __future__ import annotations

import json
import random
import shutil

from probattn.data.vqa import SAMPLE_DIR, _data_dir


def main() -> None:
    source = _data_dir()
    rows = json.loads((source / "train" / "questions.json").read_text(encoding="utf-8"))
    ids = sorted(random.Random(0).sample(sorted({r[2] for r in rows}), 40))
    keep = set(ids)
    (SAMPLE_DIR / "images").mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        shutil.copyfile(source / "train" / "images" / f"{image_id}.png", SAMPLE_DIR / "images" / f"{image_id}.png")
    chosen = [r for r in rows if r[2] in keep]
    (SAMPLE_DIR / "questions.json").write_text("[\n" + ",\n".join(json.dumps(r) for r in chosen) + "\n]\n", encoding="utf-8")
    shutil.copyfile(source / "answers.txt", SAMPLE_DIR / "answers.txt")
    print(f"{len(ids)} images, {len(chosen)} questions -> {SAMPLE_DIR}")


if __name__ == "__main__":
    main()
