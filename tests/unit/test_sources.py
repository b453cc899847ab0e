"""Several datasets in one run (data.sources): the config's rules, the mixture an epoch reads
(weights as upsampling factors, a function of seed and epoch, one source unchanged), and the
checks that the sources bind every modality and agree on labels."""

from __future__ import annotations

from collections import Counter

import pytest

from polymodal.config import ConfigError, load_config
from polymodal.data.dataset import DataSource, mixed_manifest
from polymodal.data.format import DatasetError, Manifest, read_manifest
from polymodal.data.order import epoch_plan, mixture, mixture_rows
from polymodal.train.prepare import check_modalities


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


def _source(name: str, modalities: list[str], labels: list[str] | None = None) -> DataSource:
    manifest = Manifest({m: {} for m in modalities}, labels, {"train": {"rows": 1}})
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
                "data.sources=[{path: a/x}, {path: b/x, weight: 0}, {path: c, name: 'no spaces'}]",
            ],
        )
    text = str(err.value)
    assert "'data.sources[1].weight' must be > 0" in text
    assert "'data.sources[2].name'" in text
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.path=elsewhere", "data.sources=[{path: a/x}, {path: b/x}]"])
    assert "'data.path' and 'data.sources': give one or the other" in str(err.value)
    assert "'data.sources[1].name': 'x' names two sources" in str(err.value)


def test_inspect_lists_each_source_with_its_share_of_an_epoch(digits_dataset):
    from polymodal.data.inspect import inspect_sources

    sources = (
        f"[{{path: {digits_dataset}, name: a}}, {{path: {digits_dataset}, name: b, weight: 2}}]"
    )
    text = inspect_sources(load_config(None, [f"data.sources={sources}"]))
    rows = read_manifest(digits_dataset).rows("train")
    assert text.splitlines()[0] == f"2 sources, {3 * rows} rows an epoch:"
    assert "weight 1 = 33% of an epoch" in text and "weight 2 = 67% of an epoch" in text
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
