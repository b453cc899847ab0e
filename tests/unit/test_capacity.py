"""benchmarks/capacity.py, the capacity plan's simulator: its arithmetic (never its speed), and
that the tables in docs/scaling.md are what it prints now, so the page stays re-derived."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "capacity.py"
DOC = REPO / "docs" / "scaling.md"
BEGIN = "<!-- python benchmarks/capacity.py --markdown: pasted, not edited -->\n"
END = "\n<!-- end of capacity.py's output -->"


def _load():
    spec = importlib.util.spec_from_file_location("capacity", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["capacity"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


capacity = _load()


def test_parameter_counts_are_clips_from_the_shapes():
    assert capacity.vit_params(capacity.RUN) == 87_849_216  # OpenCLIP's ViT-B-32 visual
    assert capacity.text_params(capacity.RUN) == 63_428_096
    assert capacity.total_params(capacity.RUN) == 151_277_313


@pytest.mark.parametrize("n", [2, 8, 32, 128, 512])
def test_local_loss_logits_are_one_nth_of_the_full_loss(n):
    logits = capacity.plan(n)["logits_mb_per_rank"]
    assert logits["local"] == pytest.approx(logits["full"] / n, rel=1e-12)


def test_full_loss_logits_are_the_measured_bytes_per_logit_times_batch_squared():
    full = capacity.plan(8)["logits_mb_per_rank"]["full"] * capacity.MB
    m = capacity.MEASURED
    at_measured_batch = m.infonce_full_peak_mib * capacity.MiB
    assert full == pytest.approx(at_measured_batch * (32_768 / m.infonce_full_batch) ** 2)


def test_gathered_features_scale_linearly_with_the_batch_and_not_with_n():
    run = capacity.RUN
    double = dataclasses.replace(run, global_batch=2 * run.global_batch)
    one = capacity.plan(32, r=run)["gathered_features_mb_per_rank"]
    two = capacity.plan(32, r=double)["gathered_features_mb_per_rank"]
    assert two == pytest.approx(2 * one)
    assert one == pytest.approx(run.global_batch * run.embed_dim * 2 * 2 / capacity.MB)
    assert capacity.plan(512)["gathered_features_mb_per_rank"] == pytest.approx(one)


def test_collectives_cross_the_network_only_between_nodes():
    one_node = capacity.plan(8)["network_mb_per_step_node"]
    assert one_node["grad_allreduce"] == 0 and one_node["feature_gather"] == 0
    four = capacity.plan(32)["network_mb_per_step_node"]
    params = capacity.total_params(capacity.RUN)
    assert four["grad_allreduce"] * capacity.MB == pytest.approx(2 * 3 / 4 * params * 4)


def test_a_node_table_covers_every_row_on_one_node_and_less_on_many():
    assert capacity.node_share(1, 32) == 1.0
    assert capacity.plan(8)["feature_table_hit_rate"]["epoch_2"] == 1.0
    assert capacity.plan(512)["feature_table_hit_rate"]["epoch_2"] == pytest.approx(1 / 64)


def test_the_markdown_has_a_column_for_each_n(capsys):
    capacity.main(["--gpus", "8,512", "--markdown"])
    out = capsys.readouterr().out
    head = out.splitlines()[0]
    assert "N = 8" in head and "N = 512" in head and "N = 32" not in head
    assert "first to saturate" in out


def test_json_is_the_default_one_line_per_n(capsys):
    capacity.main(["--gpus", "8,128"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["gpus"] for r in rows] == [8, 128]
    assert rows[1]["first_to_saturate"] in rows[1]["loads"]


def test_measured_fields_are_overridden_from_a_json_file(tmp_path, capsys):
    path = tmp_path / "measured.json"
    path.write_text(json.dumps({"decode_ms_small": 1.069, "network_gbps": 400}))
    capacity.main(["--gpus", "512", "--measured", str(path)])
    row = json.loads(capsys.readouterr().out)
    base = capacity.plan(512)
    assert row["data_cpu_ms_per_sample"]["total"] == pytest.approx(
        base["data_cpu_ms_per_sample"]["total"] + 1.0
    )
    assert row["network_load"] == pytest.approx(base["network_load"] / 4)
    path.write_text(json.dumps({"no_such_field": 1}))
    with pytest.raises(SystemExit, match="no_such_field"):
        capacity.main(["--measured", str(path)])


def test_the_doc_pastes_what_the_script_prints_now(capsys):
    capacity.main(["--gpus", "8,32,128,512", "--markdown"])
    printed = capsys.readouterr().out.rstrip("\n")
    doc = DOC.read_text()
    pasted = doc[doc.index(BEGIN) + len(BEGIN) : doc.index(END)]
    assert pasted == printed, (
        "docs/scaling.md's tables differ from `python benchmarks/capacity.py --markdown`: "
        "paste its output between the markers (and check the prose around them)"
    )
