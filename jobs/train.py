"""Train a model: ``ray job submit --working-dir . -- python jobs/train.py --config configs/train-example.yaml``.

A thin wrapper over ``Platform.train`` / ``Platform.tune`` / ``Platform.publish`` (docs/training.md).
Inside a Ray job the driver lives as long as the job, so it waits for the run by default.
"""

from __future__ import annotations

import argparse
import json
import sys

from mlplat.api import connect
from mlplat.errors import MlplatError
from mlplat.records import RunState


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=None, help="training config YAML (configs/train-*.yaml)")
    parser.add_argument("--tune", action="store_true", help="run the config's search space as a Ray Tune sweep")
    parser.add_argument("--publish", metavar="MODEL", default=None, help="register MODEL at --code-version and train it")
    parser.add_argument("--code-version", default=None, help="with --publish: the code version (git SHA)")
    parser.add_argument("--no-wait", action="store_true", help="queue and return the run id at once")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait at most")
    parser.add_argument("--root", default=None, help="storage root (default: MLPLAT_ROOT, else the cluster's)")
    parser.add_argument("--address", default=None, help="Ray address (default: MLPLAT_RAY_ADDRESS, else RAY_ADDRESS, which Ray sets in a job, else a local Ray)")
    args = parser.parse_args(argv)
    if not args.publish and not args.config:
        parser.error("--config is required (or --publish MODEL --code-version SHA)")
    wait = not args.no_wait
    try:
        p = connect(root=args.root, address=args.address)
        if args.publish:
            if not args.code_version:
                parser.error("--publish needs --code-version")
            run = p.publish(args.publish, args.code_version, config=args.config, wait=wait, timeout_s=args.timeout)
        elif args.tune:
            run = p.tune(args.config, wait=wait, timeout_s=args.timeout)
        else:
            run = p.train(args.config, wait=wait, timeout_s=args.timeout)
        if wait:
            run = p.run_status(run.run_id)
    except MlplatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    record = run.model_dump(mode="json")
    print(json.dumps({k: record[k] for k in ("run_id", "kind", "model", "version", "state", "metrics", "error", "result")},
                     indent=2, default=str))
    return 1 if run.state in (RunState.FAILED, RunState.CANCELLED) else 0


if __name__ == "__main__":
    sys.exit(main())
