import pytest
import torch

from probattn.cli import main
from probattn.experiments.gmm import attention_step, em_step, make_clusters, run_gmm


def test_doubly_attention_step_equals_plain_em_step_on_random_means():
    points, _ = make_clusters((40, 10, 5), seed=3)
    for trial in range(5):
        means = 2 * torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(trial))
        got, _ = attention_step(means, points, sigma2=0.7, normalization="doubly")
        torch.testing.assert_close(got, em_step(means, points, sigma2=0.7), rtol=0, atol=1e-10)


def test_single_component_em_and_doubly_return_the_data_mean():
    points = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 3.0]], dtype=torch.float64)
    mean = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(em_step(torch.tensor([[5.0, -1.0]], dtype=torch.float64), points, sigma2=1.0), mean)
    with pytest.warns(UserWarning, match="single query"):
        got, weights = attention_step(torch.tensor([[5.0, -1.0]], dtype=torch.float64), points, sigma2=1.0,
                                      normalization="doubly")
    torch.testing.assert_close(got, mean)
    torch.testing.assert_close(weights, torch.full((1, 3), 1 / 3, dtype=torch.float64))


def test_softmax_explains_away_small_clusters_and_doubly_does_not():
    result = run_gmm(iterations=10)
    assert result.em_max_abs_error < 1e-6
    softmax, doubly = result.per_normalization["softmax"], result.per_normalization["doubly"]
    assert softmax["explained_away"]["1"]["0.01"] > 0.5 and softmax["explained_away"]["2"]["0.01"] > 0.5
    assert softmax["clusters_reached"] == [0]
    # the guarantee: every key gets at least 1/Nk of the mass, i.e. normalized mass >= 1/Nq = 1/3
    assert doubly["min_mass"] >= 1 / 3 - 1e-12
    assert all(v["0.1"] == 0.0 for v in doubly["explained_away"].values())


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="sizes"):
        make_clusters((10, 0, 5))
    with pytest.raises(ValueError, match="iterations"):
        run_gmm(iterations=0)


def test_cli_writes_results(tmp_path):
    pytest.importorskip("matplotlib")
    assert main(["experiment", "gmm", "--iterations", "3", "--output", str(tmp_path)]) == 0
    assert {"results.md", "results.json", "gmm.png"} <= {p.name for p in tmp_path.iterdir()}
    assert "max abs error" in (tmp_path / "results.md").read_text()


def test_doubly_step_is_em_even_when_the_distances_are_huge():
    # sigma2 = 1e-3 puts -|mu|^2/(2 sigma2)-style terms far below -1e4, where an additive mask means "masked":
    # the Gaussian scores must not travel through attn_mask
    points, _ = make_clusters(seed=1)
    means = points[[0, 310, 370]]
    new_means, _ = attention_step(means, points, sigma2=1e-3, normalization="doubly")
    assert torch.allclose(new_means, em_step(means, points, sigma2=1e-3), atol=1e-9)


def test_cli_never_writes_into_a_foreign_folder_or_through_a_link(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    target = tmp_path / "elsewhere.md"
    target.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.md").symlink_to(target)
    assert main(["experiment", "gmm", "--iterations", "3", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--output {out} holds 1 file(s) that probattn did not write (results.md)" in err and "--overwrite" in err
    assert main(["experiment", "gmm", "--iterations", "3", "--output", str(out), "--overwrite"]) == 2
    assert "results.md would be written but is not probattn's" in capsys.readouterr().err
    assert target.read_text() == "keep me" and (out / "results.md").is_symlink()
