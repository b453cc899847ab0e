# ray job submit --working-dir . -- python jobs/tune.py jobs/configs/tune-digits.yaml
"""Ray job entrypoint: a tuning sweep from CONFIG [key=value ...] on the job's cluster.
Thin on purpose: the arguments are those of `polymodal tune`."""

import sys

from polymodal.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
