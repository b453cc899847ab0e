"""The `polymodal` command: data ingest|inspect|validate, train, eval, tune, serve, embed,
index, report, submit and jobs (Ray jobs on a cluster).

Each subcommand parses its arguments and calls one function of the package.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from polymodal.config import ConfigError

EXAMPLES = """examples:
  polymodal data ingest builtin:fashion-mnist data/fashion-mnist
  polymodal data inspect data/fashion-mnist
  polymodal data validate s3://my-bucket/datasets/fashion-mnist
  polymodal train jobs/configs/fashion.yaml train.epochs=3 objective.weights.reconstruction=0.5
  polymodal eval runs/fashion/checkpoint_... data/fashion-mnist
  polymodal submit train jobs/configs/fashion.yaml data.path=s3://b/fashion --address http://head:8265
"""


def _cmd_ingest(args: argparse.Namespace) -> int:
    from polymodal.data.ingest import ingest

    report = ingest(
        args.source,
        args.out,
        strict=args.strict,
        val_fraction=args.val_fraction,
        rows_per_shard=args.rows_per_shard,
        limit=args.limit,
        overwrite=args.overwrite,
        mapping=args.map,
    )
    counts = ", ".join(f"{s}={i['rows']}" for s, i in report.manifest.splits.items())
    tasks = f", {report.parallel_tasks} parallel tasks" if report.parallel_tasks else ""
    print(
        f"wrote {report.rows_written} rows to {args.out} ({counts}), "
        f"{report.bytes_written / 1e6:.1f} MB in {report.seconds:.1f}s{tasks}"
    )
    rejected = sum(report.rejected.values())
    print(f"rejected {rejected} rows" + (f": {dict(report.rejected)}" if rejected else ""))
    for line in report.examples:
        print(f"  {line}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from polymodal.data.inspect import inspect_dataset

    print(inspect_dataset(args.dataset, rows=args.rows))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from polymodal.cluster import ensure_ray
    from polymodal.data.validate import validate_dataset

    ensure_ray(args.address)
    report = validate_dataset(args.dataset)
    print(report.format())
    return 0 if report.ok else 1


def _cmd_train(args: argparse.Namespace) -> int:
    from polymodal.config import load_config

    # Checked before torch and Ray are imported: a config error prints in well under 2 s.
    cfg = load_config(args.config, args.overrides)
    from polymodal.evaluation.report import write_report
    from polymodal.train.run import fit

    result = fit(cfg, address=args.address)
    write_report(result.run_dir)
    print(format_metrics(result.metrics, f"run {cfg.train.name}"))
    print(f"checkpoint: {result.checkpoint}")
    print(f"metrics:    {result.run_dir}/metrics.json")
    print(f"plot:       {result.run_dir}/loss_curves.png")
    print(f"report:     {result.run_dir}/report/index.html")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from polymodal.config import load_config

    cfg = load_config(args.config, args.overrides)  # before torch and Ray, as for train
    from polymodal.tune.sweep import format_table, run_sweep

    result = run_sweep(cfg, address=args.address)
    print(format_table(result))
    print(f"table: {result.sweep_dir}/trials.csv (and .parquet)")
    print(f"plot:  {result.sweep_dir}/metric_vs_space.png")
    if result.best_checkpoint is None:
        print(f"no trial reported {cfg.tune.metric}; no best checkpoint")
        return 1
    best, value = result.best_checkpoint, result.best[f"best {cfg.tune.metric}"]
    print(f"best:  {best} ({cfg.tune.metric} {value:.4f})")
    print(f"next:  polymodal eval {best}  |  polymodal serve {best}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from polymodal.evaluation.run import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.checkpoint, args.dataset, split=args.split)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(format_metrics(metrics, f"eval {args.checkpoint} on {args.split}"))
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=2))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from polymodal.cluster import ensure_ray
    from polymodal.inference.model import list_models

    if not list_models(args.model_dir):
        raise FileNotFoundError(f"{args.model_dir}: no checkpoints (no polymodal.json found)")
    ensure_ray(args.address, metrics_port=args.metrics_port)
    from ray import serve

    from polymodal.serving.app import build_app

    app = build_app(
        args.model_dir,
        max_batch_size=args.max_batch_size,
        max_models=args.max_models,
        num_gpus=args.num_gpus,
        index_dir=args.index_dir,
        replicas=args.replicas,
    )
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(app, route_prefix="/")
    print(f"serving {args.model_dir} at http://{args.host}:{args.port} (docs: /docs); Ctrl-C stops")
    if args.metrics_port and not args.address:
        print(f"Prometheus metrics: http://{args.host}:{args.metrics_port}/metrics")
    if args.index_dir:
        print(f"search: POST /v1/search over the indexes in {args.index_dir}")
    sys.stdout.flush()  # to a log file too, before the wait that a SIGTERM ends
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    serve.shutdown()
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from polymodal.cluster import ensure_ray
    from polymodal.inference.offline import embed_dataset

    ensure_ray(args.address)
    rows = embed_dataset(args.checkpoint, args.dataset, args.out, split=args.split)
    print(f"wrote embeddings of {rows} rows ({args.split}) to {args.out}")
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from polymodal.cluster import ensure_ray
    from polymodal.inference.offline import build_index, check_index_inputs

    check_index_inputs(args.checkpoint, args.dataset, args.modality, args.split)
    ensure_ray(args.address)
    r = build_index(
        args.checkpoint,
        args.dataset,
        args.out,
        modality=args.modality,
        split=args.split,
        shard_rows=args.shard_rows,
        batch_size=args.batch_size,
        num_cpus=args.num_cpus,
        actors=args.actors,
        model_name=args.model,
    )
    print(
        f"indexed {r.rows} {r.modality} rows of {args.split} ({r.dim}-d, model '{r.model}') "
        f"into {r.shards} shards at {r.out}: {r.bytes_written / 1e6:.1f} MB in {r.seconds:.1f}s "
        f"({r.rows / r.seconds:.0f} rows/s)"
        + (f"; skipped {r.skipped} rows without {r.modality}" if r.skipped else "")
    )
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from polymodal.evaluation.report import screenshot, write_report

    page = write_report(args.run_dir, rows=args.rows)
    print(f"report: {page}")
    if args.screenshot:
        print(f"screenshot: {screenshot(page, args.screenshot)}")
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from polymodal.submit import follow, submit

    jobs, job_id = submit(
        args.kind, args.args, address=args.address, entrypoint_num_cpus=args.entrypoint_num_cpus
    )
    print(f"submitted {args.kind} job {job_id} to {jobs.get_address()}", flush=True)
    if args.no_wait:
        print(f"follow it: polymodal jobs logs {job_id} --follow")
        return 0
    try:
        status = follow(jobs, job_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job goes on (polymodal jobs stop {job_id} ends it)")
        return 130
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def _cmd_jobs(args: argparse.Namespace) -> int:
    from polymodal.submit import client, follow, format_jobs, format_status

    jobs = client(args.address)
    try:
        if args.jobs_command == "list":
            print(format_jobs(jobs.list_jobs()))
        elif args.jobs_command == "status":
            print(format_status(jobs.get_job_info(args.job_id)))
        elif args.jobs_command == "logs" and args.follow:
            return 0 if follow(jobs, args.job_id) == "SUCCEEDED" else 1
        elif args.jobs_command == "logs":
            print(jobs.get_job_logs(args.job_id), end="")
        else:
            stopped = jobs.stop_job(args.job_id)
            print(f"job {args.job_id}: " + ("stop requested" if stopped else "already finished"))
    except RuntimeError as exc:  # the Job API's answer, e.g. no such job
        print(f"polymodal: error: {exc}", file=sys.stderr)
        return 2
    return 0


def format_metrics(metrics: dict[str, float], title: str) -> str:
    rows = [(k, v) for k, v in sorted(metrics.items()) if k.startswith("val/")]
    width = max((len(k) for k, _ in rows), default=10)
    lines = [title, "-" * (width + 10)]
    lines += [f"{k:<{width}}  {v:.4f}" for k, v in rows]
    return "\n".join(lines)


def _add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polymodal",
        description="Joint training of multimodal models on Ray.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="ingest and inspect datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    ing = data_sub.add_parser(
        "ingest",
        help="write a source as a polymodal dataset (manifest + Parquet shards)",
        description="SOURCE is builtin:digits, builtin:fashion-mnist, builtin:digits-trimodal, "
        "builtin:asterisk, builtin:emoji; webdataset tars "
        "('shards/{00000..00099}.tar', local or s3://: key.jpg|png|webp, key.txt|json, key.cls); "
        "a Parquet or CSV file or directory with --map; or a folder holding index.csv or "
        "index.jsonl "
        "(columns: image (file path), text, label, optional id, split). Sources of several "
        "shards are read in parallel by Ray Data tasks.",
    )
    ing.add_argument("source")
    ing.add_argument("out", help="output dataset directory")
    ing.add_argument("--strict", action="store_true", help="fail on the first bad row")
    ing.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of ids in val when the source has no split (default 0.1)",
    )
    ing.add_argument("--rows-per-shard", type=int, default=10_000)
    ing.add_argument(
        "--map",
        nargs="+",
        metavar="FIELD=COLUMN",
        help="SOURCE is a Parquet or CSV table: its columns for image, text, vector, label, id "
        "(e.g. --map image=jpg text=caption; vector=COL for a list column or "
        "vector=C1,C2,... for numeric columns)",
    )
    ing.add_argument("--limit", type=int, default=None, help="read at most N rows (per split)")
    ing.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT (only once the new dataset is complete)",
    )
    ing.set_defaults(func=_cmd_ingest)
    ins = data_sub.add_parser(
        "inspect",
        help="print schema, counts per split and a few rows",
        description="Print a dataset's schema, row counts per split and its first rows.",
    )
    ins.add_argument("dataset")
    ins.add_argument("--rows", type=int, default=5)
    ins.set_defaults(func=_cmd_inspect)
    val = data_sub.add_parser(
        "validate",
        help="check shards against the manifest and decode every row (exit 1 on problems)",
        description="Check every shard (present, row count, schema, checksum) and decode "
        "every row in parallel with Ray Data; print problems and bad rows by reason.",
    )
    val.add_argument("dataset")
    _add_address(val)
    val.set_defaults(func=_cmd_validate)

    train = sub.add_parser(
        "train",
        help="train on Ray Train from a YAML config",
        description="Train from CONFIG with key=value overrides. Starting a run name again "
        "resumes it from its last checkpoint.",
    )
    train.add_argument("config", help="YAML config, e.g. jobs/configs/fashion.yaml")
    train.add_argument("overrides", nargs="*", help="key=value, e.g. train.epochs=3")
    _add_address(train)
    train.set_defaults(func=_cmd_train)

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
    _add_address(tu)
    tu.set_defaults(func=_cmd_tune)

    ev = sub.add_parser("eval", help="recall@K, accuracy and zero-shot accuracy of a checkpoint")
    ev.add_argument("checkpoint", help="checkpoint directory (holds polymodal.json)")
    ev.add_argument("dataset", nargs="?", help="dataset (default: the one it was trained on)")
    ev.add_argument("--split", default="val")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.add_argument("--out", help="also write the metrics as JSON to this file")
    ev.set_defaults(func=_cmd_eval)
    em = sub.add_parser(
        "embed",
        help="embed a dataset split with Ray Data (batch inference) into Parquet",
        description="Write id, label and one <modality>_embedding column per modality.",
    )
    em.add_argument("checkpoint")
    em.add_argument("dataset")
    em.add_argument("out", help="output directory of Parquet files")
    em.add_argument("--split", default="val")
    _add_address(em)
    em.set_defaults(func=_cmd_embed)
    ix = sub.add_parser(
        "index",
        help="build an exact top-k search index of one modality of a dataset split",
        description="Embed one modality of a split with Ray Data and write OUT (local or "
        "s3://): shards of L2-normalised float32 vectors (.npy, memory-mapped when searched) "
        "with row ids and labels, and index.json written last. `polymodal serve --index-dir` "
        "serves a directory of such indexes at POST /v1/search.",
    )
    ix.add_argument("checkpoint")
    ix.add_argument("dataset")
    ix.add_argument("out", help="index directory (local or s3://); a rebuild replaces it")
    ix.add_argument("--modality", default="image", help="what the index holds (default image)")
    ix.add_argument("--split", default="val")
    ix.add_argument("--shard-rows", type=int, default=100_000, help="rows per shard file")
    ix.add_argument("--batch-size", type=int, default=256, help="rows per embedding batch")
    ix.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per embedding actor")
    ix.add_argument("--actors", type=int, default=1, help="embedding actors")
    ix.add_argument(
        "--model", help="model name searches use (default: the checkpoint directory's name)"
    )
    _add_address(ix)
    ix.set_defaults(func=_cmd_index)

    sv = sub.add_parser(
        "serve",
        help="serve checkpoints over HTTP (OpenAI-compatible /v1/embeddings, /v1/classify)",
        description="Serve a checkpoint, or a directory of checkpoints chosen by `model`, on "
        "an embedded Ray Serve (or --address).",
    )
    sv.add_argument("model_dir", help="a checkpoint directory, or a directory of them")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--max-batch-size", type=int, default=32)
    sv.add_argument("--max-models", type=int, default=4, help="checkpoints loaded per replica")
    sv.add_argument("--num-gpus", type=float, default=0, help="GPUs per embedder replica")
    sv.add_argument("--replicas", type=int, default=1, help="embedder replicas")
    sv.add_argument(
        "--index-dir",
        help="a directory of `polymodal index` outputs (local or s3://) for POST /v1/search",
    )
    sv.add_argument(
        "--metrics-port", type=int, default=8080, help="Prometheus /metrics of the embedded Ray"
    )
    _add_address(sv)
    sv.set_defaults(func=_cmd_serve)

    rp = sub.add_parser(
        "report",
        help="an HTML page of a finished run: curves, metrics, retrieval gallery, projection",
        description="Write RUN_DIR/report/index.html and its PNGs (training writes it at the "
        "end too): loss curves per term, the recall@K / accuracy table, text → image gallery, "
        "retrieval examples for other modalities, a 2-D projection of val embeddings coloured "
        "by label, and the config.",
    )
    rp.add_argument("run_dir", help="a run directory (holds metrics.json), local or s3://")
    rp.add_argument("--rows", type=int, default=1000, help="val rows embedded for the figures")
    rp.add_argument(
        "--screenshot", metavar="PNG", help="also save a PNG of the page (headless Chromium)"
    )
    rp.set_defaults(func=_cmd_report)

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
        "--entrypoint-num-cpus", type=float, default=None, help="CPUs reserved for the driver"
    )
    sb.set_defaults(func=_cmd_submit)

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
        cmd.set_defaults(func=_cmd_jobs)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Options of a submitted command (e.g. embed's --split) are passed through to the job.
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "submit":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.args += extra
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError, ConnectionError) as exc:
        print(f"polymodal: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
