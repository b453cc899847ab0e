"""The S3-compatible store (moto on 127.0.0.1) goes away while a checkpoint is uploaded: the
upload waits and retries until the store is back, and then the checkpoint verifies; if the
store stays away the upload fails, and what it left has no polymodal.json, so it reads as
unfinished — never as a damaged "latest"."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from polymodal import storage
from polymodal.checkpoint import (
    CheckpointError,
    RunMeta,
    read_meta,
    save_checkpoint,
    upload,
    verify,
)
from polymodal.config import load_config
from polymodal.data.format import read_manifest
from polymodal.modalities import Preprocessing
from polymodal.models.build import build_model
from tests.conftest import free_port
from tests.reliability.samples import steps_trained

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
        RunMeta(config=cfg.to_dict(), preprocessing=prep.to_dict(), epoch=1, step=5),
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
    assert read_meta(got).step == 5

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


@pytest.mark.integration
def test_a_training_run_rides_out_a_store_outage(
    ray_cluster, s3_server, s3_endpoint, digits_dataset, tmp_path, capfd
):
    """The run directory on S3; the store stops as epoch 2 begins and comes back only after
    epoch 2 has been trained, so its checkpoint upload meets the outage."""
    import boto3

    from polymodal.train.run import fit
    from tests.conftest import CONFIGS

    samples = tmp_path / "samples"
    cfg = load_config(
        CONFIGS / "digits.yaml",
        [f"data.path={digits_dataset}", "train.storage_path=s3://outage/runs", "train.name=r"]
        + ["train.epochs=3", "train.cpus_per_worker=0.5", f"train.sample_log_dir={samples}"],
    )
    rows = read_manifest(str(digits_dataset)).rows("train")
    steps = rows // cfg.train.num_workers // (cfg.train.batch_size // cfg.train.num_workers)
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="outage")
    fs, _ = storage.resolve("s3://outage")
    outage: list[float] = []

    run_over = threading.Event()

    def store_down_through_epoch_2s_upload():
        while steps_trained(samples, 2) < 1:  # epoch 1's checkpoint is uploaded: epoch 2 began
            if run_over.wait(0.05):
                return
        s3_server.stop()
        outage.append(time.monotonic())
        while steps_trained(samples, 2) < steps and not run_over.wait(0.05):
            pass
        time.sleep(3.0)  # validation, then the upload starts and fails
        s3_server.start()  # also when the run failed: later tests use this store
        outage.append(time.monotonic())

    chaos = threading.Thread(target=store_down_through_epoch_2s_upload)
    chaos.start()
    try:
        result = fit(cfg)
    finally:
        run_over.set()
        chaos.join()
    assert len(outage) == 2
    assert result.epochs_run == 3  # no restart: the upload waited for the store
    found = fs.get_file_info(pafs.FileSelector("outage/runs/r"))
    checkpoints = sorted(
        i.path
        for i in found
        if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")
    )
    assert len(checkpoints) == cfg.train.keep_checkpoints
    for path in checkpoints:  # every checkpoint kept is whole
        local = tmp_path / Path(path).name
        local.mkdir()
        for info in fs.get_file_info(pafs.FileSelector(path)):
            with fs.open_input_stream(info.path) as f:
                (local / info.base_name).write_bytes(f.read())
        verify(local)
    assert [read_meta(tmp_path / Path(p).name).epoch for p in checkpoints] == [2, 3]
    time.sleep(1.0)  # worker output reaches the driver's stdout through Ray's log monitor
    assert "retrying in" in capfd.readouterr().out
