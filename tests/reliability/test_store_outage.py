"""The S3-compatible store (moto on 127.0.0.1) goes away while a checkpoint is uploaded: the
upload waits and retries until the store is back, and then the checkpoint verifies; if the
store stays away the upload fails, and what it left has no polymodal.json, so it reads as
unfinished — never as a damaged "latest"."""

from __future__ import annotations

import threading
import time

import pyarrow.fs as pafs
import pytest

from polymodal.config import load_config
from polymodal.data.decode import Preprocessing
from polymodal.models.build import build_model
from polymodal.train.checkpoint import CheckpointError, read_meta, save_checkpoint, upload, verify
from tests.conftest import free_port

pytestmark = pytest.mark.reliability


def _server(port: int):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    return server


def test_upload_rides_out_an_outage_and_a_cut_upload_reads_as_unfinished(tmp_path):
    port = free_port()
    server = _server(port)
    fs = pafs.S3FileSystem(
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        endpoint_override=f"127.0.0.1:{port}",
        scheme="http",
        connect_timeout=1,
        request_timeout=2,
        allow_bucket_creation=True,
        # pyarrow's own retries off, so that riding out the outage is upload()'s doing
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1),
    )
    fs.create_dir("runs")  # a bucket
    cfg = load_config(None, ["model.embed_dim=8", "model.text.width=16", "model.text.layers=1"])
    prep = Preprocessing(["image", "text"], image_size=8, text_max_len=8)
    local = save_checkpoint(
        tmp_path / "ckpt",
        build_model(cfg, prep),
        {"config": cfg.to_dict(), "preprocessing": prep.to_dict(), "epoch": 1, "step": 5},
        {"optimizer": {}},
    )
    server.stop()  # the store is down...
    back = threading.Timer(2.5, lambda: restarted.append(_server(port)))
    restarted: list = []
    back.start()
    messages: list[str] = []
    start = time.monotonic()
    upload(local, fs, "runs/run/checkpoint_a", first_wait_s=0.5, log=messages.append)
    assert restarted and time.monotonic() - start >= 2  # ...and the upload waited for it
    assert messages and "retrying in" in messages[0]
    got = tmp_path / "got"
    got.mkdir()
    for name in ("model.pt", "train_state.pt", "polymodal.json"):
        with fs.open_input_stream(f"runs/run/checkpoint_a/{name}") as f:
            (got / name).write_bytes(f.read())
    verify(got)
    assert read_meta(got)["step"] == 5

    restarted[0].stop()  # down for good: the upload gives up, leaving no polymodal.json
    with pytest.raises(OSError):
        upload(local, fs, "runs/run/checkpoint_b", attempts=2, first_wait_s=0.1, log=print)
    restarted[0] = _server(port)
    try:
        left = fs.get_file_info(pafs.FileSelector("runs/run/checkpoint_b", allow_not_found=True))
        assert "polymodal.json" not in {i.base_name for i in left}
        (tmp_path / "cut").mkdir()
        with pytest.raises(CheckpointError, match="not a polymodal checkpoint"):
            read_meta(tmp_path / "cut")
    finally:
        restarted[0].stop()
