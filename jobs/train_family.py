"""Train, and optionally validate and promote, a model family:
``ray job submit --working-dir . -- python jobs/train_family.py --config configs/family.yaml --validate``.

A thin wrapper over ``Platform.train_family`` / ``validate_family`` / ``promote_family``
(docs/families.md). Exit code 0 when every step ran (members that were skipped, failed or
rejected are listed in the JSON, they do not fail the job), 2 on an error.
"""

from __future__ import annotations

import argparse
import json
import sys

from mlplat.api import connect
from mlplat.errors import MlplatError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="family config YAML (configs/family*.yaml)")
    parser.add_argument("--validate", action="store_true", help="validate every member after training")
    parser.add_argument("--promote", action="store_true", help="with --validate: promote every VALIDATED member")
    parser.add_argument("--root", default=None, help="storage root (default: MLPLAT_ROOT, else the cluster's)")
    parser.add_argument("--address", default=None, help="Ray address (default: MLPLAT_RAY_ADDRESS, else RAY_ADDRESS, which Ray sets in a job, else a local Ray)")
    args = parser.parse_args(argv)
    if args.promote and not args.validate:
        parser.error("--promote needs --validate (only VALIDATED members are promoted)")
    out: dict[str, object] = {}
    try:
        p = connect(root=args.root, address=args.address)
        trained = p.train_family(args.config)
        out["train"] = {k: v for k, v in trained.to_dict().items() if k != "members"}
        if args.validate:
            validated = p.validate_family(trained.family, trained.version)
            out["validate"] = {"counts": validated.counts, "report": validated.report_path,
                               "rejected": {r["member"]: r["reasons"] for r in validated.rows if r["verdict"] == "REJECTED"}}
        if args.promote:
            out["promote"] = p.promote_family(trained.family, trained.version).counts
    except MlplatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(json.dumps(out, indent=2, default=str))
        return 2
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
