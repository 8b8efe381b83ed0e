"""benchmarks/lowdiff_pilot.py on a tiny run: every model x recipe scored and timed, the page generated from the JSON."""
import json

from benchmarks import lowdiff_pilot


def test_the_pilot_scores_every_recipe_and_writes_its_page(digits_npz, tmp_path, one_thread):
    page = tmp_path / "pilot.md"
    r = lowdiff_pilot.main(["--data", digits_npz, "--iterations", "2", "--batch", "8", "--samples", "20",
                            "--feature-steps", "5", "--threads", "1", "--widths", "8,16,16", "--timed-batches", "1",
                            "--latency-repeats", "1", "--caps", "1,5", "--write-docs", str(page)])
    models = [row["model"] for row in r["rows"]]
    assert models.count("single 16x16") == 1 and len(r["rows"]) == 1 + 2 * len(lowdiff_pilot.RECIPES)
    base = r["rows"][0]
    assert base["nfe"] == 15 and base["fre_nfe"] == 15 and base["iterations"] == 2
    cascade = next(row for row in r["rows"] if row["recipe"] == "heun 8 at 8x8, 4 at 16x16 from 1")
    assert cascade["nfe"] == 15 + 7 and cascade["fre_nfe"] == 15 / 4 + 7 and cascade["iterations"] == 3
    assert all(row["fid"] > 0 and row["images_per_s_b256"] > 0 and row["p50_ms_b1"] > 0 for row in r["rows"])
    text = page.read_text()
    assert "not leaderboard figures" in text and text.count("| cascade 8->16, trained on sigma <= 5 |") == 6
    assert json.loads(page.with_suffix(".json").read_text())["rows"] == r["rows"]
