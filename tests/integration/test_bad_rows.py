"""Training on a damaged copy of real digits past data.max_bad_fraction fails with a clear
error (test_train_digits trains on the same copy under the limit), and a shard whose schema
disagrees with the manifest stops a run before training starts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from polymodal.config import load_config
from polymodal.data.format import DatasetError
from polymodal.train.bad_rows import BadDataError
from polymodal.train.run import fit
from tests.integration.conftest import copy_dataset

CONFIG = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "digits.yaml"
pytestmark = pytest.mark.integration


def _config(data: Path, runs: Path, name: str, *extra: str):
    return load_config(
        CONFIG,
        [
            f"data.path={data}",
            f"train.storage_path={runs}",
            f"train.name={name}",
            "train.epochs=1",
            "train.num_workers=0",
            *extra,
        ],
    )


def test_too_many_bad_rows_fail_the_run(ray_cluster, damaged_digits, tmp_path):
    data, _ = damaged_digits
    cfg = _config(data, tmp_path, "strict", "data.max_bad_fraction=0.002")
    with pytest.raises(BadDataError, match=r"could not be used \(") as err:
        fit(cfg)
    # As many as were read when a check saw the limit passed: all 10 when Ray Data decoded
    # ahead of the step, fewer when the loop reads rows from the decoded cache as it goes.
    bad, seen = map(int, re.search(r"(\d+) of (\d+) rows read", str(err.value)).groups())
    assert 1 <= bad <= 10 and bad / seen > 0.002
    report = json.loads((tmp_path / "strict" / "bad_rows.json").read_text())
    assert report["bad_rows"] == bad


def test_shard_with_another_schema_fails_before_training(ray_cluster, digits_dataset, tmp_path):
    data = tmp_path / "digits"
    shard = copy_dataset(digits_dataset, data)[1]["val"]
    table = pq.read_table(shard)
    table = table.set_column(
        table.schema.get_field_index("label"), "label", table.column("label").cast(pa.string())
    )
    pq.write_table(table, shard)
    with pytest.raises(DatasetError, match=r"val/part-00000.parquet: column 'label' is string"):
        fit(_config(data, tmp_path / "runs", "never"))
    assert not (tmp_path / "runs" / "never").exists()
