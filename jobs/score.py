"""Batch scoring: ``ray job submit --working-dir . -- python jobs/score.py --model clicks-ctr
--dataset clicks [--version 3]``. A thin wrapper over ``Platform.score``: Ray Data batch
inference of ``--dataset`` with the model's production version (or ``--version``, a number or an
alias such as ``canary``), written as Parquet and registered in the catalog as a dataset of kind
``inference`` (default name ``<model>-scores``). Prints the new dataset version as JSON.

Exit code 0 when the predictions are registered, 2 on error (unknown model or dataset, no
production version, key columns missing), printed as one line on stderr."""

from __future__ import annotations

import argparse
import json
import sys

from mlplat.api import connect
from mlplat.errors import MlplatError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the model that scores")
    parser.add_argument("--dataset", required=True, help="the dataset to score (latest ready version by default)")
    parser.add_argument("--dataset-version", type=int, default=None)
    parser.add_argument("--version", default=None, help="model version or alias (default: production)")
    parser.add_argument("--output", default=None, help="name of the inference dataset (default: MODEL-scores)")
    parser.add_argument("--key", dest="keys", action="append", default=None,
                        help="input column to carry beside each prediction (repeat; default: the feature set's "
                             "entity key and event time)")
    parser.add_argument("--root", default=None, help="storage root (default: MLPLAT_ROOT, else the cluster's)")
    parser.add_argument("--address", default=None, help="Ray address (default: MLPLAT_RAY_ADDRESS, else RAY_ADDRESS, which Ray sets in a job, else a local Ray)")
    args = parser.parse_args(argv)
    version: int | str | None = int(args.version) if args.version and args.version.isdigit() else args.version
    try:
        p = connect(root=args.root, address=args.address)
        dv = p.score(args.model, args.dataset, version=version, dataset_version=args.dataset_version,
                     output=args.output, keys=args.keys)
        path = p.storage.uri_of(dv.path)
    except MlplatError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(json.dumps({"dataset": dv.name, "version": dv.version, "kind": dv.kind.value, "rows": dv.num_rows,
                      "source": dv.source, "path": path}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
