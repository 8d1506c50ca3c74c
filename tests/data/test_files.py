"""User files: CSV / JSONL / Parquet, label mapping, and one specific error per malformed case."""

from __future__ import annotations

import pandas as pd
import pytest

from probattn.data import load_file, read_table


def write_csv(tmp_path, text: str, name: str = "d.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_string_labels_map_to_sorted_ids(tmp_path):
    path = write_csv(tmp_path, "t,y\ngood film,pos\nbad film,neg\nfine,pos\n")
    data = load_file(path, text_column="t", label_column="y")
    assert data.label_names == ("neg", "pos")
    assert data.labels == [1, 0, 1]
    assert data.texts == ["good film", "bad film", "fine"]


def test_integer_labels_and_pairs_jsonl_and_parquet(tmp_path):
    frame = pd.DataFrame({"a": ["x y", "z", "w"], "b": ["p", "q", "r"], "label": [2, 1, 2]})
    jsonl = tmp_path / "d.jsonl"
    frame.to_json(jsonl, orient="records", lines=True)
    parquet = tmp_path / "d.parquet"
    frame.to_parquet(parquet)
    for path in (jsonl, parquet):
        data = load_file(path, text_column="a", label_column="label", text_pair_column="b")
        assert data.label_names == ("1", "2") and data.labels == [1, 0, 1]
        assert data.text_pairs == ["p", "q", "r"]


def test_evaluation_file_uses_given_label_names(tmp_path):
    path = write_csv(tmp_path, "t,y\na,pos\nb,neg\n")
    assert load_file(path, text_column="t", label_column="y", label_names=("neg", "pos")).labels == [1, 0]
    with pytest.raises(ValueError, match=r"labels \['neg'\] are not among the training labels \['pos', 'x'\]"):
        load_file(path, text_column="t", label_column="y", label_names=("pos", "x"))


def test_missing_column_names_the_existing_ones(tmp_path):
    path = write_csv(tmp_path, "text,label\na,1\nb,0\n")
    with pytest.raises(ValueError, match=r"--label-column 'y' is not a column.*its columns are: text, label"):
        load_file(path, text_column="text", label_column="y")


def test_empty_file(tmp_path):
    with pytest.raises(ValueError, match="the file is empty"):
        load_file(write_csv(tmp_path, ""), text_column="t", label_column="y")
    with pytest.raises(ValueError, match="the file is empty"):
        load_file(write_csv(tmp_path, "\n\n", "blank.csv"), text_column="t", label_column="y")


def test_header_without_rows(tmp_path):
    with pytest.raises(ValueError, match=r"no rows \(columns: t, y\)"):
        load_file(write_csv(tmp_path, "t,y\n"), text_column="t", label_column="y")


def test_single_class(tmp_path):
    with pytest.raises(ValueError, match=r"single class \('pos'\)"):
        load_file(write_csv(tmp_path, "t,y\na,pos\nb,pos\n"), text_column="t", label_column="y")


def test_wrong_label_type(tmp_path):
    with pytest.raises(ValueError, match=r"must hold class labels.*float values such as 0\.5 in row 2"):
        load_file(write_csv(tmp_path, "t,y\na,1\nb,0.5\n"), text_column="t", label_column="y")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"t": "a", "y": 1}\n{"t": "b", "y": "pos"}\n')
    with pytest.raises(ValueError, match="mixes numbers and strings"):
        load_file(mixed, text_column="t", label_column="y")


def test_missing_values_name_the_rows(tmp_path):
    with pytest.raises(ValueError, match=r"--label-column 'y' is missing in row 2"):
        load_file(write_csv(tmp_path, "t,y\na,1\nb,\nc,0\n"), text_column="t", label_column="y")
    with pytest.raises(ValueError, match=r"--text-column 't' is empty or missing in rows 1, 3"):
        load_file(write_csv(tmp_path, 't,y\n"",1\nb,0\n,1\n', "e.csv"), text_column="t", label_column="y")


def test_non_text_column(tmp_path):
    path = tmp_path / "n.jsonl"
    path.write_text('{"t": 3, "y": 1}\n{"t": "b", "y": 0}\n')
    with pytest.raises(ValueError, match=r"holds non-text values \(e\.g\. 3\) in row 1"):
        load_file(path, text_column="t", label_column="y")


def test_unreadable_rows(tmp_path):
    with pytest.raises(ValueError, match="could not read it as CSV"):
        load_file(write_csv(tmp_path, "t,y\na,1\nb,0,extra,fields\n"), text_column="t", label_column="y")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"t": "a", "y": 1}\nnot json\n')
    with pytest.raises(ValueError, match="could not read it as JSONL"):
        load_file(bad, text_column="t", label_column="y")


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"unknown file type '\.xlsx'"):
        read_table(tmp_path / "d.xlsx")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_table(tmp_path / "nope.csv")


