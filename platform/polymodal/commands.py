"""What each `polymodal` subcommand does with its parsed arguments: call one function of
the package and print the result (cli.py builds the parser and dispatches here)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from polymodal.config import Config


def cmd_check_config(args: argparse.Namespace) -> int:
    from polymodal.config import ConfigError, load_config
    from polymodal.train.init_from import with_init_model

    try:
        cfg = with_init_model(load_config(args.config, args.overrides))
    except ConfigError as exc:
        print(f"polymodal: error: {exc}", file=sys.stderr)
        return 1
    set_keys = len(args.overrides)
    print(
        f"{args.config}: valid ({cfg.train.name}: {', '.join(cfg.model.modalities)}; "
        f"{set_keys} override{'s' if set_keys != 1 else ''})"
    )
    return 0


def _checked_config(args: argparse.Namespace) -> Config:
    """The config with its overrides and train.init_from's model section, checked."""
    from polymodal.config import load_config
    from polymodal.train.init_from import with_init_model

    cfg = load_config(args.config, args.overrides)
    cfg.storage.apply()  # train.init_from may be on s3://
    return with_init_model(cfg)


def cmd_train(args: argparse.Namespace) -> int:
    # Checked before torch and Ray are imported: a config error prints in well under 2 s.
    cfg = _checked_config(args)
    from polymodal.evaluation.report import write_report
    from polymodal.train.run import best_effort, fit

    result = fit(cfg, address=args.address)
    page = f"{result.run_dir}/report/index.html"
    reported = best_effort(page, lambda: write_report(result.run_dir))
    if cfg.train.tracking:
        from polymodal.train.tracking import attach_run_files

        best_effort("the tracked run's files", lambda: attach_run_files(result.run_dir))
    print(format_metrics(result.metrics, f"run {cfg.train.name}"))
    print(f"checkpoint: {result.checkpoint}")
    print(f"metrics:    {result.run_dir}/metrics.json")
    print(f"plot:       {result.run_dir}/loss_curves.png")
    if reported:
        print(f"report:     {page}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    cfg = _checked_config(args)  # before torch and Ray, as for train
    from polymodal.tune.sweep import format_table, run_sweep

    result = run_sweep(cfg, address=args.address)
    print(format_table(result))
    print(f"table: {result.sweep_dir}/trials.csv (and .parquet)")
    print(f"plot:  {result.sweep_dir}/metric_vs_space.png")
    if result.best_checkpoint is None or result.best is None:  # both or neither
        print(f"no trial reported {cfg.tune.metric}; no best checkpoint")
        return 1
    best, value = result.best_checkpoint, result.best[f"best {cfg.tune.metric}"]
    print(f"best:  {best} ({cfg.tune.metric} {value:.4f})")
    print(f"next:  polymodal eval {best}  |  polymodal serve {best}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from polymodal.data.format import read_manifest
    from polymodal.run_meta import meta_of

    # Before torch (seconds): the checkpoint (not its run directory), the dataset, --out.
    meta = meta_of(args.checkpoint)
    if not args.clip_benchmark:
        read_manifest(args.dataset or meta.dataset)
    if args.out and Path(args.out).is_dir():
        raise IsADirectoryError(f"--out {args.out}: is a directory; give a file for the JSON")
    if args.mteb or args.clip_benchmark:
        result = _harness_eval(args, meta)
        print(json.dumps(result, indent=2))
    else:
        from polymodal.evaluation.run import evaluate_checkpoint

        result = evaluate_checkpoint(args.checkpoint, args.dataset, split=args.split)
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(format_metrics(result, f"eval {args.checkpoint} on {args.split}"))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


def _harness_eval(args: argparse.Namespace, meta) -> dict:
    """`polymodal eval --mteb | --clip-benchmark`: the harness's scores of the checkpoint."""
    from polymodal.inference.model import LoadedModel

    model = LoadedModel.load(args.checkpoint)
    name = Path(str(args.checkpoint).rstrip("/")).name
    if args.clip_benchmark:
        from polymodal.integrations.clip_benchmark import evaluate_layout

        return evaluate_layout(model, args.clip_benchmark, label=name)
    from polymodal.integrations.mteb import evaluate_mteb, tasks_for

    ev = meta.run_config(checked=False).eval
    specs = [t.strip() for t in args.mteb.split(",") if t.strip()]
    tasks = tasks_for(specs, args.dataset or meta.dataset, args.split, meta.zero_shot_templates)
    prompts = {"query": ev.query_prompt, "document": ev.document_prompt}
    return evaluate_mteb(model, name, f"step{meta.step}", tasks, prompts, args.mteb_output)


def cmd_export(args: argparse.Namespace) -> int:
    from polymodal import storage
    from polymodal.run_meta import meta_of

    meta_of(args.checkpoint)  # before torch (seconds), as OUT
    storage.check_output_dir(args.out, "OUT", {"the checkpoint": args.checkpoint})
    from polymodal.export import export_checkpoint

    print(json.dumps(export_checkpoint(args.checkpoint, args.out, args.format), indent=2))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from polymodal.openclip import import_open_clip

    result = import_open_clip(args.model, args.weights, args.out)
    print(json.dumps(result, indent=2))
    print(f"fine-tune it: polymodal train CONFIG train.init_from={args.out}", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from polymodal.serving import preflight

    # Every flag checked before Ray starts (seconds, and pages of logs, later). An embedded
    # cluster is this machine's alone: its model replica gets every CPU, as a server would.
    embedded = not (args.address or os.environ.get("RAY_ADDRESS"))
    cpus = args.num_cpus or (float(os.cpu_count() or 1) if embedded else None)
    settings = preflight.serve_args(
        args.model_dir,
        max_batch_size=args.max_batch_size,
        max_models=args.max_models,
        num_gpus=args.num_gpus,
        index_dir=args.index_dir,
        replicas=args.replicas,
        threads=args.threads,
        **({"num_cpus": cpus} if cpus else {}),
    )
    preflight.check_model_dir(args.model_dir)
    if args.index_dir:
        preflight.check_index_dir(args.index_dir)
    if embedded:  # an embedded cluster listens here; a cluster's head, not here
        ports = {"--port": args.port, "--grpc-port": args.grpc_port}
        preflight.check_ports(args.host, ports | {"--metrics-port": args.metrics_port or None})
    from polymodal.cluster import ensure_ray, require
    from polymodal.serving import launch

    # One replica on this machine answers at --port itself; more share Serve's proxy there.
    direct = embedded and settings.replicas == 1
    launch.set_cluster_env(direct, args.port, args.grpc_port)
    # The replicas' CPUs, and the searcher's (half a replica's) beside them.
    need = settings.num_cpus * (settings.replicas + 0.5 * bool(args.index_dir))
    ensure_ray(args.address, min_cpus=need, metrics_port=args.metrics_port, dashboard=False)
    if args.num_gpus:
        require(
            [{"GPU": args.num_gpus}] * args.replicas,
            f"--num-gpus {args.num_gpus:g} with --replicas {args.replicas}",
            "Serve on CPUs (--num-gpus 0), fewer replicas, or add GPU nodes.",
            wait_s=args.resources_wait_s,
        )
    # Before deploying: a direct-ingress replica answers before serve.run returns, and a
    # SIGTERM then must still shut Serve and Ray down (Ray's own handler just exits).
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    launch.deploy(settings, args.host, args.port, args.grpc_port, direct)
    print(f"serving {args.model_dir} at http://{args.host}:{args.port} (docs: /docs); Ctrl-C stops")
    if args.metrics_port and not args.address:
        print(f"Prometheus metrics: http://{args.host}:{args.metrics_port}/metrics")
    if args.index_dir:
        print(f"search: POST /v1/search over the indexes in {args.index_dir}")
    if args.grpc_port:
        print(f"gRPC: {args.host}:{args.grpc_port} (polymodal/serving/embeddings.proto)")
    sys.stdout.flush()  # to a log file too, before the wait that a SIGTERM ends
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    from ray import serve

    serve.shutdown()
    return 0


def _check_embedding(
    args: argparse.Namespace, reusable: Callable[[list[str]], bool] | None = None
) -> None:
    """embed's and index's inputs, before torch and Ray (seconds): refused before any row is
    embedded, and OUT never inside DATASET or CHECKPOINT."""
    from polymodal import storage
    from polymodal.data.format import read_manifest
    from polymodal.run_meta import meta_of

    meta_of(args.checkpoint)
    read_manifest(args.dataset)
    inputs = {"the dataset": args.dataset, "the checkpoint": args.checkpoint}
    storage.check_output_dir(args.out, "OUT", inputs, reusable)


def cmd_embed(args: argparse.Namespace) -> int:
    _check_embedding(args)
    from polymodal.cluster import ensure_ray
    from polymodal.inference.offline import embed_dataset

    ensure_ray(args.address)
    rows = embed_dataset(args.checkpoint, args.dataset, args.out, split=args.split)
    print(f"wrote embeddings of {rows} rows ({args.split}) to {args.out}")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from polymodal.retrieval.index import rebuildable

    _check_embedding(args, rebuildable)  # an index already at OUT is rebuilt
    from polymodal.cluster import ensure_ray, require
    from polymodal.inference.offline import build_index, check_index_inputs

    check_index_inputs(args.checkpoint, args.dataset, args.modality, args.split, args.dimensions)
    ensure_ray(args.address, args.num_cpus * args.actors)
    require(
        [{"CPU": args.num_cpus}] * args.actors,
        f"--actors {args.actors} of --num-cpus {args.num_cpus:g}",
        "Give fewer --actors or a smaller --num-cpus.",
    )
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
        dimensions=args.dimensions,
        precision=args.precision,
        kind=args.kind,
    )
    print(
        f"indexed {r.rows} {r.modality} rows of {args.split} ({r.dim}-d, model '{r.model}') "
        f"into {r.shards} shards at {r.out}: {r.bytes_written / 1e6:.1f} MB in {r.seconds:.1f}s "
        f"({r.rows / r.seconds:.0f} rows/s)"
        + (f"; skipped {r.skipped} rows without {r.modality}" if r.skipped else "")
    )
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    from polymodal.inference.mine import MineSettings, check_mine_inputs, mine

    settings = MineSettings(
        anchor=args.anchor,
        candidates=args.candidates,
        num_negatives=args.num_negatives,
        range_min=args.range_min,
        range_max=args.range_max,
        max_score=args.max_score,
        margin=args.margin,
        relative_margin=args.relative_margin,
        exclude_same_label=args.exclude_same_label,
    )
    check_mine_inputs(args.checkpoint, args.dataset, args.out, settings, args.overwrite)
    from polymodal.cluster import ensure_ray

    ensure_ray(args.address)
    r = mine(
        args.checkpoint,
        args.dataset,
        args.out,
        settings,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
    )
    per_row = r.negatives / r.rows if r.rows else 0.0
    print(
        f"mined {r.mined}/{r.rows} train rows ({args.anchor}->{args.candidates}) into {r.out}: "
        f"{per_row:.2f} negatives per row, mean positive score {r.positive_score:.3f}, mean "
        f"negative score {r.negative_score:.3f}, {r.seconds:.1f}s "
        f"({r.rows / max(r.seconds, 1e-9):.0f} rows/s)"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from polymodal.run_meta import check_run_dir

    check_run_dir(args.run_dir)  # before torch: a checkpoint given instead, no metrics.json
    from polymodal.evaluation.report import screenshot, write_report

    page = write_report(args.run_dir, rows=args.rows)
    print(f"report: {page}")
    if args.screenshot:
        print(f"screenshot: {screenshot(page, args.screenshot)}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
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


def cmd_jobs(args: argparse.Namespace) -> int:
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
