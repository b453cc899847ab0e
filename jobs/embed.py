# ray job submit --working-dir . -- python jobs/embed.py CHECKPOINT DATASET OUT --split val
"""Ray job entrypoint: batch-embed a dataset split with a checkpoint on the job's cluster.
Thin on purpose: the arguments are those of `polymodal embed`."""

import sys

from polymodal.cli import main

if __name__ == "__main__":
    sys.exit(main(["embed", *sys.argv[1:]]))
