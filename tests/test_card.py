"""The dataset card every annotation run writes (OUT/README.md): a Hugging Face dataset card whose header the Hub's
own parser reads, whose `configs` point at files that exist, and whose figures are stats.json's, also after a
resume that kept shards."""

from __future__ import annotations

import glob
import json
import subprocess
import sys
from pathlib import Path

import pytest

from annotate.synthetic import WorldParams
from pipelines.card import size_category
from pipelines.shards import shard_paths
from tests.annotate_helpers import write_manifest

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "annotate" / "demo.yaml"
FAST = ["synth.n=0", "num_frames=16", "progress=false", "rows_per_shard=2", "batch_size=2", "report_samples=1",
        "executor=local"]
PARAMS = WorldParams(width=128, height=128, frames=30)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_manifest(tmp_path_factory.mktemp("clips"), 5, 5, PARAMS)


def annotate(manifest: Path, out: Path, *extra: str) -> None:
    r = subprocess.run([sys.executable, "-m", "pipelines.annotate", "--config", str(CONFIG), f"input={manifest}",
                        f"out={out}", *FAST, *extra], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]


def test_the_card_parses_points_at_the_shards_and_says_what_stats_says(manifest, tmp_path):
    from huggingface_hub import DatasetCard

    out = tmp_path / "run"
    annotate(manifest, out, "card.license=cc-by-4.0", "card.source=synthetic clips of the demo world")
    stats = json.loads((out / "stats.json").read_text())
    card = DatasetCard.load(out / "README.md")  # the Hub's own parser
    data = card.data.to_dict()
    assert data["license"] == "cc-by-4.0" and "license_name" not in data
    assert data["task_categories"] == ["video-text-to-text"]
    assert data["size_categories"] == [size_category(stats["written"])] == ["n<1K"]
    files = data["configs"][0]["data_files"][0]["path"]
    assert sorted(glob.glob(str(out / files))) == sorted(str(p) for p in (out / "shards").glob("*.tar"))
    text = card.text
    assert f"{stats['written']} samples from {stats['input_rows']} input rows ({stats['rejected']} rejected)" in text
    hist = stats["confidence_histogram"]
    assert sum(hist["objects"]) + hist["unscored"] == sum(
        int(k) * v for k, v in stats["objects_per_sample"]["counts"].items())
    for i, n in enumerate(hist["objects"]):
        assert f"| {hist['bins'][i]:.1f}-{hist['bins'][i + 1]:.1f} | {n} |" in text
    assert "synthetic clips of the demo world" in text and "not set" not in text
    assert "objects are only those the manifest gave boxes for" in text  # the given grounder's limit

    # A resume keeps two shards and redoes one: the same card figures, from the kept shards' index and the new one.
    for p in shard_paths(out, 1).values():
        p.unlink()
    annotate(manifest, out, "card.license=cc-by-4.0", "card.source=synthetic clips of the demo world")
    again = json.loads((out / "stats.json").read_text())
    assert again["shards_resumed"] == 2
    for key in ("objects_per_sample", "confidence_histogram", "written"):
        assert again[key] == stats[key], key


def test_a_card_without_a_licence_says_so(manifest, tmp_path):
    annotate(manifest, tmp_path / "run")
    text = (tmp_path / "run" / "README.md").read_text()
    assert "license: other" in text and "license_name: not-set" in text
    assert "The licence of these annotations is **not set**" in text
    assert "## Source" not in text  # optional fields stay out
