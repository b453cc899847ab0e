"""python benchmarks/capacity.py --gpus 8,32,128,512 [--json] [--markdown] [--measured FILE.json]

A capacity plan on paper: a LAION-400M-class CLIP run (ViT-B/32 + 12-layer text, batch 32k,
32 epochs) on N GPUs, computed from our measured per-sample costs (docs/scaling.md explains it).

MEASURED holds the numbers benchmarks/ measured, each with the RESULTS.md section it comes from;
ASSUMED the ones we did not measure (published figures, hardware); RUN the workload. Change a
number in one place (or pass --measured with a JSON object of fields) and the table follows.
Prints one JSON line per N (default, or --json) and/or the markdown table (--markdown) that
docs/scaling.md pastes; tests/unit/test_capacity.py checks the two still agree.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

MiB = 1024**2
MB = 1e6
GB = 1e9


@dataclass(frozen=True)
class Measured:
    """Numbers benchmarks/ measured on the 2-core CPU host (benchmarks/RESULTS.md)."""

    # train.py --cases ray_overhead ("Training at the speed of a bare loop (issue 33)"):
    # decoding one Fashion-MNIST row (a 28x28 grey PNG and its caption) on one core
    decode_ms_small: float = 0.069
    decode_small_values: int = 28 * 28
    # "Pretrained image tower: emoji picture <-> name, LiT": both towers locked and their tables
    # full, so an epoch is the data path alone: 7-8 s at 224 px, 2 s at 96 px (3,431 rows,
    # 2 workers on 2 cores). The difference is the CPU per decoded pixel value.
    lit_epoch_s_224: float = 7.5
    lit_epoch_s_96: float = 2.0
    lit_rows: int = 3431
    lit_cores: int = 2
    # ray_overhead's CPU table, row (c'), decoded by Ray Data: ms a sample of the worker's
    # hand-off, of Ray's tasks and actors, and of Ray's daemons and the driver
    handoff_ms: float = 0.206
    ray_tasks_ms: float = 0.112
    ray_daemons_ms: float = 0.053
    # contrastive.py: infonce-full peak MiB per rank at global batch 8,192 (any world size):
    # the logits, both softmaxes and their gradients
    infonce_full_peak_mib: float = 1488.2
    infonce_full_batch: int = 8192
    # contrastive.py: sigmoid-local peak MiB per rank, B_local 4,096, chunk 4,096
    sigmoid_local_peak_mib: float = 150.3
    sigmoid_local_rows: int = 4096
    sigmoid_chunk: int = 4096
    # contrastive.py: gradient cache / plain, time per sample, the same 16,384 batch
    grad_cache_time_ratio: float = 1.29
    # train.py --cases fsdp_memory: weights, gradients and AdamW state, bytes a parameter
    state_bytes_per_param: int = 16
    # faults.py --case repeats ("Step checkpoints and exact resume"): the local write of a
    # digits.yaml checkpoint (280,461 parameters: its model built from the config) takes
    # 12-17 ms; a report within 2 s of the last waits ~1.85 s for Train's controller poll
    checkpoint_write_ms: float = 17.0
    checkpoint_params: int = 280_461
    report_wait_s: float = 1.85
    # lit.py ("A locked image tower at 1x and 10x the rows"): the feature table is 5 KB a row
    # of 1,280 float32 features on disk
    table_row_kb: float = 5.0
    table_row_floats: int = 1280


@dataclass(frozen=True)
class Assumed:
    """Numbers not measured here: published figures and the hardware, stated as assumptions."""

    # OpenCLIP's README: ViT-B/32 on LAION-400M for 32 epochs took 128 A100 (40 GB) ~36 h,
    # 4,600 GPU-hours, at 256 a GPU (global 32,768): the GPU's samples/s, whole run averaged
    reference_gpu_hours: float = 4600
    reference_samples: float = 400e6 * 32
    gpu_memory_gb: float = 40
    plain_batch_per_gpu: int = 256  # larger local batches use the gradient cache
    gpus_per_node: int = 8
    cores_per_node: int = 96
    network_gbps: float = 100  # each node's NIC, both ways
    node_ram_gb: float = 1024
    object_store_fraction: float = 0.3  # Ray's default share of a node's memory
    stored_kb_per_sample: float = 40  # a 256 px JPEG + caption in webdataset shards
    grad_bytes: int = 4  # DDP all-reduces fp32 gradients
    feature_bytes: int = 2  # bf16 embeddings gathered
    checkpoint_every_min: float = 30
    worker_cores_per_gpu: float = 1.0  # the training process that drives each GPU
    decode_scale: float = 1.0  # sensitivity: a multiplier on the measured data-path CPU


@dataclass(frozen=True)
class Run:
    """The workload: LAION-400M-class, ViT-B/32 + a 12-layer 512-wide text tower (CLIP's)."""

    samples: int = 400_000_000
    epochs: int = 32
    global_batch: int = 32_768
    embed_dim: int = 512
    image_size: int = 224
    channels: int = 3
    patch: int = 32
    vit_width: int = 768
    vit_layers: int = 12
    text_width: int = 512
    text_layers: int = 12
    vocab: int = 49_408
    context: int = 77
    token_bytes: int = 8  # int64 token ids, as decoding writes them
    modalities: int = 2
    prefetch_batches: int = 4  # data.prefetch_batches' default


MEASURED = Measured()
ASSUMED = Assumed()
RUN = Run()


def block_params(width: int, mlp: int) -> int:
    """One pre-norm transformer block: two LayerNorms, qkv and out projections, the MLP."""
    return (
        2 * 2 * width
        + (width * 3 * width + 3 * width)
        + (width * width + width)
        + (width * mlp + mlp)
        + (mlp * width + width)
    )


def vit_params(r: Run) -> int:
    """ViT-B/32 as CLIP builds it: patch conv (no bias), class token, positions, ln_pre,
    blocks, ln_post, projection to embed_dim (no bias)."""
    w, grid = r.vit_width, r.image_size // r.patch
    stem = r.channels * r.patch * r.patch * w + w + (grid * grid + 1) * w + 2 * w
    return stem + r.vit_layers * block_params(w, 4 * w) + 2 * w + w * r.embed_dim


def text_params(r: Run) -> int:
    """CLIP's text transformer: token and position embeddings, blocks, ln_final, projection."""
    w = r.text_width
    stem = r.vocab * w + r.context * w
    return stem + r.text_layers * block_params(w, 4 * w) + 2 * w + w * r.embed_dim


def total_params(r: Run) -> int:
    return vit_params(r) + text_params(r) + 1  # + the logit scale


def decode_per_value_ms(m: Measured) -> float:
    """CPU ms per decoded pixel value: the LiT data path at 224 px minus at 96 px (RGB)."""
    extra_ms = m.lit_cores * (m.lit_epoch_s_224 - m.lit_epoch_s_96) * 1000 / m.lit_rows
    return extra_ms / (3 * (224**2 - 96**2))


def data_cpu_ms(m: Measured, r: Run) -> dict[str, float]:
    """CPU ms a sample on the data path at r.image_size: a fixed part (Fashion-MNIST's decode
    less its pixels), the pixels at the LiT rate, and Ray Data's hand-off and processes."""
    per_value = decode_per_value_ms(m)
    fixed = m.decode_ms_small - per_value * m.decode_small_values
    pixels = per_value * r.channels * r.image_size**2
    ray = m.handoff_ms + m.ray_tasks_ms + m.ray_daemons_ms
    return {"decode_fixed": fixed, "pixels": pixels, "ray": ray, "total": fixed + pixels + ray}


def decoded_bytes(r: Run) -> int:
    """A decoded sample as the pipeline hands it over: float32 pixels and int64 token ids."""
    return r.channels * r.image_size**2 * 4 + r.context * r.token_bytes


def logits_bytes_per_element(m: Measured) -> float:
    return m.infonce_full_peak_mib * MiB / m.infonce_full_batch**2


def sigmoid_bytes_per_element(m: Measured) -> float:
    return m.sigmoid_local_peak_mib * MiB / (m.sigmoid_local_rows * m.sigmoid_chunk)


def gpu_samples_per_s(a: Assumed) -> float:
    return a.reference_samples / (a.reference_gpu_hours * 3600)


def checkpoint(m: Measured, r: Run) -> dict[str, float]:
    """Checkpoint size (weights + AdamW's two moments: the state less the gradients) and the
    write rate of the measured digits checkpoint."""
    per_param = m.state_bytes_per_param - 4
    rate = m.checkpoint_params * per_param / (m.checkpoint_write_ms / 1000)
    return {"bytes": total_params(r) * per_param, "write_bytes_per_s": rate}


def node_share(nodes: int, epochs: int) -> float:
    """Fraction of all rows a node has read after `epochs`: every epoch deals the pieces over
    the ranks anew (data/order.py), so a row lands on a given node with chance 1/nodes."""
    return 1 - (1 - 1 / nodes) ** epochs


def plan(n: int, m: Measured = MEASURED, a: Assumed = ASSUMED, r: Run = RUN) -> dict:
    """Every figure of the table for n GPUs."""
    per_node = min(n, a.gpus_per_node)
    nodes = math.ceil(n / per_node)
    b = r.global_batch // n
    params = total_params(r)
    grad_cache = b > a.plain_batch_per_gpu
    rate = gpu_samples_per_s(a) / (m.grad_cache_time_ratio if grad_cache else 1.0)
    step_s = b / rate

    cpu = data_cpu_ms(m, r)
    cores_per_gpu = rate * cpu["total"] * a.decode_scale / 1000
    cpu_load = (cores_per_gpu + a.worker_cores_per_gpu) * per_node / a.cores_per_node

    store_step = per_node * b * decoded_bytes(r)
    store_held = store_step * (r.prefetch_batches + 1)
    store_load = store_held / (a.node_ram_gb * GB * a.object_store_fraction)

    ring = (nodes - 1) / nodes  # collectives across nodes: NVLink within, a ring of nodes
    gathered = r.global_batch * r.embed_dim * a.feature_bytes * r.modalities
    net = {
        "data_read": per_node * b * a.stored_kb_per_sample * 1e3,
        "grad_allreduce": 2 * ring * params * a.grad_bytes,
        "feature_gather": 2 * ring * gathered,  # all_gather forward, reduce-scatter backward
    }
    net_total = sum(net.values())
    net_load = net_total / (a.network_gbps * GB / 8 * step_s)

    state = params * m.state_bytes_per_param
    logits_full = r.global_batch**2 * logits_bytes_per_element(m)
    logits_local = b * r.global_batch * logits_bytes_per_element(m)
    sigmoid = b * min(m.sigmoid_chunk, r.global_batch) * sigmoid_bytes_per_element(m)
    gpu_mem = a.gpu_memory_gb * GB

    ckpt = checkpoint(m, r)
    one_writer_s = ckpt["bytes"] / ckpt["write_bytes_per_s"] + m.report_wait_s
    sharded_s = ckpt["bytes"] / n / ckpt["write_bytes_per_s"] + m.report_wait_s

    table_bytes_per_value = m.table_row_kb * 1024 / m.table_row_floats  # 4.0: float32, no overhead
    share = node_share(nodes, r.epochs)
    hits = [1 - (1 - 1 / nodes) ** (e - 1) for e in range(2, r.epochs + 1)] or [0.0]

    loads = {
        "decode CPU": cpu_load,
        "node network": net_load,
        "object store": store_load,
        "GPU memory (local loss)": (state + logits_local) / gpu_mem,
    }
    first = max(loads, key=loads.__getitem__)
    slowdown = max(1.0, cpu_load, net_load)
    steps = r.samples * r.epochs / r.global_batch
    return {
        "gpus": n,
        "nodes": nodes,
        "local_batch": b,
        "grad_cache": grad_cache,
        "gpu_samples_per_s": rate,
        "step_s": step_s,
        "data_cpu_ms_per_sample": cpu,
        "cores_per_gpu": cores_per_gpu,
        "cpu_load": cpu_load,
        "object_store_mb_per_step_node": store_step / MB,
        "object_store_held_gb_node": store_held / GB,
        "object_store_load": store_load,
        "network_mb_per_step_node": {k: v / MB for k, v in net.items()} | {"total": net_total / MB},
        "network_load": net_load,
        "gathered_features_mb_per_rank": gathered / MB,
        "received_features_mb_per_rank": (n - 1) / n * gathered / MB,
        "logits_mb_per_rank": {
            "full": logits_full / MB,
            "local": logits_local / MB,
            "sigmoid_chunked": sigmoid / MB,
        },
        "model_state_gb_per_rank": {"ddp": state / GB, "fsdp": state / n / GB},
        "gpu_memory_load": {
            "local": (state + logits_local) / gpu_mem,
            "full": (state + logits_full) / gpu_mem,
        },
        "params": params,
        "checkpoint_gb": ckpt["bytes"] / GB,
        "checkpoint_write_s": {"one_writer": one_writer_s, "sharded": sharded_s},
        "checkpoint_overhead": one_writer_s / (a.checkpoint_every_min * 60),
        "feature_table_gb_node": {
            name: r.samples * share * r.vit_width * table_bytes_per_value * nbytes / 4 / GB
            for name, nbytes in (("fp32", 4), ("fp16", 2), ("int8", 1))
        },
        "feature_table_hit_rate": {"epoch_2": hits[0], "mean": sum(hits) / len(hits)},
        "hours": steps * step_s * slowdown / 3600,
        "loads": loads,
        "first_to_saturate": first,
    }


def _num(x: float) -> str:
    if x == 0:
        return "0"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 0.1:
        return f"{x:.2f}"
    return f"{x:.3f}" if x >= 0.001 else f"{x:.1e}"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%" if x >= 0.1 else f"{100 * x:.1f}%"


def markdown(rows: list[dict], m: Measured = MEASURED, a: Assumed = ASSUMED, r: Run = RUN) -> str:
    """The table docs/scaling.md pastes: one column per N, each line with where it comes from;
    then the N at which each resource first reaches 100% under a few other assumptions."""
    cpu = data_cpu_ms(m, r)
    per_logit = logits_bytes_per_element(m)
    ckpt_mb = m.checkpoint_params * (m.state_bytes_per_param - 4) / MB
    lines = [
        ("nodes", lambda p: str(p["nodes"]), f"{a.gpus_per_node} GPUs a node (assumed)"),
        ("local batch (rows / GPU)", lambda p: f"{p['local_batch']:,}", f"{r.global_batch:,} / N"),
        (
            f"gradient cache (local batch > {a.plain_batch_per_gpu})",
            lambda p: "yes" if p["grad_cache"] else "no",
            f"OpenCLIP's {a.plain_batch_per_gpu} a GPU (assumed)",
        ),
        (
            "GPU samples/s (A100)",
            lambda p: _num(p["gpu_samples_per_s"]),
            f"OpenCLIP's {a.reference_gpu_hours:,.0f} GPU-hours (assumed); "
            f"÷ {m.grad_cache_time_ratio} with the cache: contrastive.py",
        ),
        ("step s (compute)", lambda p: _num(p["step_s"]), "local batch / samples/s"),
        (
            "data-path CPU ms / sample",
            lambda p: _num(p["data_cpu_ms_per_sample"]["total"] * a.decode_scale),
            f"train.py ray_overhead (decode {m.decode_ms_small}, Ray {_num(cpu['ray'])}) "
            f"+ LiT's 224 vs 96 px epochs ({_num(cpu['pixels'])} for the pixels)",
        ),
        (
            "data-path cores / GPU",
            lambda p: _num(p["cores_per_gpu"]),
            "samples/s × CPU ms",
        ),
        (
            f"node CPU load (of {a.cores_per_node} cores)",
            lambda p: _pct(p["cpu_load"]),
            f"+ {a.worker_cores_per_gpu:g} core a GPU for its training process (assumed)",
        ),
        (
            "object store MB / step / node",
            lambda p: _num(p["object_store_mb_per_step_node"]),
            f"decoded float32 {r.image_size} px + int64 tokens",
        ),
        (
            "object store held GB / node (load)",
            lambda p: f"{_num(p['object_store_held_gb_node'])} ({_pct(p['object_store_load'])})",
            f"prefetch {r.prefetch_batches} + 1 batches; {a.object_store_fraction:.0%} "
            f"of {a.node_ram_gb:,.0f} GB (assumed)",
        ),
        (
            "network MB / step / node: data read",
            lambda p: _num(p["network_mb_per_step_node"]["data_read"]),
            f"{a.stored_kb_per_sample:.0f} KB a stored sample (assumed)",
        ),
        (
            "... gradient all-reduce",
            lambda p: _num(p["network_mb_per_step_node"]["grad_allreduce"]),
            f"2(M-1)/M × params × {a.grad_bytes} B, M nodes",
        ),
        (
            "... feature all-gather (fwd + bwd)",
            lambda p: _num(p["network_mb_per_step_node"]["feature_gather"]),
            f"2(M-1)/M × batch × {r.embed_dim} × {a.feature_bytes} B × {r.modalities}",
        ),
        (
            f"node network load ({a.network_gbps:.0f} Gb/s)",
            lambda p: _pct(p["network_load"]),
            "bytes / (bandwidth × step s) (assumed bandwidth)",
        ),
        (
            "gathered features MB / rank / step",
            lambda p: _num(p["gathered_features_mb_per_rank"]),
            "the same for local and full loss",
        ),
        (
            "logits MB / rank: full loss",
            lambda p: _num(p["logits_mb_per_rank"]["full"]),
            f"contrastive.py infonce-full: {per_logit:.1f} B a logit",
        ),
        (
            "... local loss",
            lambda p: _num(p["logits_mb_per_rank"]["local"]),
            f"local batch × global batch × {per_logit:.1f} B",
        ),
        (
            f"... sigmoid, chunk {m.sigmoid_chunk:,}",
            lambda p: _num(p["logits_mb_per_rank"]["sigmoid_chunked"]),
            f"contrastive.py sigmoid-local: {sigmoid_bytes_per_element(m):.1f} B a logit",
        ),
        (
            f"GPU memory load, local / full ({a.gpu_memory_gb:.0f} GB)",
            lambda p: (
                f"{_pct(p['gpu_memory_load']['local'])} / {_pct(p['gpu_memory_load']['full'])}"
            ),
            f"train.py fsdp_memory ({m.state_bytes_per_param} B a param) + logits; "
            "activations not counted",
        ),
        (
            "checkpoint GB",
            lambda p: _num(p["checkpoint_gb"]),
            f"{total_params(r):,} params × {m.state_bytes_per_param - 4} B (weights, AdamW)",
        ),
        (
            "checkpoint write s: one writer / sharded",
            lambda p: (
                f"{_num(p['checkpoint_write_s']['one_writer'])} / "
                f"{_num(p['checkpoint_write_s']['sharded'])}"
            ),
            f"faults.py repeats: {ckpt_mb:.1f} MB in {m.checkpoint_write_ms:g} ms, "
            f"+ {m.report_wait_s} s report wait",
        ),
        (
            "locked-tower feature table GB / node: fp32 / int8",
            lambda p: (
                f"{_num(p['feature_table_gb_node']['fp32'])} / "
                f"{_num(p['feature_table_gb_node']['int8'])}"
            ),
            f"lit.py: {m.table_row_kb * 1024 / m.table_row_floats:g} B a float on disk; "
            f"{r.vit_width} wide; the rows a node sees in {r.epochs} epochs",
        ),
        (
            "... its hit rate: epoch 2 / mean",
            lambda p: (
                f"{_pct(p['feature_table_hit_rate']['epoch_2'])} / "
                f"{_pct(p['feature_table_hit_rate']['mean'])}"
            ),
            "pieces dealt anew each epoch (data/order.py)",
        ),
        (
            f"hours for {r.epochs} epochs",
            lambda p: _num(p["hours"]),
            "steps × step s × the CPU or network overload",
        ),
        (
            "**highest load** (first to saturate)",
            lambda p: f"**{p['first_to_saturate']}** ({_pct(p['loads'][p['first_to_saturate']])})",
            "the largest of the four loads above",
        ),
    ]
    head = "| | " + " | ".join(f"N = {p['gpus']}" for p in rows) + " | from |"
    sep = "|---|" + "---|" * len(rows) + "---|"
    body = [
        f"| {name} | " + " | ".join(f(p) for p in rows) + f" | {src} |" for name, f, src in lines
    ]
    out = [head, sep, *body, "", "| assumptions | first N at 100% load (N = 8 … 4,096, doubling) |"]
    out.append("|---|---|")
    for label, changes in SCENARIOS:
        found = saturation(dataclasses.replace(a, **changes), m, r)
        text = ", ".join(f"{name} at {n:,}" for name, n in found.items()) or "none"
        out.append(f"| {label} | {text} |")
    return "\n".join(out)


SCENARIOS: list[tuple[str, dict]] = [  # other assumptions, each against ASSUMED
    ("as above", {}),
    ("400 Gb/s a node", {"network_gbps": 400}),
    ("bf16 gradients in the all-reduce", {"grad_bytes": 2}),
    ("a GPU 3× the A100's samples/s", {"reference_gpu_hours": ASSUMED.reference_gpu_hours / 3}),
    (
        "... and 400 Gb/s",
        {"reference_gpu_hours": ASSUMED.reference_gpu_hours / 3, "network_gbps": 400},
    ),
    ("data-path CPU 4× our figure", {"decode_scale": 4.0}),
]


def saturation(a: Assumed, m: Measured = MEASURED, r: Run = RUN) -> dict[str, int]:
    """For each resource, the first N (8, 16, ... 4,096) at which its load reaches 1."""
    found: dict[str, int] = {}
    n = 8
    while n <= 4096:
        for name, load in plan(n, m, a, r)["loads"].items():
            if load >= 1 and name not in found:
                found[name] = n
        n *= 2
    return found


def load_overrides(path: str, m: Measured, a: Assumed) -> tuple[Measured, Assumed]:
    """Replace fields of MEASURED or ASSUMED from a JSON object ({"decode_ms_small": 0.08})."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a JSON object of fields")
    names_m = {f.name for f in dataclasses.fields(Measured)}
    names_a = {f.name for f in dataclasses.fields(Assumed)}
    unknown = sorted(set(data) - names_m - names_a)
    if unknown:
        raise SystemExit(f"{path}: unknown fields {unknown} (see Measured and Assumed)")
    m = dataclasses.replace(m, **{k: v for k, v in data.items() if k in names_m})
    a = dataclasses.replace(a, **{k: v for k, v in data.items() if k in names_a})
    return m, a


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.splitlines()[2:4]))
    parser.add_argument("--gpus", default="8,32,128,512", help="comma-separated GPU counts")
    parser.add_argument("--json", action="store_true", help="one JSON line per N (the default)")
    parser.add_argument("--markdown", action="store_true", help="the table docs/scaling.md pastes")
    parser.add_argument("--measured", default="", help="JSON object overriding fields")
    args = parser.parse_args(argv)
    try:
        gpus = [int(g) for g in args.gpus.split(",") if g.strip()]
    except ValueError:
        parser.error(f"--gpus: comma-separated integers, got {args.gpus!r}")
    if not gpus or any(g < 1 or RUN.global_batch % g for g in gpus):
        parser.error(f"--gpus: each a positive divisor of the batch {RUN.global_batch:,}")
    m, a = (
        load_overrides(args.measured, MEASURED, ASSUMED) if args.measured else (MEASURED, ASSUMED)
    )
    rows = [plan(n, m, a) for n in gpus]
    if args.json or not args.markdown:
        for row in rows:
            print(json.dumps({"case": "capacity", **row}))
    if args.markdown:
        print(markdown(rows, m, a))


if __name__ == "__main__":
    main(sys.argv[1:])
