"""WordNet noun graph: the shipped sample always; the full Debian database when wordnet-base is installed."""

from __future__ import annotations

import pytest
import torch

from probattn.data.wordnet import (
    DEFAULT_PATH,
    LEXNAMES,
    SAMPLE_PATH,
    gloss_features,
    load_wordnet_nouns,
    node_split,
)


def test_sample_parses_into_a_hypernym_graph():
    g = load_wordnet_nouns(SAMPLE_PATH)
    assert g.num_nodes == 203 and g.edge_index.shape == (2, 209)
    assert len(LEXNAMES) == 26 and LEXNAMES[0] == "noun.Tops" and LEXNAMES[-1] == "noun.time"
    dog = g.words.index("dog") if "dog" in g.words else None
    entity = g.words.index("entity")
    assert g.labels[entity] == LEXNAMES.index("noun.Tops")
    assert g.glosses[entity].startswith("that which is perceived or known")
    src = g.edge_index[0]
    assert not (src == entity).any()  # the root has no hypernym
    assert (torch.bincount(src, minlength=g.num_nodes)[torch.arange(g.num_nodes) != entity] >= 1).all()
    assert dog is None or g.labels[dog] == LEXNAMES.index("noun.animal")


def test_folder_path_env_variable_and_missing_file(tmp_path, monkeypatch):
    (tmp_path / "data.noun").write_text(SAMPLE_PATH.read_text())
    assert load_wordnet_nouns(tmp_path).num_nodes == 203
    monkeypatch.setenv("PROBATTN_WORDNET", str(tmp_path))
    assert load_wordnet_nouns().num_nodes == 203
    with pytest.raises(FileNotFoundError, match="install the Debian package wordnet-base"):
        load_wordnet_nouns(tmp_path / "missing")
    bad = tmp_path / "bad.noun"
    bad.write_text("00001740 03 n zz entity\n")
    with pytest.raises(ValueError, match=r"bad\.noun:1: not a WordNet data\.noun line"):
        load_wordnet_nouns(bad)


def test_gloss_features_and_split():
    g = load_wordnet_nouns(SAMPLE_PATH)
    x = gloss_features(g.glosses, dim=16)
    assert x.shape == (203, 16) and x.dtype == torch.float32
    torch.testing.assert_close(x.norm(dim=1), torch.full((203,), 4.0))
    split = node_split(g.num_nodes, seed=0)
    parts = torch.cat(list(split.values()))
    assert torch.equal(parts.sort().values, torch.arange(203))
    assert [len(p) for p in split.values()] == [122, 41, 40]
    assert all(torch.equal(a, b) for a, b in zip(split.values(), node_split(203, seed=0).values()))
    with pytest.raises(ValueError, match="fractions must be three"):
        node_split(10, fractions=(0.5, 0.6, 0.1))
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        gloss_features(g.glosses, dim=0)


@pytest.mark.skipif(not DEFAULT_PATH.is_file(),
                    reason="full WordNet needs the Debian package wordnet-base (apt-get install wordnet-base)")
def test_full_wordnet_counts():
    g = load_wordnet_nouns()
    assert g.num_nodes == 82_115 and g.edge_index.shape == (2, 84_427)
    counts = torch.bincount(g.labels, minlength=26)
    assert counts[LEXNAMES.index("noun.artifact")] == 11_587 and counts[LEXNAMES.index("noun.person")] == 11_087
    assert (counts > 0).all()
