"""`polymodal serve` as a user starts it, on an embedded cluster of its own: one replica
answers HTTP and gRPC at the given ports itself (direct ingress), with the offline encoder's
embeddings and the HTTP route's errors, at the priority of any server, and stops on SIGTERM."""

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import grpc
import numpy as np
import pytest

from polymodal.ports import free_port
from polymodal.serving import embeddings_pb2 as pb
from polymodal.serving import embeddings_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = REPO / "tests" / "fixtures" / "checkpoint-v1"
TEXTS = ["a red shirt", "sneakers with white soles"]


def _post(url: str, body: dict) -> dict:
    """POST on a connection this side closes: the server's port then holds no TIME_WAIT
    connections, which would keep a replacement replica from binding it for ~60 s (Serve binds
    it without SO_REUSEADDR); urllib asks the server to close instead."""
    where = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    try:
        connection.request(
            "POST", where.path, json.dumps(body), {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise OSError(f"HTTP {response.status}: {payload[:300]!r}")
        return json.loads(payload)
    finally:
        connection.close()


def _replica(root: int) -> tuple[int, int]:
    """(pid, niceness) of the Serve replica among root's descendants (the test cluster may run
    replicas of its own)."""
    parents, stats = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)], stats[int(stat.parent.name)] = int(fields[1]), fields
    for pid, fields in stats.items():
        ancestor = pid
        while ancestor not in (root, 0, 1) and ancestor in parents:
            ancestor = parents[ancestor]
        try:  # a process may end while we look
            replica = b"ServeReplica" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if ancestor == root and replica:
            return pid, int(fields[16])
    raise AssertionError("no Serve replica process under polymodal serve")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    port, grpc_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own cluster
    cmd = [sys.executable, "-m", "polymodal.cli", "serve", str(CHECKPOINT), "--port", str(port)]
    cmd += ["--grpc-port", str(grpc_port), "--metrics-port", str(free_port()), "--threads", "1"]
    log = tmp_path_factory.mktemp("serve") / "serve.log"  # a file: a full pipe would block it
    out = {"stdout": log.open("w"), "stderr": subprocess.STDOUT, "start_new_session": True}
    proc = subprocess.Popen(cmd, env=env, **out)
    url = f"http://127.0.0.1:{port}/v1/embeddings"
    deadline = time.monotonic() + 240
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            _post(url, {"model": CHECKPOINT.name, "input": "warm"})
            break
        except OSError:
            assert time.monotonic() < deadline, "polymodal serve did not answer in 240 s"
            time.sleep(0.2)
    yield proc, url, f"127.0.0.1:{grpc_port}"
    if proc.poll() is None:  # a test failed before SIGTERM: Ray's processes go too
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_http_and_grpc_answer_at_their_ports_with_the_offline_embeddings(served):
    from polymodal.inference.model import LoadedModel

    _, url, target = served
    offline = LoadedModel.load(str(CHECKPOINT)).embed("text", TEXTS)
    http = np.array(
        [d["embedding"] for d in _post(url, {"model": CHECKPOINT.name, "input": TEXTS})["data"]]
    )
    np.testing.assert_allclose(http, offline, atol=1e-5)
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.EmbeddingsStub(channel)
        items = [pb.Item(text=t) for t in TEXTS]
        reply = stub.Embed(pb.EmbedRequest(model=CHECKPOINT.name, items=items), timeout=30)
        np.testing.assert_allclose([list(e.values) for e in reply.data], offline, atol=1e-5)
        assert reply.prompt_tokens == sum(len(t.encode()) for t in TEXTS)
        with pytest.raises(grpc.RpcError) as unknown:
            stub.Embed(pb.EmbedRequest(model="nope", items=items), timeout=30)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        assert "unknown model 'nope'" in unknown.value.details()
        blank = [pb.Item(text="ok"), pb.Item(text="  ")]
        with pytest.raises(grpc.RpcError) as empty:
            stub.Embed(pb.EmbedRequest(model=CHECKPOINT.name, items=blank), timeout=30)
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert empty.value.details().startswith("items[1]: empty text")


def test_a_killed_replica_is_replaced_at_the_same_port(served):
    # Before the mteb test: its client's pooled connections, closed by the dying replica, would
    # hold the port in TIME_WAIT (~60 s), as urllib's would (see _post).
    proc, url, _ = served
    pid, _ = _replica(proc.pid)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 150
    while True:  # refused while no replica listens, then answered by the new one
        try:
            reply = _post(url, {"model": CHECKPOINT.name, "input": TEXTS[0]})
            break
        except OSError:
            assert time.monotonic() < deadline, "no replica answered again within 150 s"
            time.sleep(0.5)
    assert len(reply["data"][0]["embedding"]) > 0 and _replica(proc.pid)[0] != pid


def test_mteb_openai_wrapper_gets_the_offline_embeddings(served, digits_dataset):
    """mteb's OpenAIAPIEncodeWrapper sends images (and, with its chat template, texts) in
    vLLM's chat `messages` form: the served embeddings and scores are the offline ones."""
    import mteb
    from mteb._create_dataloaders import create_dataloader
    from mteb.models import OpenAIAPIEncodeWrapper

    from polymodal.inference.model import LoadedModel
    from polymodal.integrations.mteb import Encoder, dataset_task

    _, url, _ = served
    loaded = LoadedModel.load(str(CHECKPOINT))
    wrapper = OpenAIAPIEncodeWrapper(url.rsplit("/v1/", 1)[0], CHECKPOINT.name)
    offline = Encoder(loaded, CHECKPOINT.name, "v1", {})
    task = dataset_task("zeroshot:image", str(digits_dataset), "val", ["a photo of {}"])
    task.load_data()
    where = {"task_metadata": task.metadata, "hf_split": "val", "hf_subset": "default"}
    embedded = [
        model.encode(
            create_dataloader(task.dataset["val"], task_metadata=task.metadata, batch_size=16),
            **where,
        )
        for model in (wrapper, offline)
    ]
    assert embedded[0].shape == (len(task.dataset["val"]), loaded.model.embed_dim)
    np.testing.assert_allclose(embedded[0], embedded[1], atol=1e-5)
    scores = [mteb.evaluate(m, [task], cache=None).task_results[0] for m in (wrapper, offline)]
    assert scores[0].get_score() == pytest.approx(scores[1].get_score(), abs=1e-6)
    # Texts and a two-part conversation (the normalised sum of its parts' embeddings).
    image = task.dataset["val"][0]["image"]
    import base64
    import io

    png = io.BytesIO()
    image.save(png, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    conversations = [
        [{"role": "user", "content": [{"type": "text", "text": TEXTS[0]}]}],
        [{"role": "user", "content": TEXTS[1]}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                      {"type": "text", "text": TEXTS[0]}]}],
    ]  # fmt: skip
    reply = _post(url, {"model": CHECKPOINT.name, "messages": conversations})
    got = np.array([d["embedding"] for d in reply["data"]])
    text = loaded.embed("text", TEXTS)
    both = text[0] + loaded.embed("image", [png.getvalue()])[0]
    np.testing.assert_allclose(got, [*text, both / np.linalg.norm(both)], atol=1e-5)


def test_the_model_runs_at_normal_priority_and_sigterm_stops_everything(served):
    proc, url, _ = served
    assert _replica(proc.pid)[1] == 0  # Ray's default for workers is 15
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(90) == 0
    with pytest.raises(OSError):
        _post(url, {"model": CHECKPOINT.name, "input": "gone"})
