# ray job submit --working-dir . -- python jobs/mine.py CHECKPOINT DATASET OUT --anchor text
"""Ray job entrypoint: mine hard negatives of a dataset with a checkpoint on the job's cluster.
Thin on purpose: the arguments are those of `polymodal mine`."""

import sys

from polymodal.cli import main

if __name__ == "__main__":
    sys.exit(main(["mine", *sys.argv[1:]]))