def test_none_and_na_are_strings_but_empty_cells_are_missing(tmp_path):
    data = load_file(write_csv(tmp_path, "t,y\nNone,NA\nNA,None\nnull,NA\n"), text_column="t", label_column="y")
    assert data.texts == ["None", "NA", "null"] and data.label_names == ("NA", "None")
    assert data.labels == [0, 1, 0]
    jsonl = tmp_path / "na.jsonl"
    jsonl.write_text('{"t": "NA", "y": "None"}\n{"t": "None", "y": "NaN"}\n')
    assert load_file(jsonl, text_column="t", label_column="y").label_names == ("NaN", "None")
    with pytest.raises(ValueError, match=r"--label-column 'y' is missing in row 2"):
        load_file(write_csv(tmp_path, "t,y\na,NA\nb,\nc,None\n", "e.csv"), text_column="t", label_column="y")
    with pytest.raises(ValueError, match=r"--text-column 't' is empty or missing in row 2"):
        load_file(write_csv(tmp_path, "t,y\na,NA\n,x\n", "f.csv"), text_column="t", label_column="y")


def test_bad_jsonl_line_is_named_by_number(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"t": "a", "y": 1}\n\n{"t": "b", "y": 0}\n{"t": "c", "y": 1\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl: could not read it as JSONL: line 4 is not valid JSON "
                                         r"\(Expecting ',' delimiter at column 18\); fix or delete that line"):
        load_file(bad, text_column="t", label_column="y")
    bad.write_text('{"t": "a", "y": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"line 2 is a JSON list, not an object"):
        load_file(bad, text_column="t", label_column="y")


def test_a_group_column_keeps_its_values(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label,speaker\na,x,ann\nb,y,bob\nc,x,ann\n")
    data = load_file(path, text_column="text", label_column="label", group_column="speaker")
    assert data.groups == ["ann", "bob", "ann"]
    with pytest.raises(ValueError, match="--group-column 'who' is not a column"):
        load_file(path, text_column="text", label_column="label", group_column="who")


def test_parquet_with_an_extension_type_is_refused_before_its_deserializer_runs(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    calls = []

    class Marked(pa.ExtensionType):  # benign stand-in for pyarrow <= 14.0.0's pickled PyExtensionType
        def __init__(self):
            super().__init__(pa.string(), "probattn.test.marked")

        def __arrow_ext_serialize__(self):
            return b"benign payload"

        @classmethod
        def __arrow_ext_deserialize__(cls, storage_type, serialized):
            calls.append(serialized)
            return cls()

    pa.register_extension_type(Marked())
    try:
        column = pa.ExtensionArray.from_storage(Marked(), pa.array(["good film", "bad film", "fine"]))
        path = tmp_path / "ext.parquet"
        pq.write_table(pa.table({"text": column, "label": [1, 0, 1]}), path)
        calls.clear()
        with pytest.raises(ValueError, match=r"ext\.parquet: .*Arrow extension type .*ARROW:extension:name"):
            load_file(path, text_column="text", label_column="label")
        assert calls == []  # refused from the raw footer: pyarrow never opened the file
    finally:
        pa.unregister_extension_type("probattn.test.marked")
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"text": ["good film", "bad film"], "label": [1, 0]}), plain)
    assert load_file(plain, text_column="text", label_column="label").labels == [1, 0]


def test_damaged_parquet_is_one_clear_line(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["a", "b"], "label": [0, 1]}).to_parquet(path)
    data = path.read_bytes()
    path.write_bytes(data[:-20])
    with pytest.raises(ValueError, match=r"d\.parquet: could not read it as PARQUET: .*truncated"):
        read_table(path)


def test_old_pyarrow_is_refused(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    path = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["a", "b"], "label": [0, 1]}).to_parquet(path)
    monkeypatch.setattr(pa, "__version__", "14.0.0")
    with pytest.raises(ModuleNotFoundError, match=r"pyarrow >= 14\.0\.1 .*CVE-2023-47248"):
        read_table(path)


def test_deeply_nested_jsonl_names_the_line(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text('{"text": "a", "label": 1}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ValueError, match=r"deep\.jsonl: .*line 2 nests JSON arrays / objects too deeply"):
        load_file(path, text_column="text", label_column="label")


def test_the_data_extra_requires_a_fixed_pyarrow():
    from pathlib import Path

    import tomllib

    extras = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert "pyarrow>=14.0.1" in extras["project"]["optional-dependencies"]["data"]
