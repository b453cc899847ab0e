"""The `polymodal` command: data ingest|inspect|validate, validate (a config), train, eval, tune,
serve, embed, index, mine, report, submit and jobs (Ray jobs on a cluster).

This file builds the parser and dispatches; commands.py holds what each subcommand does.
"""

from __future__ import annotations

import argparse
import sys

from polymodal import commands, console
from polymodal.cli_errors import report
from polymodal.cli_types import add_address, number
from polymodal.data_cli import add_data_parser
from polymodal.retrieval.ann import KINDS
from polymodal.retrieval.index import PRECISIONS

EXAMPLES = """examples:
  polymodal data ingest builtin:fashion-mnist data/fashion-mnist
  polymodal data inspect data/fashion-mnist
  polymodal data validate s3://my-bucket/datasets/fashion-mnist
  polymodal validate jobs/configs/fashion.yaml train.epochs=3
  polymodal train jobs/configs/fashion.yaml train.epochs=3 optim.lr=1e-3
  polymodal eval runs/fashion/checkpoint_... data/fashion-mnist
  polymodal submit train jobs/configs/fashion.yaml data.path=s3://b/fashion --address http://head:8265
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polymodal",
        description="Joint training of multimodal models on Ray.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--verbose", action="store_true", help="print the traceback of an error, not one line"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    add_data_parser(sub)

    check = sub.add_parser(
        "validate",
        help="check a config and its overrides, every problem at once (exit 1 on problems)",
        description="Load CONFIG with key=value overrides as train and tune do and print every "
        "problem at once, each with its dotted key and a fix; a config with train.init_from is "
        "checked with that checkpoint's model section. Starts no Ray and imports no torch. "
        "Every key is described in docs/config.md.",
    )
    check.add_argument("config", help="YAML config, e.g. jobs/configs/fashion.yaml")
    check.add_argument("overrides", nargs="*", help="key=value, e.g. train.epochs=3")
    check.set_defaults(func=commands.cmd_check_config)

    train = sub.add_parser(
        "train",
        help="train on Ray Train from a YAML config",
        description="Train from CONFIG with key=value overrides. Starting a run name again "
        "resumes it from its last checkpoint.",
    )
    train.add_argument("config", help="YAML config, e.g. jobs/configs/fashion.yaml")
    train.add_argument("overrides", nargs="*", help="key=value, e.g. train.epochs=3")
    add_address(train)
    train.set_defaults(func=commands.cmd_train)

    tu = sub.add_parser(
        "tune",
        help="sweep config keys (loss weights, lr, ...) with Ray Tune; trials are Ray Train runs",
        description="Run the sweep in CONFIG's tune: section (named train.name). Running the "
        "same name again resumes an interrupted sweep.",
    )
    tu.add_argument(
        "config", help="YAML config with a tune: section, e.g. jobs/configs/tune-digits.yaml"
    )
    tu.add_argument("overrides", nargs="*", help="key=value, e.g. tune.num_samples=8")
    add_address(tu)
    tu.set_defaults(func=commands.cmd_tune)

    ev = sub.add_parser(
        "eval",
        help="recall@K, accuracy and zero-shot accuracy of a checkpoint; mteb, CLIP_benchmark",
    )
    ev.add_argument("checkpoint", help="checkpoint directory (holds polymodal.json)")
    ev.add_argument("dataset", nargs="?", help="dataset (default: the one it was trained on)")
    ev.add_argument("--split", default="val")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.add_argument("--out", help="also write the metrics as JSON to this file")
    ev.add_argument(
        "--mteb",
        metavar="TASK[,TASK...]",
        help="run mteb's evaluation instead: mteb task names (data from the Hugging Face hub "
        "or its cache) or tasks built from DATASET's --split: retrieval:A->B, "
        "probe:M (mteb's linear probe, fitted on train), zeroshot:M",
    )
    ev.add_argument(
        "--mteb-output",
        default="mteb-results",
        help="mteb's result files: DIR/results/<model>/<revision>/<task>.json (default "
        "mteb-results)",
    )
    ev.add_argument(
        "--clip-benchmark",
        metavar="ROOT",
        help="zero-shot classification or retrieval on a CLIP_benchmark webdataset directory "
        "(local or s3://), printed (and --out written) as clip_benchmark's result JSON",
    )
    ev.set_defaults(func=commands.cmd_eval)
    em = sub.add_parser(
        "embed",
        help="embed a dataset split with Ray Data (batch inference) into Parquet",
        description="Write id, label and one <modality>_embedding column per modality.",
    )
    em.add_argument("checkpoint")
    em.add_argument("dataset")
    em.add_argument("out", help="output directory of Parquet files")
    em.add_argument("--split", default="val")
    add_address(em)
    em.set_defaults(func=commands.cmd_embed)
    ex = sub.add_parser(
        "export",
        help="write a checkpoint as ONNX graphs or safetensors weights",
        description="onnx: OUT/<modality>.onnx per encoder (input 'input' as the modality "
        "decodes it, output 'embedding', L2-normalised; dynamic batch), checked against torch "
        "with onnxruntime, and OUT/polymodal-onnx.json (preprocessing, labels, config). "
        "safetensors: a checkpoint whose weights load without unpickling (eval, serve and "
        "index read it). open_clip: an imported OpenCLIP model, fine-tuned or not, in "
        "open_clip's local-dir layout (open_clip.create_model('local-dir:OUT')).",
    )
    ex.add_argument("checkpoint")
    ex.add_argument("out", help="new or empty output directory")
    ex.add_argument("--format", required=True, choices=["onnx", "safetensors", "open_clip"])
    ex.set_defaults(func=commands.cmd_export)
    im = sub.add_parser(
        "import",
        help="write a model from another library as a polymodal checkpoint",
        description="open_clip: an OpenCLIP model (both towers, logit scale and bias, "
        "preprocessing, tokenizer) as a checkpoint that eval, serve, index, export and "
        "train (train.init_from=OUT) take; prints how far its embeddings are from "
        "open_clip's own on the same inputs.",
    )
    im.add_argument("library", choices=["open_clip"])
    im.add_argument(
        "--model",
        required=True,
        help="open_clip architecture (e.g. ViT-B-32) or local-dir:DIR (open_clip_config.json "
        "and weights)",
    )
    im.add_argument("--weights", help="local weights file for an architecture name")
    im.add_argument("out", help="new or empty checkpoint directory")
    im.set_defaults(func=commands.cmd_import)
    ix = sub.add_parser(
        "index",
        help="build a top-k search index (exact or FAISS) of one modality of a dataset split",
        description="Embed one modality of a split with Ray Data and write OUT (local or "
        "s3://): shards of L2-normalised vectors (float32, int8 codes or sign bits: "
        "--precision; memory-mapped when searched; with --kind hnsw|ivf a FAISS index per "
        "shard) with row ids and labels, and index.json written last. `polymodal serve "
        "--index-dir` serves a directory of such indexes at POST /v1/search.",
    )
    ix.add_argument("checkpoint")
    ix.add_argument("dataset")
    ix.add_argument("out", help="index directory (local or s3://); a rebuild replaces it")
    ix.add_argument("--modality", default="image", help="what the index holds (default image)")
    ix.add_argument("--split", default="val")
    ix.add_argument("--shard-rows", type=number(int, 1), default=100_000, help="rows a shard")
    ix.add_argument("--batch-size", type=number(int, 1), default=256, help="rows a batch")
    ix.add_argument("--num-cpus", type=number(float, 0, above=True), default=1.0, help="per actor")
    ix.add_argument("--actors", type=number(int, 1), default=1, help="embedding actors")
    ix.add_argument(
        "--model", help="model name searches use (default: the checkpoint directory's name)"
    )
    ix.add_argument(
        "--dimensions",
        type=number(int, 1),
        help="index this Matryoshka prefix of the embeddings (a size the model was trained at)",
    )
    ix.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="store vectors as float32, int8 codes (4x smaller) or sign bits (32x smaller, "
        "searched first, then rescored with int8 codes)",
    )
    ix.add_argument(
        "--kind",
        choices=KINDS,
        default="exact",
        help="exact search, or approximate with FAISS (hnsw: a graph, ivf: k-means cells), one "
        "per shard; needs the 'search' extra",
    )
    add_address(ix)
    ix.set_defaults(func=commands.cmd_index)
    mn = sub.add_parser(
        "mine",
        help="mine hard negatives with a checkpoint into a copy of a dataset",
        description="Embed the train split, search exactly, write OUT (local or s3://): "
        "DATASET's rows plus negatives.<anchor>-><candidates>, each train row's K negatives by "
        "value (val: none; manifest: extra.negatives), which training reads. Of "
        "sentence-transformers' mine_hard_negatives: range_min, range_max, max_score, "
        "absolute_margin (--margin), relative_margin; not sampling_strategy or faiss.",
    )
    for name in ("checkpoint", "dataset", "out"):
        mn.add_argument(name)
    mn.add_argument("--anchor", required=True, help="the rows' modality that is scored")
    mn.add_argument("--candidates", required=True, help="the negatives' modality")
    mn.add_argument("--num-negatives", type=int, default=3, help="K per row (default 3)")
    mn.add_argument("--range-min", type=int, default=0, help="skip the best ranks (own excluded)")
    mn.add_argument("--range-max", type=int, default=100, help="take ranks below this")
    mn.add_argument("--max-score", type=float, help="drop candidates scoring above this")
    mn.add_argument("--margin", type=float, help="keep scores < the positive's - margin")
    mn.add_argument("--relative-margin", type=float, help="keep scores < positive × (1 - it)")
    mn.add_argument("--exclude-same-label", action="store_true", help="drop the row's label")
    mn.add_argument("--batch-size", type=number(int, 1), default=256)
    mn.add_argument("--overwrite", action="store_true", help="replace a dataset at OUT")
    add_address(mn)
    mn.set_defaults(func=commands.cmd_mine)

    sv = sub.add_parser(
        "serve",
        help="serve checkpoints over HTTP (OpenAI-compatible /v1/embeddings, /v1/classify)",
        description="Serve a checkpoint, or a directory of checkpoints chosen by `model`, on "
        "an embedded Ray Serve (or --address).",
    )
    sv.add_argument("model_dir", help="a checkpoint directory, or a directory of them")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--grpc-port", type=int, help="also serve embeddings.proto's gRPC there")
    sv.add_argument("--max-batch-size", type=int, default=32)
    sv.add_argument("--max-models", type=int, default=4, help="checkpoints loaded per replica")
    sv.add_argument("--num-gpus", type=float, default=0, help="GPUs per model replica")
    sv.add_argument(
        "--num-cpus",
        type=number(float, 0, above=True),
        help="CPUs per model replica (default: this machine's, unless --address: 0.5)",
    )
    sv.add_argument("--threads", type=number(int, 1), help="torch threads (default: CPUs)")
    sv.add_argument("--replicas", type=int, default=1, help="model replicas")
    sv.add_argument(
        "--index-dir",
        help="a directory of `polymodal index` outputs (local or s3://) for POST /v1/search",
    )
    sv.add_argument(
        "--metrics-port", type=int, default=8080, help="Prometheus /metrics of the embedded Ray"
    )
    sv.add_argument(
        "--resources-wait-s",
        type=number(float, 0),
        default=600.0,
        help="on an autoscaling cluster, how long to wait for the replicas' GPUs (a fixed "
        "cluster without them fails at once)",
    )
    add_address(sv)
    sv.set_defaults(func=commands.cmd_serve)

    rp = sub.add_parser(
        "report",
        help="an HTML page of a finished run: curves, metrics, retrieval gallery, projection",
        description="Write RUN_DIR/report/index.html and its PNGs (training writes it at the "
        "end too): loss curves per term, the recall@K / accuracy table, text → image gallery, "
        "retrieval examples for other modalities, a 2-D projection of val embeddings coloured "
        "by label, and the config.",
    )
    rp.add_argument("run_dir", help="a run directory (holds metrics.json), local or s3://")
    rp.add_argument(
        "--rows", type=number(int, 1), default=1000, help="val rows embedded for the figures"
    )
    rp.add_argument(
        "--screenshot", metavar="PNG", help="also save a PNG of the page (headless Chromium)"
    )
    rp.set_defaults(func=commands.cmd_report)

    from polymodal.submit import ENTRYPOINTS

    sb = sub.add_parser(
        "submit",
        help="run train, tune, embed or index as a Ray job on a cluster (Job Submission API)",
        description="Submit `python jobs/KIND.py ARGS` with this checkout as the job's working "
        "dir (without data/, runs/, .venv/) and polymodal's source shipped along, stream its "
        "logs and exit with its result. A config and its overrides are checked before upload. "
        "Paths in the job (data.path, storage_path) are read on the cluster: use s3:// or "
        "paths every node sees; S3 keys must be in the cluster's environment.",
    )
    sb.add_argument("kind", choices=sorted(ENTRYPOINTS))
    sb.add_argument(
        "args", nargs="*", help="the command's arguments, e.g. CONFIG key=value ... for train"
    )
    sb.add_argument(
        "--address",
        help="the cluster's dashboard, http://HEAD:8265 (default: RAY_ADDRESS, then local)",
    )
    sb.add_argument("--no-wait", action="store_true", help="print the job id and return")
    sb.add_argument(
        "--entrypoint-num-cpus",
        type=number(float, 0),
        default=None,
        help="CPUs reserved for the driver",
    )
    sb.set_defaults(func=commands.cmd_submit)

    jb = sub.add_parser("jobs", help="list, inspect, follow and stop Ray jobs")
    jb_sub = jb.add_subparsers(dest="jobs_command", required=True)
    for name, text in (
        ("list", "every job on the cluster, newest first"),
        ("status", "a job's status, entrypoint and exit code"),
        ("logs", "a job's driver logs"),
        ("stop", "stop a running job"),
    ):
        cmd = jb_sub.add_parser(name, help=text)
        if name != "list":
            cmd.add_argument("job_id")
        if name == "logs":
            cmd.add_argument("--follow", action="store_true", help="stream until the job ends")
        cmd.add_argument("--address", help="http://HEAD:8265 (default: RAY_ADDRESS, then local)")
        cmd.set_defaults(func=commands.cmd_jobs)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Options of a submitted command (e.g. embed's --split) are passed through to the job.
    args, extra = parser.parse_known_args(argv)
    if "--verbose" in extra:  # also accepted after the subcommand, where users type it
        extra.remove("--verbose")
        args.verbose = True
    console.from_cli(args.verbose)
    if extra and args.command != "submit":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.args += extra
    try:
        return args.func(args)
    except (Exception, KeyboardInterrupt) as exc:
        return report(exc, args.command, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
