"""A user's own labelled text file: CSV, JSONL (one JSON object per line) or Parquet.

Every problem with the file is a ``ValueError`` that names the file, the column and the rows involved:
a missing column (the existing columns are listed), an empty file, a single class, missing or non-text
values, labels that are neither integers nor strings, rows pandas cannot parse, or a JSONL line that is not
a JSON object or nests too deeply (named by its line number).

Parquet files are read with pyarrow (>= 14.0.1) and refused when a column carries an Arrow extension type,
before pyarrow could run that type's deserializer (see :func:`_read_parquet`).

Only an empty CSV cell (or a JSON ``null``) is missing: a text or label written ``None``, ``NA``, ``NaN``,
``null`` ... is that string, not pandas' missing value.
"""

from __future__ import annotations

import base64
import json
import numbers
import re
from collections.abc import Sequence
from pathlib import Path

from probattn.data.dataset import TextClassificationData

__all__ = ["load_file", "read_table"]

_READERS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
            ".parquet": "parquet", ".pq": "parquet"}


def _pandas():
    try:
        import pandas as pd
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("reading data files needs pandas: pip install pandas", name="pandas") from exc
    return pd


def read_table(path: str | Path):
    """Read ``path`` into a pandas DataFrame, chosen by its suffix (.csv, .tsv, .jsonl/.json, .parquet)."""
    pd = _pandas()
    path = Path(path)
    kind = _READERS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"--data {path}: unknown file type {path.suffix!r}; use .csv, .tsv, .jsonl or .parquet")
    if not path.is_file():
        raise FileNotFoundError(f"--data {path}: no such file")
    if path.stat().st_size == 0:
        raise ValueError(f"--data {path}: the file is empty")
    try:
        if kind in ("csv", "tsv"):
            frame = pd.read_csv(path, sep="," if kind == "csv" else "\t", keep_default_na=False, na_values=[""])
        elif kind == "jsonl":
            frame = pd.DataFrame.from_records(_jsonl_records(path))
        else:
            frame = _read_parquet(path)
    except pd.errors.EmptyDataError as exc:
        raise ValueError(f"--data {path}: the file is empty (no header, no rows)") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"--data {path}: could not read it as {kind.upper()}: {first_line}") from exc
    except ModuleNotFoundError as exc:
        if exc.name == "pyarrow":  # _read_parquet's own message (pyarrow missing or too old)
            raise
        raise ModuleNotFoundError(f"reading {path.name} needs pyarrow: pip install 'pyarrow>=14.0.1'",
                                  name="pyarrow") from exc
    except ImportError as exc:  # parquet without pyarrow
        raise ModuleNotFoundError(f"reading {path.name} needs pyarrow: pip install 'pyarrow>=14.0.1'",
                                  name="pyarrow") from exc
    if len(frame) == 0:
        raise ValueError(f"--data {path}: the file has no rows (columns: {', '.join(map(str, frame.columns))})")
    return frame


PYARROW_MIN = (14, 0, 1)  # pyarrow 14.0.0 and older unpickle a crafted Parquet column (CVE-2023-47248)
_EXTENSION_KEY = b"ARROW:extension:name"
PARQUET_MAGIC = b"PAR1"


def _base64_cores(needle: bytes) -> list[bytes]:
    """The base64 text that ``needle`` becomes wherever it sits in a base64-encoded string (one per byte offset
    modulo 3, without the characters that depend on the neighbouring bytes)."""
    cores = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + needle)
        tail = 4 if (shift + len(needle)) % 3 else 0
        cores.append(encoded[4 if shift else 0: len(encoded) - tail])
    return cores


def _parquet_footer(path: Path) -> bytes:
    """The raw footer (thrift ``FileMetaData``) of a Parquet file, read without pyarrow."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if size < 12 or handle.read(4) != PARQUET_MAGIC:
            raise ValueError("not a Parquet file (no PAR1 magic at the start)")
        handle.seek(size - 8)
        tail = handle.read(8)
        length = int.from_bytes(tail[:4], "little")
        if tail[4:] != PARQUET_MAGIC:
            raise ValueError("the Parquet footer is encrypted or the file is truncated (no PAR1 magic at the end)")
        if not 0 < length <= size - 12:
            raise ValueError(f"the Parquet footer length {length} does not fit in the file of {size} bytes "
                             "(truncated or damaged)")
        handle.seek(size - 8 - length)
        return handle.read(length)


def _read_parquet(path: Path):
    """A Parquet file as a DataFrame, read with pyarrow, refusing Arrow extension types before pyarrow sees them.

    An extension-typed column is restored by calling the deserializer registered for its name, and pyarrow
    calls it as soon as it opens the file (``pq.ParquetFile``, ``pq.read_metadata``, ``pq.read_table`` all do):
    pyarrow <= 14.0.0 registers one that unpickles the column's payload (CVE-2023-47248), and any other
    package may register its own. Extension types are named only by the ``ARROW:extension:name`` key in the
    Arrow schema that pyarrow stores (base64-encoded) in the Parquet footer, so this reads the footer's raw bytes
    first and refuses the file when the key occurs there in any encoding; without the key no deserializer can
    run. Text and label columns never need an extension type. pyarrow >= 14.0.1 is required as well.
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ModuleNotFoundError(f"reading {path.name} needs pyarrow: pip install 'pyarrow>=14.0.1'",
                                  name="pyarrow") from exc
    version = tuple(int(part) for part in re.findall(r"\d+", pa.__version__)[:3])
    if version < PYARROW_MIN:
        raise ModuleNotFoundError(f"reading {path.name} needs pyarrow >= 14.0.1 (pyarrow {pa.__version__} runs code "
                                  "hidden in crafted Parquet files, CVE-2023-47248): pip install 'pyarrow>=14.0.1'",
                                  name="pyarrow")
    footer = _parquet_footer(path)
    if any(needle in footer for needle in (_EXTENSION_KEY, *_base64_cores(_EXTENSION_KEY))):
        raise ValueError(
            "a column carries an Arrow extension type (the file's schema holds ARROW:extension:name); probattn "
            "does not deserialize extension types, whose readers can run code (pyarrow's unpickled, "
            "CVE-2023-47248). Save the text and label columns as plain strings / integers"
        )
    return pq.read_table(path).to_pandas()


