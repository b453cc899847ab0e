"""train.sample_log_dir: every worker appends the sample keys of each step it trains, a line per
step and a file per epoch, rank and process, so that an audit can tell what a restart repeated."""

from __future__ import annotations

import os

from polymodal.batch import Batch


class SampleLog:
    """The sample keys of one rank's epoch, or nothing without a directory."""

    def __init__(self, directory: str, epoch: int, rank: int):
        self.file = None
        if directory:
            os.makedirs(directory, exist_ok=True)
            self.file = open(f"{directory}/epoch-{epoch}-rank-{rank}-pid-{os.getpid()}.txt", "a")

    def write(self, batch: Batch) -> None:
        if self.file is None or batch.sample is None:
            return
        self.file.write(" ".join(map(str, batch.sample.tolist())) + "\n")
        self.file.flush()  # each step: a killed worker's last line is there

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
