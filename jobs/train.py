# ray job submit --working-dir . -- python jobs/train.py jobs/configs/fashion.yaml train.epochs=3
"""Ray job entrypoint: train from CONFIG [key=value ...] on the cluster the job runs on.
Thin on purpose: the arguments are those of `polymodal train`."""

import sys

from polymodal.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
