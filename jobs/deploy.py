"""Safe rollout from a job (docs/rollout.md). Thin wrappers over ``Platform.deploy`` and
``Platform.rollback``; each prints its result as JSON:

  ray job submit --working-dir . -- python jobs/deploy.py deploy --model churn [--version 3] [--canary 10]
  ray job submit --working-dir . -- python jobs/deploy.py promote --model churn     # the running canary -> 100%
  ray job submit --working-dir . -- python jobs/deploy.py rollback --model churn

``deploy`` pre-warms the version (default: the latest VALIDATED) on every replica that will
serve it, then gives it all traffic or ``--canary`` percent of it; it needs a running serving
app (``mlplat serve start``). ``promote`` raises the model's running canary to 100%.
``rollback`` ends a running canary, else puts the previous version back in production.

Exit code: 0 done; 1 the deployment FAILED (pre-warm failed; nothing moved); 2 an error (no
serving app, no VALIDATED version, no canary to promote, nothing to roll back to), printed as
one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mlplat.api import Platform, connect
from mlplat.errors import MlplatError, NotFound
from mlplat.records import DeploymentState


def _deploy(p: Platform, args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    d = p.deploy(args.model, args.version, canary_percent=args.canary, region=args.region, force=args.force)
    return _deployment(d), 1 if d.state == DeploymentState.FAILED else 0


def _promote(p: Platform, args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    canaries = [d for d in p.registry.list_deployments(name=args.model, active=True)
                if d.region == p.config.check_region(args.region) and d.state == DeploymentState.CANARY]
    if not canaries:
        where = f" in region {args.region}" if args.region else ""
        raise NotFound(f"no canary of {args.model}{where} is running, so there is nothing to promote; start one with "
                       f"`jobs/deploy.py deploy --model {args.model} --canary 10`, or deploy a version to all "
                       f"traffic with `jobs/deploy.py deploy --model {args.model} --version N`")
    d = p.deploy(args.model, canaries[0].version, canary_percent=100, region=args.region)
    return _deployment(d), 1 if d.state == DeploymentState.FAILED else 0


def _rollback(p: Platform, args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    v = p.rollback(args.model, region=args.region)
    return {"model": args.model, "region": args.region, "production": v.version, "state": v.state.value}, 0


def _deployment(d: Any) -> dict[str, Any]:
    return {"model": d.name, "version": d.version, "state": d.state.value, "canary_percent": d.canary_percent,
            "scope": d.scope, "deployment": d.id, "previous_version": d.previous_version, "reason": d.reason}


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", required=True)
    common.add_argument("--region", default=None, help="one regional cell only (production.<region>)")
    common.add_argument("--root", default=None, help="storage root (default: MLPLAT_ROOT, else the cluster's)")
    common.add_argument("--address", default=None, help="Ray address (default: MLPLAT_RAY_ADDRESS, else RAY_ADDRESS, which Ray sets in a job, else a local Ray)")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True, metavar="{deploy,promote,rollback}")
    for name, run, text in (("deploy", _deploy, "pre-warm a version, then move traffic to it"),
                            ("promote", _promote, "give the running canary all traffic"),
                            ("rollback", _rollback, "end the canary, else put the previous version back")):
        sub = actions.add_parser(name, help=text, description=text, parents=[common])
        sub.set_defaults(run=run)
        if name == "deploy":
            sub.add_argument("--version", type=int, default=None, help="default: the latest VALIDATED version")
            sub.add_argument("--canary", type=float, default=None, metavar="PERCENT",
                             help="give the version this share (0-100) of traffic first; default: all of it")
            sub.add_argument("--force", action="store_true", help="redeploy an ARCHIVED/PRODUCTION version")
    args = parser.parse_args(argv)
    if getattr(args, "canary", None) is not None and not 0 <= args.canary <= 100:
        parser.error(f"--canary must be a percent between 0 and 100, got {args.canary:g}")
    try:
        out, code = args.run(connect(root=args.root, address=args.address), args)
    except MlplatError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
