"""Check a model for drift: ``ray job submit --working-dir . -- python jobs/drift.py --model churn
--window 1h``. A thin wrapper over ``Platform.drift`` (Ray Data pass, report, ``drift_checked``
event); prints the result as JSON. Exit code 0 when the check ran (1 with ``--fail-on-drift`` when
it found drift), 2 on error (unknown model, no reference statistics, no telemetry in the window, a bad
``--end`` such as epoch milliseconds), printed as one line on stderr."""

from __future__ import annotations

import argparse
import json
import sys

from mlplat.api import connect
from mlplat.cli.monitor import parse_end
from mlplat.errors import MlplatError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--window", default=None, help="15m, 1h, 24h, 7d (default: the model's monitoring policy)")
    parser.add_argument("--version", type=int, default=None, help="default: production, else the latest version")
    parser.add_argument("--end", default=None, help="window end: unix seconds or ISO 8601 (default: now)")
    parser.add_argument("--fail-on-drift", action="store_true", help="exit 1 when the verdict is drift")
    parser.add_argument("--root", default=None, help="storage root (default: MLPLAT_ROOT, else the cluster's)")
    parser.add_argument("--address", default=None, help="Ray address (default: MLPLAT_RAY_ADDRESS, else RAY_ADDRESS, which Ray sets in a job, else a local Ray)")
    args = parser.parse_args(argv)
    try:
        result = connect(root=args.root, address=args.address).drift(
            args.model, window=args.window, version=args.version, end=parse_end(args.end))
    except (MlplatError, ValueError) as exc:  # bad input, unknown model, no telemetry...: one line, no traceback
        text = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {text}", file=sys.stderr)
        return 2
    v = result.verdict
    print(json.dumps({"model": result.model, "version": result.version, "window": result.window,
                      "start_s": result.start_s, "end_s": result.end_s, "rows": result.rows,
                      "status": v.status.value, "drifted": v.drifted, "drifted_features": list(v.drifted_features),
                      "prediction_drifted": None if v.prediction is None else v.prediction.drifted,
                      "reasons": list(v.reasons), "report": result.report}, indent=2))
    return 1 if args.fail_on_drift and v.drifted else 0


if __name__ == "__main__":
    sys.exit(main())
