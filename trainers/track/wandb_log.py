"""Logs ausa runs to Weights & Biases with the official `wandb` package.

Run by `ausa report ... --wandb` (ausa_track::wandb), which feeds it JSON lines on stdin:

    {"run": {"project": P, "name": N, "group": G, "config": {...}, "mode": "offline" | null, "dir": D | null}}
    {"log": {"step": 3, "values": {"train/loss": 5.1, "valid/word_ppl": 140.2}}}
    ...
    {"finish": {}}

and so on for every run. `null` leaves a setting to wandb (WANDB_PROJECT, WANDB_MODE,
WANDB_DIR and the rest of its environment). For each finished run it prints one line,
{"ausa_wandb_run": {"id": ..., "name": ..., "dir": ..., "url": ...}}, on stdout; wandb's own
messages go to stderr. Exit status 3: the `wandb` package is not installed.

Metrics only: no model, checkpoint or code is uploaded (save_code off).
"""

import json
import sys


def main():
    try:
        import wandb
    except ImportError as e:
        sys.stderr.write("ausa: cannot import wandb: %s\n" % e)
        return 3
    run = None
    for line in sys.stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        if "run" in message:
            spec = message["run"]
            run = wandb.init(
                project=spec.get("project"),
                name=spec.get("name"),
                group=spec.get("group"),
                config=spec.get("config"),
                mode=spec.get("mode"),
                dir=spec.get("dir"),
                job_type="train",
                save_code=False,
                reinit="finish_previous",
            )
        elif "log" in message:
            record = message["log"]
            run.log(record["values"], step=record["step"])
        elif "finish" in message:
            run.finish()
            settings = run.settings
            print(
                json.dumps(
                    {
                        "ausa_wandb_run": {
                            "id": run.id,
                            "name": run.name,
                            "dir": settings.sync_dir,
                            "url": None if settings.mode == "offline" else run.url,
                        }
                    }
                ),
                flush=True,
            )
            run = None
    return 0


if __name__ == "__main__":
    sys.exit(main())
