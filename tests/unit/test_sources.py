"""Several datasets in one run (data.sources): the config's rules, the mixture an epoch reads
(weights as upsampling factors, a function of seed and epoch, one source unchanged), and the
checks that the sources bind every modality and agree on labels."""

from __future__ import annotations

from collections import Counter

import pytest

from polymodal.config import ConfigError, load_config
from polymodal.data.dataset import DataSource, mixed_manifest
from polymodal.data.format import DatasetError, Manifest, read_manifest
from polymodal.data.order import (
    batch_order,
    epoch_plan,
    mixture,
    mixture_rows,
    resume_plan,
    rows_of,
    source_plans,
)
from polymodal.train.prepare import check_batches, check_modalities
from polymodal.train.stats import EpochStats


def _pieces(name: str, n: int, rows: int = 100) -> list[dict]:
    return [{"uri": f"{name}/{i}", "group": 0, "rows": rows} for i in range(n)]


A, B = _pieces("a", 10), _pieces("b", 4, rows=50)


def test_one_source_of_weight_one_reads_its_pieces_as_before():
    read = mixture([A], [1.0], seed=0, epoch=3)
    assert [{k: v for k, v in p.items() if k != "source"} for p in read] == A
    assert {p["source"] for p in read} == {0}
    # The plan over them is the plan a single dataset always had: old checkpoints resume.
    strip = [
        [{k: v for k, v in p.items() if k != "source"} for p in r]
        for r in epoch_plan(read, 0, 3, 2)
    ]
    assert strip == epoch_plan(A, 0, 3, 2)


def test_weights_are_upsampling_factors():
    read = mixture([A, B], [0.5, 2.0], seed=0, epoch=1)
    by_source = Counter(p["source"] for p in read)
    assert by_source == {0: 5, 1: 8}  # half of a's 10 pieces; every piece of b twice
    assert Counter(p["uri"] for p in read if p["source"] == 1) == {p["uri"]: 2 for p in B}
    assert mixture_rows([A, B], [0.5, 2.0]) == 500 + 400
    # The half of a is drawn anew each epoch, the same for the same (seed, epoch).
    halves = [
        {p["uri"] for p in mixture([A, B], [0.5, 2.0], 0, e) if p["source"] == 0} for e in (1, 2, 3)
    ]
    assert len({frozenset(h) for h in halves}) > 1
    assert mixture([A, B], [0.5, 2.0], 0, 1) == read


def test_a_repeated_piece_is_shuffled_differently_each_time():
    plan = epoch_plan(mixture([B], [2.0], 0, 1), seed=0, epoch=1, world=1)[0]
    seeds = {}
    for item in plan:
        seeds.setdefault(item["uri"], []).append(tuple(item["seed"]))
    assert all(len(set(s)) == 2 for s in seeds.values())


def test_mix_batches_plans_each_source_apart_and_draws_them_by_weighted_rows():
    plans = source_plans([A, B], [0.5, 2.0], seed=0, epoch=1, world=2)
    for k, ranks in enumerate(plans):
        assert all(p["source"] == k for r in ranks for p in r)
        assert abs(rows_of(ranks[0]) - rows_of(ranks[1])) <= 1  # ranks hold equal rows
    assert [rows_of(ranks[0]) + rows_of(ranks[1]) for ranks in plans] == [500, 400]
    order = batch_order(plans, batch=25, seed=0, epoch=1)
    # Each rank has 250 rows of a and 200 of b: 10 and 8 whole batches of 25, in a drawn order.
    assert Counter(order) == {0: 10, 1: 8}
    assert order != sorted(order) and order == batch_order(plans, 25, 0, 1)
    assert order != batch_order(source_plans([A, B], [0.5, 2.0], 0, 2, 2), 25, 0, 2)
    # The sources' rows are shuffled by seeds of their own.
    a, b = ({tuple(p["seed"]) for r in ranks for p in r} for ranks in plans)
    assert not a & b
    # A rank's stream of one source resumes where the checkpoint put it, as the one stream does.
    assert resume_plan(plans[1][0], 0) == plans[1][0]


def test_mix_batches_keeps_a_loss_per_source():
    stats = EpochStats(log_every=2)
    stats.add(1.0, {"contrastive": 1.0}, 8, "images")
    stats.add(3.0, {"contrastive": 3.0}, 8, "speech")
    stats.add(2.0, {"contrastive": 2.0}, 8, "images")
    window = stats.take_window()
    assert window.sources == {"loss/images": 1.5, "loss/speech": 3.0}
    assert "images" not in window.by_term()  # the live gauge's terms stay terms
    stats.finish()
    metrics = stats.metrics(1, device=None)  # type: ignore[arg-type]
    assert metrics["train/loss/images"] == 1.5 and metrics["train/loss/speech"] == 3.0
    assert metrics["train/loss"] == 2.0


def test_mix_batches_refuses_what_it_cannot_plan():
    def cfg(*extra: str):
        return load_config(None, ["data.mix=batches", "train.num_workers=2", *extra])

    images = _source("images", ["image", "text"], rows=1000)
    check_batches(cfg("train.batch_size=64"), [images, _source("speech", ["audio"], rows=64)])
    with pytest.raises(ValueError, match=r"\[1\] 'speech': its 40 weighted train rows make no"):
        check_batches(cfg("train.batch_size=64"), [images, _source("speech", ["audio"], rows=40)])
    with pytest.raises(ValueError, match="train/loss/contrastive is the contrastive term's"):
        check_batches(cfg(), [images, _source("contrastive", ["audio"], rows=1000)])
    tars = _source("tars", ["audio"], rows=1000)
    tars.manifest.extra["format"] = "webdataset"
    with pytest.raises(ValueError, match="'tars': data.mix=batches plans whole batches"):
        check_batches(cfg(), [images, tars])


