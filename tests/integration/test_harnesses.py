"""mteb and CLIP_benchmark, as installed from PyPI, evaluate a polymodal checkpoint through
polymodal's integrations on local data in their own formats (no hub), and their numbers agree
with `polymodal eval` on the same rows; CLIP_benchmark's layout is written, read back and
ingested."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from polymodal.checkpoint import load_model
from polymodal.cli import main
from polymodal.data.format import DatasetError, read_manifest
from polymodal.data.ingest import ingest
from polymodal.evaluation.evaluate import decoded_batches, evaluate
from polymodal.evaluation.run import evaluate_checkpoint

CHECKPOINT = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoint-v1"  # on digits
TEMPLATES = ["a handwritten digit {}", "the number {} written by hand", "a scan of a {}"]


@pytest.fixture(scope="module")
def ours(digits_dataset) -> dict[str, float]:
    """polymodal eval's val metrics of the checkpoint, and its zero-shot accuracy with the
    first template alone (mteb's zero-shot takes one text per class)."""
    metrics = evaluate_checkpoint(str(CHECKPOINT), str(digits_dataset))
    model, meta = load_model(CHECKPOINT)
    cfg, prep = meta.run_config(), meta.prep
    one = evaluate(
        model,
        decoded_batches(str(digits_dataset), "val", prep),
        prep,
        cfg,
        losses=False,
        label_names=meta.label_names,
        templates=TEMPLATES[:1],
    )
    return {**metrics, "zero_shot_one_template": one["val/zero_shot_accuracy"]}


def test_mteb_evaluates_built_tasks_as_polymodal_eval_does(digits_dataset, ours, tmp_path, capsys):
    specs = "retrieval:text->image,retrieval:image->text,zeroshot:image,probe:image"
    out = tmp_path / "mteb"
    argv = ["eval", str(CHECKPOINT), str(digits_dataset), "--mteb", specs]
    assert main([*argv, "--mteb-output", str(out), "--out", str(tmp_path / "r.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "r.json").read_text())
    # mteb's own result files, one per task, in its cache layout
    files = out / "results" / "polymodal__checkpoint-v1" / "step8"
    results = {p.stem: json.loads(p.read_text()) for p in files.glob("digits-*.json")}
    assert sorted(results) == sorted(printed) and (files / "model_meta.json").is_file()
    for name, result in results.items():
        scores = result["scores"]["val"][0]
        assert scores["main_score"] == pytest.approx(printed[name]["main_score"], abs=1e-6)
    for a, b in (("text", "image"), ("image", "text")):
        scores = results[f"digits-retrieval-{a}2{b}"]["scores"]["val"][0]
        assert scores["main_score"] == scores["ndcg_at_10"]
        for k in (1, 5, 10):
            assert scores[f"recall_at_{k}"] == pytest.approx(
                ours[f"val/recall@{k}/{a}->{b}"], abs=1e-5
            ), (a, b, k)
    zero_shot = results["digits-zeroshot-image"]["scores"]["val"][0]["accuracy"]
    assert zero_shot == pytest.approx(ours["zero_shot_one_template"], abs=1e-5)
    # mteb's linear probe (8 train rows per class, 10 draws) on the image embeddings of a
    # checkpoint of 8 steps: above chance (0.1); a trained one's is in test_train_digits
    probe = results["digits-probe-image"]["scores"]["val"][0]
    assert len(probe["scores_per_experiment"]) == 10 and probe["accuracy"] > 0.1


def test_mteb_refuses_unknown_specs_by_name(digits_dataset):
    from polymodal.integrations.mteb import dataset_task

    with pytest.raises(ValueError, match="--mteb ranking:text: kinds are retrieval"):
        dataset_task("ranking:text", str(digits_dataset), "val", [])
    with pytest.raises(ValueError, match="name modalities among text, image, audio"):
        dataset_task("retrieval:text->video", str(digits_dataset), "val", [])


def test_clip_benchmark_layout_round_trip_and_scores(digits_dataset, ours, tmp_path, capsys):
    cls, ret = tmp_path / "cb" / "digits", tmp_path / "cb" / "digits-ret"
    export = ["data", "export", str(digits_dataset)]
    assert main([*export, str(cls), "--format", "clip_benchmark"]) == 0
    assert (
        main([*export, str(ret), "--format", "clip_benchmark", "--task", "zeroshot_retrieval"]) == 0
    )
    capsys.readouterr()
    # Its layout, as clip_benchmark reads it
    names = read_manifest(digits_dataset).label_names
    assert (cls / "classnames.txt").read_text().splitlines() == names
    templates = (cls / "zeroshot_classification_templates.txt").read_text().splitlines()
    assert templates == [t.replace("{}", "{c}") for t in TEMPLATES]
    assert (cls / "test" / "nshards.txt").read_text() == "1"
    with tarfile.open(cls / "test" / "0.tar") as tar:
        members = tar.getnames()
        assert members[:2] == ["s0000000.png", "s0000000.cls"]
        assert 0 <= int(tar.extractfile("s0000000.cls").read()) < 10
    assert (ret / "dataset_type.txt").read_text() == "retrieval"
    rows = read_manifest(digits_dataset).rows("val")
    assert len(members) == 2 * rows

    # polymodal eval on the layout: clip_benchmark's result JSON and its numbers
    assert main(["eval", str(CHECKPOINT), "--clip-benchmark", str(cls)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dataset"] == "wds/digits" and result["task"] == "zeroshot_classification"
    # The same images, templates and classifier as polymodal eval's zero-shot accuracy
    assert result["metrics"]["acc1"] == pytest.approx(ours["val/zero_shot_accuracy"], abs=1e-6)
    assert result["metrics"]["acc1"] <= result["metrics"]["acc5"] <= 1.0
    assert main(["eval", str(CHECKPOINT), "--clip-benchmark", str(ret)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "zeroshot_retrieval"
    # digits' images are distinct: a caption finding its image is polymodal's text->image hit
    for k in (1, 5, 10):
        got = result["metrics"][f"image_retrieval_recall@{k}"]
        assert got == pytest.approx(ours[f"val/recall@{k}/text->image"], abs=1e-6)

    # ... and ingested as a source, as any other
    report = ingest(str(cls), tmp_path / "back", progress=False)
    manifest = report.manifest
    assert (
        manifest.label_names == names and sum(s["rows"] for s in manifest.splits.values()) == rows
    )
    assert manifest.extra["caption_templates"] == TEMPLATES
    report = ingest(str(ret), tmp_path / "back-ret", progress=False)
    assert report.rows_written == rows and "text" in report.manifest.modalities


def test_clip_benchmark_layout_mistakes_are_named(digits_dataset, tmp_path, capsys):
    from polymodal.data.clip_benchmark import read_layout

    out = tmp_path / "cb"
    export = ["data", "export", str(digits_dataset), str(out), "--format", "clip_benchmark"]
    assert main(export) == 0
    (out / "zeroshot_classification_templates.txt").write_text("a photo\n")
    with pytest.raises(DatasetError, match="template 'a photo' has no {c}"):
        read_layout(str(out))
    (out / "zeroshot_classification_templates.txt").unlink()
    with pytest.raises(DatasetError, match="no zeroshot_classification_templates.txt"):
        read_layout(str(out))
    (out / "zeroshot_classification_templates.txt").write_text("a {c}\n")
    layout = read_layout(str(out))
    with pytest.raises(DatasetError, match="no such split in .* \\(splits: test\\)"):
        list(layout.samples("train"))
    # a .cls outside the classes: named with its tar and key
    tar_path = out / "test" / "0.tar"
    with tarfile.open(tar_path) as tar:
        first = [(m, tar.extractfile(m).read()) for m in tar.getmembers()[:2]]
    with tarfile.open(tar_path, "w") as tar:
        for member, data in first:
            data = b"12" if member.name.endswith(".cls") else data
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    with pytest.raises(DatasetError, match="0.tar: sample 's0000000': .cls '12'"):
        list(layout.samples("test"))
    # writing into a non-empty directory is refused before anything is written
    before = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    assert main(export) != 0
    assert f"OUT {out}: not empty" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
