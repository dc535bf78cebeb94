"""Prints the scalars of a TensorBoard log directory as TensorBoard itself reads them.

Usage: python read_tb.py LOGDIR  ->  {"tags": {"train/loss": [[step, value], ...], ...}}

Uses the `tensorboard` package's EventAccumulator (Reload, Tags, Scalars), the reader
behind TensorBoard's own scalar dashboard; nothing here parses the files itself.
"""

import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main():
    acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
    acc.Reload()
    tags = {
        tag: [[e.step, e.value] for e in acc.Scalars(tag)]
        for tag in acc.Tags()["scalars"]
    }
    print(json.dumps({"tags": tags, "file_version": acc.file_version}))


if __name__ == "__main__":
    main()
