"""Retrain a model now: ``ray job submit --working-dir . -- python jobs/retrain.py --model churn [--approve]``.

A manual trigger (docs/monitoring.md, "Retraining"): a new run with the request of the model's
last successful run, on the latest complete partitions (the feature set is rebuilt when it
lacks them), queued through the training queue.
- ``retrain: auto`` models start at once. ``manual`` models (and models without a retrain
  policy) get a pending request instead, unless ``--approve``: then the pending request (or
  a new one) is approved by you and the retrain starts.
- Inside a Ray job the driver lives as long as the job, so it waits for the run by default
  and then validates the new version (the rollout controller deploys it if the model's
  rollout is ``auto``). ``--no-wait`` returns once the run is queued (the rollout controller
  validates it when it finishes).

Exit code: 0 started (and, when waited for, trained and validated) or request recorded;
1 the run failed or its version was REJECTED; 2 an error; 3 nothing started (the reason is
printed: a run already queued, a request already pending).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mlplat.api import connect
from mlplat.config import acting_user
from mlplat.errors import MlplatError, NotFound
from mlplat.records import ModelState, RunState


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the model to retrain")
    parser.add_argument("--approve", action="store_true",
                        help="approve the pending request (or a new one) and start, whatever the policy's mode")
    parser.add_argument("--request", type=int, default=None, help="with --approve: which pending request")
    parser.add_argument("--note", default="", help="recorded with the approval")
    parser.add_argument("--no-wait", action="store_true", help="return once the run is queued")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for the run at most")
    parser.add_argument("--root", default=None, help="storage root (default: MLPLAT_ROOT, else the cluster's)")
    parser.add_argument("--address", default=None, help="Ray address (default: MLPLAT_RAY_ADDRESS, else RAY_ADDRESS, which Ray sets in a job, else a local Ray)")
    args = parser.parse_args(argv)
    from mlplat.lifecycle.retrain import approve_and_start, driver_hooks, finish_retrain, handle_trigger
    from mlplat.monitoring.retrain_requests import get_request, request_retrain

    out: dict[str, Any] = {"model": args.model}
    try:
        p = connect(root=args.root, address=args.address)
        registry, storage, by = p.registry, p.storage, acting_user()
        build, wake = driver_hooks(p.ensure_ray, p.config)
        cause = {"trigger": "manual", "by": by, "via": "jobs/retrain.py"}
        if args.approve:
            try:
                req = get_request(registry, args.model, args.request)
            except NotFound:
                if args.request is not None:
                    raise
                req = request_retrain(registry, args.model, trigger="manual", cause=cause, by=by,
                                      reason="jobs/retrain.py --approve")
            req, run = approve_and_start(registry, storage, args.model, request_id=req.id, by=by, note=args.note,
                                         build_features=build, wake=wake)
            out.update(action="start", reason=f"request {req.id} approved by {by}", request=req.model_dump(mode="json"))
        else:
            outcome = handle_trigger(registry, storage, args.model, "manual", cause, by=by, build_features=build, wake=wake)
            out.update(action=outcome.decision.action, reason=outcome.decision.reason)
            if outcome.request is not None:
                out["request"] = outcome.request.model_dump(mode="json")
                out["next"] = (f"approve: mlplat retrain approve {args.model} --request {outcome.request.id} "
                               "(or rerun this job with --approve)")
            if outcome.error:
                out["error"] = outcome.error
                print(json.dumps(out, indent=2, default=str))
                print(f"error: retrain of {args.model} not started: {outcome.error}", file=sys.stderr)
                return 2
            if outcome.run is None:
                print(json.dumps(out, indent=2, default=str))
                return 0 if outcome.request is not None else 3
            run = outcome.run
        if not args.no_wait:
            from mlplat.training.queue import wait_for_run

            run = wait_for_run(registry, run.run_id, timeout_s=args.timeout)
            out["outcome"] = finish_retrain(registry, storage, run.run_id)
        out["run"] = {k: v for k, v in run.model_dump(mode="json").items()
                      if k in ("run_id", "kind", "model", "version", "state", "metrics", "error", "request")}
    except MlplatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2, default=str))
    if run.state in (RunState.FAILED, RunState.CANCELLED):
        return 1
    if not args.no_wait and run.version is not None:
        state = registry.get_version(args.model, run.version).state
        if state == ModelState.REJECTED:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
