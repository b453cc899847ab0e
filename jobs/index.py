# ray job submit --working-dir . -- python jobs/index.py CHECKPOINT DATASET OUT
"""Ray job entrypoint: build a retrieval index of a dataset split on the job's cluster.
Thin on purpose: the arguments are those of `polymodal index`."""

import sys

from polymodal.cli import main

if __name__ == "__main__":
    sys.exit(main(["index", *sys.argv[1:]]))