def _jsonl_records(path: Path) -> list[dict]:
    """One JSON object per non-blank line; a bad line is a ``ValueError`` naming its (1-based) line number."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                raise ValueError(f"line {number} is not valid JSON ({exc.msg} at column {exc.colno}); fix or "
                                 f"delete that line") from exc
            except RecursionError:
                raise ValueError(f"line {number} nests JSON arrays / objects too deeply to read (a record is one "
                                 f"flat object like {{\"text\": ..., \"label\": ...}}); fix or delete that "
                                 "line") from None
            if not isinstance(record, dict):
                raise ValueError(f"line {number} is a JSON {type(record).__name__}, not an object like "
                                 f"{{\"text\": ..., \"label\": ...}}")
            records.append(record)
    return records


def _rows(mask) -> str:
    rows = [int(i) + 1 for i in mask.to_numpy().nonzero()[0]]  # 1-based data rows (header not counted)
    shown = ", ".join(map(str, rows[:5])) + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")
    return f"row{'s' if len(rows) > 1 else ''} {shown}"


def _text_column(frame, column: str, flag: str, path: Path) -> list[str]:
    values = frame[column]
    missing = values.isna() | values.map(lambda v: isinstance(v, str) and not v.strip())
    if missing.any():
        raise ValueError(f"--data {path}: {flag} {column!r} is empty or missing in {_rows(missing)}; "
                         f"fill or drop those rows")
    not_text = ~values.map(lambda v: isinstance(v, str))
    if not_text.any():
        example = values[not_text].tolist()[0]
        raise ValueError(f"--data {path}: {flag} {column!r} holds non-text values (e.g. {example!r}) in "
                         f"{_rows(not_text)}; is it the right column?")
    return values.tolist()


def _label_values(frame, column: str, path: Path) -> list[str | int]:
    values = frame[column]
    missing = values.isna()
    if missing.any():
        raise ValueError(f"--data {path}: --label-column {column!r} is missing in {_rows(missing)}; "
                         f"fill or drop those rows")

    def kind(v) -> str:
        if isinstance(v, bool | str):
            return "str" if isinstance(v, str) else "int"
        if isinstance(v, numbers.Integral):
            return "int"
        if isinstance(v, numbers.Real) and float(v).is_integer():
            return "int"
        return "bad"

    kinds = values.map(kind)
    bad = kinds == "bad"
    if bad.any():
        example = values[bad].tolist()[0]
        raise ValueError(f"--data {path}: --label-column {column!r} must hold class labels (integers or "
                         f"strings) but has {type(example).__name__} values such as {example!r} in {_rows(bad)}")
    if kinds.nunique() > 1:
        raise ValueError(f"--data {path}: --label-column {column!r} mixes numbers and strings; use one kind")
    return [int(v) if k == "int" else v for v, k in zip(values.tolist(), kinds.tolist())]


def load_file(
    path: str | Path,
    *,
    text_column: str,
    label_column: str,
    text_pair_column: str | None = None,
    label_names: Sequence[str] | None = None,
    group_column: str | None = None,
) -> TextClassificationData:
    """Load a labelled text file.

    ``group_column``: rows with one value of it form a group that splits keep together (``groups``).

    Labels may be integers or strings; they are mapped to ids ``0..C-1`` in sorted order and
    ``label_names[i]`` is ``str`` of the ``i``-th value. Pass ``label_names`` (e.g. the training set's) to map
    labels onto an existing set of names instead (an evaluation file); unknown labels are an error then.
    """
    path = Path(path)
    frame = read_table(path)
    columns = [str(c) for c in frame.columns]
    for flag, column in (("--text-column", text_column), ("--label-column", label_column),
                         ("--text-pair-column", text_pair_column), ("--group-column", group_column)):
        if column is not None and column not in columns:
            raise ValueError(f"--data {path}: {flag} {column!r} is not a column of the file; "
                             f"its columns are: {', '.join(columns)}")
    texts = _text_column(frame, text_column, "--text-column", path)
    pairs = None if text_pair_column is None else _text_column(frame, text_pair_column, "--text-pair-column", path)
    raw = _label_values(frame, label_column, path)
    if label_names is None:
        distinct = sorted(set(raw))
        if len(distinct) < 2:
            raise ValueError(f"--data {path}: --label-column {label_column!r} has a single class "
                             f"({distinct[0]!r}); classification needs at least two")
        names = tuple(str(v) for v in distinct)
    else:
        names = tuple(label_names)
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({str(v) for v in raw} - set(index))
    if unknown:
        raise ValueError(f"--data {path}: labels {unknown[:5]} are not among the training labels {list(names)}")
    groups = None if group_column is None else [str(v) for v in frame[group_column].tolist()]
    return TextClassificationData(texts=texts, labels=[index[str(v)] for v in raw], label_names=names,
                                  text_pairs=pairs, groups=groups, name=path.stem)