def _source(
    name: str, modalities: list[str], labels: list[str] | None = None, rows: int = 1
) -> DataSource:
    manifest = Manifest({m: {} for m in modalities}, labels, {"train": {"rows": rows}})
    return DataSource(name, f"/data/{name}", 1.0, manifest)


def test_sources_must_bind_every_modality():
    images, speech = _source("images", ["image", "text"]), _source("speech", ["audio", "text"])
    check_modalities(["image", "text", "audio"], [images, speech])  # text links them
    with pytest.raises(ValueError, match=r"\['audio'\] share no source with \['image', 'text'\]"):
        check_modalities(["image", "text", "audio"], [images, _source("a", ["audio"])])
    with pytest.raises(ValueError, match=r"\['vector'\]: no dataset has them"):
        check_modalities(["image", "vector"], [images])


def test_labels_must_mean_the_same_in_every_source():
    digits = _source("digits", ["image", "text"], ["0", "1"])
    spoken = _source("spoken", ["audio", "text"], ["0", "1"])
    unlabelled = _source("captions", ["image", "text"])
    merged = mixed_manifest([digits, spoken, unlabelled])
    assert merged.label_names == ["0", "1"] and set(merged.modalities) == {"image", "text", "audio"}
    with pytest.raises(DatasetError, match="source 'other'.*differ from source 'digits'"):
        mixed_manifest([digits, _source("other", ["audio", "text"], ["a", "b"])])


def test_the_config_names_each_source_once_and_not_beside_data_path():
    cfg = load_config(None, ["data.sources=[{path: d/digits}, {path: s/spoken, weight: 2}]"])
    assert [s.named() for s in cfg.data.sources] == ["digits", "spoken"]
    with pytest.raises(ConfigError) as err:
        load_config(
            None,
            [
                "data.path=elsewhere",
                "data.sources=[{path: a/x}, {path: b/x, weight: -1}, {path: c, name: 'no spaces'}]",
            ],
        )
    text = str(err.value)
    assert "'data.sources[1].weight' must be >= 0" in text
    assert "'data.sources[2].name'" in text
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.path=elsewhere", "data.sources=[{path: a/x}, {path: b/x}]"])
    assert "'data.path' and 'data.sources': give one or the other" in str(err.value)
    assert "'data.sources[1].name': 'x' names two sources" in str(err.value)


def test_inspect_lists_each_source_with_its_share_of_an_epoch(digits_dataset):
    from polymodal.data.inspect import inspect_sources

    sources = (
        f"[{{path: {digits_dataset}, name: a}}, {{path: {digits_dataset}, name: b, weight: 2}}, "
        f"{{path: {digits_dataset}, name: heldout, weight: 0}}]"
    )
    text = inspect_sources(load_config(None, [f"data.sources={sources}"]))
    rows = read_manifest(digits_dataset).rows("train")
    assert text.splitlines()[0] == f"3 sources, {3 * rows} rows an epoch:"
    assert "weight 1 = 33% of an epoch" in text and "weight 2 = 67% of an epoch" in text
    assert "weight 0 = validation only" in text
    assert "image, text; 10 labels" in text


def test_bad_rows_are_counted_per_source_too():
    from polymodal.data.pipeline import BadRows
    from polymodal.train.bad_rows import BadDataError, check_bad_fraction

    counter = BadRows()
    counter.add("train", 100, [("d-1", "unreadable image")], "images")
    counter.add("train", 50, [("s-1", "empty text"), ("s-2", "empty text")], "speech")
    totals = counter.totals()
    assert totals["sources"] == {
        "images": {"seen": 100, "unreadable image": 1},
        "speech": {"seen": 50, "empty text": 2},
    }
    assert {s["source"] for s in totals["samples"]} == {"images", "speech"}
    with pytest.raises(BadDataError, match="by source: images 1 of 100, speech 2 of 50"):
        check_bad_fraction(totals, 0.01, "data")
    single = BadRows()
    single.add("train", 10, [("x", "empty text")])
    assert "sources" not in single.totals()  # one dataset: as before


def test_webdataset_sources_name_their_own_val_tars_and_labels(tmp_path):
    from polymodal.data.dataset import data_sources
    from polymodal.data.sources.builtin import FASHION_LABELS, digits, fashion_mnist
    from tests.conftest import write_tars

    for name, rows in (("fashion", list(fashion_mnist(limit=20).rows)), ("digits", [])):
        rows = rows or list(digits(limit=20).rows)
        write_tars(tmp_path / name / "train", rows[:12], per_tar=12)
        write_tars(tmp_path / name / "val", rows[12:], per_tar=8)
    tars = {
        n: (f"{tmp_path / n}/train/00000.tar", f"{tmp_path / n}/val/00000.tar")
        for n in ("fashion", "digits")
    }
    sources = (
        f"[{{path: '{tars['fashion'][0]}', name: fashion, val_path: '{tars['fashion'][1]}', "
        f"label_names: {list(FASHION_LABELS)}}}, "
        f"{{path: '{tars['digits'][0]}', name: digits}}]"
    )
    cfg = load_config(None, [f"data.sources={sources}", f"data.val_path={tars['digits'][1]}"])
    fashion, digit = data_sources(cfg)
    assert fashion.manifest.splits["val"]["shards"][0]["path"].endswith("fashion/val/00000.tar")
    assert digit.manifest.splits["val"]["shards"][0]["path"].endswith("digits/val/00000.tar")
    assert fashion.manifest.label_names == list(FASHION_LABELS)
    assert digit.manifest.label_names is None  # no data.label_names: its .cls stay unnamed
    assert fashion.manifest.rows("val") == digit.manifest.rows("val") == 8
