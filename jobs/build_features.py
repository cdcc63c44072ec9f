"""Build a feature set: ``ray job submit --working-dir . -- python jobs/build_features.py
--config configs/features-example.yaml``. A thin wrapper over ``Platform.build_features``."""

from __future__ import annotations

import argparse
import json
import sys

from mlplat.api import connect
from mlplat.errors import MlplatError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="feature-set spec YAML")
    parser.add_argument("--root", default=None, help="storage root (default: MLPLAT_ROOT, else the cluster's)")
    parser.add_argument("--address", default=None, help="Ray address (default: MLPLAT_RAY_ADDRESS, else RAY_ADDRESS, which Ray sets in a job, else a local Ray)")
    args = parser.parse_args(argv)
    try:
        fsv = connect(root=args.root, address=args.address).build_features(args.config)
    except MlplatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"feature_set": fsv.name, "version": fsv.version, "rows": fsv.num_rows,
                      "features": list(fsv.feature_columns), "split": fsv.split.get("counts", {})}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
