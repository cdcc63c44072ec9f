"""Validate a trained model version: ``ray job submit --working-dir . -- python jobs/validate.py
--config configs/validate-example.yaml`` (or ``--model churn --version 3``). A thin wrapper over
``Platform.validate``; exit code 0 when the version ends VALIDATED, 1 when REJECTED, 2 on error."""

from __future__ import annotations

import argparse
import json
import sys

from mlplat.api import connect
from mlplat.config import load_config
from mlplat.errors import MlplatError
from mlplat.validation import ValidationJobConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=None, help="validation job YAML (model, version, feature_set, policy)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--version", type=int, default=None)
    parser.add_argument("--feature-set", default=None, help="NAME@vN (default: the version's own feature set)")
    parser.add_argument("--root", default=None, help="storage root (default: MLPLAT_ROOT, else the cluster's)")
    parser.add_argument("--address", default=None, help="Ray address (default: MLPLAT_RAY_ADDRESS, else RAY_ADDRESS, which Ray sets in a job, else a local Ray)")
    args = parser.parse_args(argv)
    try:
        if args.config:
            job = load_config(args.config, ValidationJobConfig)
        elif args.model and args.version:
            job = ValidationJobConfig(model=args.model, version=args.version, feature_set=args.feature_set)
        else:
            parser.error("give --config, or --model and --version")
        out = connect(root=args.root, address=args.address).validate(
            job.model, job.version, feature_set=args.feature_set or job.feature_set, policy=job.policy)
    except MlplatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"model": out.name, "version": out.version, "state": out.state.value, "passed": out.passed,
                      "reasons": list(out.decision.reasons), "metrics": out.metrics, "approval": out.approval,
                      "report": out.report_path}, indent=2))
    return 0 if out.passed else 1


if __name__ == "__main__":
    sys.exit(main())
