"""The `polymodal data` command (ingest, inspect, validate, export): its parser and what each
subcommand does."""

from __future__ import annotations

import argparse

from polymodal.cli_types import add_address, number
from polymodal.data.clip_benchmark import KINDS


def add_data_parser(sub) -> None:
    data = sub.add_parser("data", help="ingest and inspect datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    ing = data_sub.add_parser(
        "ingest",
        help="write a source as a polymodal dataset (manifest + Parquet shards)",
        description="SOURCE is builtin:digits, builtin:fashion-mnist, builtin:digits-trimodal, "
        "builtin:digits-spoken, "
        "builtin:asterisk, builtin:emoji, builtin:emoji-spoken, builtin:emoji-bind-image, "
        "builtin:emoji-bind-speech, builtin:shapes-vqa, builtin:fashion-records; webdataset tars "
        "('shards/{00000..00099}.tar', local or s3://: key.jpg|png|webp, key.txt|json, key.cls); "
        "a Parquet or CSV file or directory with --map; a CLIP_benchmark dataset directory "
        "(classnames.txt, {split}/nshards.txt); or a folder holding index.csv or index.jsonl "
        "(columns: image (file path), text, label, optional id, split). Sources of several "
        "shards are read in parallel by Ray Data tasks.",
    )
    ing.add_argument("source")
    ing.add_argument("out", help="output dataset directory")
    ing.add_argument("--strict", action="store_true", help="fail on the first bad row")
    ing.add_argument(
        "--val-fraction",
        type=number(float, 0, 1),
        default=0.1,
        help="share of ids in val when the source has no split (default 0.1)",
    )
    ing.add_argument("--rows-per-shard", type=number(int, 1), default=10_000)
    ing.add_argument(
        "--map",
        nargs="+",
        metavar="FIELD=COLUMN",
        help="SOURCE is a Parquet or CSV table: its columns for image, text, vector, label, id "
        "(e.g. --map image=jpg text=caption; vector=COL for a list column or "
        "vector=C1,C2,... for numeric columns)",
    )
    ing.add_argument(
        "--limit", type=number(int, 1), default=None, help="read at most N rows (per split)"
    )
    ing.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT (only once the new dataset is complete)",
    )
    ing.set_defaults(func=cmd_ingest)
    ins = data_sub.add_parser(
        "inspect",
        help="print schema, counts per split and a few rows",
        description="Print a dataset's schema, row counts per split and its first rows; "
        "given a YAML config, its datasets (data.path or data.sources): each one's rows per "
        "split, modalities, labels, weight and share of an epoch.",
    )
    ins.add_argument("dataset", help="a dataset, or a config (CONFIG [key=value ...])")
    ins.add_argument("overrides", nargs="*", help="a config's key=value overrides")
    ins.add_argument("--rows", type=number(int, 0), default=5)
    ins.set_defaults(func=cmd_inspect)
    val = data_sub.add_parser(
        "validate",
        help="check shards against the manifest and decode every row (exit 1 on problems)",
        description="Check every shard (present, row count, schema, checksum) and decode "
        "every row in parallel with Ray Data; print problems and bad rows by reason.",
    )
    val.add_argument("dataset")
    add_address(val)
    val.set_defaults(func=cmd_validate)
    ex = data_sub.add_parser(
        "export",
        help="write a dataset split in another tool's layout (CLIP_benchmark's webdataset)",
        description="clip_benchmark: OUT/classnames.txt, zeroshot_classification_templates.txt "
        "(the dataset's caption templates, {c} for the class), OUT/test/nshards.txt and "
        "OUT/test/N.tar (KEY.png|jpg|webp with KEY.cls); --task zeroshot_retrieval (the default "
        "for unlabelled data) writes KEY.txt captions and dataset_type.txt instead. Evaluate it "
        "with `clip_benchmark eval --dataset wds/NAME --dataset_root PARENT/{dataset}` or "
        "`polymodal eval CHECKPOINT --clip-benchmark OUT`.",
    )
    ex.add_argument("dataset")
    ex.add_argument("out", help="new or empty directory (local or s3://)")
    ex.add_argument("--format", required=True, choices=["clip_benchmark"])
    ex.add_argument("--split", default="val", help="the split written (as clip_benchmark's test)")
    ex.add_argument(
        "--task", choices=["auto", *KINDS], default="auto", help="clip_benchmark's task"
    )
    ex.set_defaults(func=cmd_export_data)


def cmd_ingest(args: argparse.Namespace) -> int:
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


def cmd_inspect(args: argparse.Namespace) -> int:
    if args.dataset.endswith((".yaml", ".yml")):  # a config: the datasets it trains on
        from polymodal.config import load_config
        from polymodal.data.inspect import inspect_sources

        print(inspect_sources(load_config(args.dataset, args.overrides)))
        return 0
    from polymodal.data.inspect import inspect_dataset

    print(inspect_dataset(args.dataset, rows=args.rows))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from polymodal.cluster import ensure_ray
    from polymodal.data.validate import validate_dataset

    ensure_ray(args.address)
    report = validate_dataset(args.dataset)
    print(report.format())
    return 0 if report.ok else 1


def cmd_export_data(args: argparse.Namespace) -> int:
    import json

    from polymodal import storage
    from polymodal.data.clip_benchmark import export_dataset

    storage.check_output_dir(args.out, "OUT", {"the dataset": args.dataset})
    print(json.dumps(export_dataset(args.dataset, args.out, args.split, args.task), indent=2))
    return 0
