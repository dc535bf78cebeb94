"""Prints what a W&B offline run file holds, decoded with wandb's own protobuf schema.

Usage: python read_wandb.py RUN.wandb
  ->  {"run": {"id", "name", "project", "group", "config": {...}},
       "history": [{"step": n, "values": {"train/loss": v, ...}}, ...]}

The installed wandb (0.31) has no Python reader of its transaction log any more (the
Go core writes and syncs it), so this reads the framing -- the LevelDB log format that
the core writes `.wandb` files in: a 7-byte header `:W&B` + 0xBEE1 + version 0, then
32 KiB blocks of chunks `crc32c u32 | length u16 | type u8` (FULL 1, FIRST 2, MIDDLE 3,
LAST 4) -- and decodes every record with `wandb.proto.wandb_internal_pb2.Record`.
"""

import json
import struct
import sys

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)


def records(data):
    if data[:7] != HEADER:
        raise SystemExit("not a .wandb file: header %r" % data[:7])
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def main():
    data = open(sys.argv[1], "rb").read()
    out = {"run": None, "history": []}
    for r in records(data):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["run"] = {
                "id": r.run.run_id,
                "name": r.run.display_name,
                "project": r.run.project,
                "group": r.run.run_group,
                "config": {
                    u.key: json.loads(u.value_json)
                    for u in r.run.config.update
                    if u.key != "_wandb"
                },
            }
        elif kind == "history":
            values = {}
            for item in r.history.item:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith("_"):
                    values[key] = json.loads(item.value_json)
            out["history"].append({"step": r.history.step.num, "values": values})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
