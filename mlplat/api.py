"""The notebook facade: ``p = mlplat.connect()`` and everything hangs off ``p``.

Every CLI verb and every ``jobs/*.py`` script calls these same methods.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from functools import cached_property
from typing import Any

from mlplat.cluster_settings import (
    adopt_cluster_settings,
    cluster_settings,
    explicit_settings,
    job_env_vars,
    normalize_root,
    runtime_env_vars,
    unshared_secrets,
)
from mlplat.config import PlatformConfig, acting_user, env_setting, platform_config
from mlplat.records import Deployment, ModelVersion, Run, RunState
from mlplat.registry import REGISTRY_ACTOR_NAME, Registry, RegistryStore, connect_actor
from mlplat.storage import Storage, open_root

__all__ = ["Platform", "connect", "SETTINGS_KV_NAMESPACE"]

#: The namespace of Ray's internal key-value store where a platform publishes its settings
#: (key ``settings/<mlplat namespace>``); docs/operations.md, "Jobs on a cluster".
SETTINGS_KV_NAMESPACE = "mlplat"
_log = logging.getLogger("mlplat")


class Platform:
    """A handle on one mlplat installation: its settings, storage root and Ray cluster."""

    def __init__(self, config: PlatformConfig):
        self.config = config
        self._settled = False  # see _settle

    def __repr__(self) -> str:
        return f"Platform(root={self.storage.uri!r}, ray={self.config.ray_address or 'local'!r})"

    @cached_property
    def storage(self) -> Storage:
        self._settle_before_use()
        return open_root(self.config.root, self.config.s3)

    @cached_property
    def registry(self) -> Registry:
        """The registry, through the detached ``mlplat-registry`` actor.

        ``MLPLAT_REGISTRY_MODE=local`` skips Ray and opens the registry database
        (``registry.url``) in this process (single-user scripts, CLI tests); docs/registry.md.
        """
        if _local_registry_mode():
            return RegistryStore(self.config.registry_url())
        self.ensure_ray()
        return connect_actor(self.config)

    def ensure_ray(self, *, log_to_driver: bool | None = None) -> None:
        """Connect to Ray once: the configured address, else an embedded local instance; then
        agree on settings with the cluster (:meth:`_settle`).

        Inside a Ray job (``ray job submit``) the driver passes ``ray.init`` only the env vars
        that the job's runtime env does not set: Ray refuses to merge two that both set one, and
        the job's workers inherit the job's own. ``log_to_driver`` and the ``ray`` logger's level
        default to the console's choice (:func:`mlplat.console.quiet_ray`)."""
        import ray

        from mlplat.console import ray_init_options

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"namespace": self.config.namespace, **ray_init_options()}
            if log_to_driver is not None:
                kwargs["log_to_driver"] = log_to_driver
            if self.config.ray_address:
                kwargs["address"] = self.config.ray_address
            else:
                # The dashboard (on loopback) is not optional: Ray Train's PlacementGroupCleaner asks
                # the state API whether a trainer is alive, and without it the placement groups of
                # stopped trainers (Tune early stops, cancelled runs) are never freed.
                kwargs["include_dashboard"] = True
                kwargs["dashboard_host"] = "127.0.0.1"
                embedded = not os.environ.get("RAY_ADDRESS")  # a job's driver: RAY_ADDRESS names its cluster
                if embedded:
                    # ray.init() with no address joins the newest Ray it finds on this machine (any
                    # `ray start`, even another user's); embedded means our own.
                    kwargs["address"] = "local"
                    kwargs["dashboard_port"] = dashboard_port()
                # Serve's throughput/HAProxy modes act only if set before Ray starts.
                from mlplat.serving import apply_serve_env

                apply_serve_env(self.config)
            # Workers see the settings this process was given (they adopt the rest from the
            # cluster like any process); the root as an absolute URI: workers run elsewhere.
            env = {var: value for var in _FORWARDED_ENV if (value := env_setting(var)) is not None}
            if "root" in explicit_settings(self.config):
                env["MLPLAT_ROOT"] = normalize_root(self.config.root)
            if kwargs.get("address") == "local" and not os.environ.get("RAY_API_SERVER_ADDRESS"):
                # Ray's state API inside workers (Train's PlacementGroupCleaner asks it whether a
                # trainer is alive) finds its cluster through /tmp/ray/ray_current_cluster, which
                # only `ray start` writes: one left by an earlier `ray start` made every training
                # wait 12 s for a dead GCS. The workers of an embedded instance are told its own.
                env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{kwargs['dashboard_port']}"
            env = runtime_env_vars(env, job_env_vars(os.environ))
            if env:
                kwargs["runtime_env"] = {"env_vars": env}
            ray.init(**kwargs)
        self._settle()

    def _settle_before_use(self) -> None:
        """Before storage opens: when this process joins a running cluster, learn the cluster's
        settings first (a fresh embedded instance has none to learn, so it starts later)."""
        if self._settled or _local_registry_mode():
            return
        ray = sys.modules.get("ray")
        if self.config.ray_address or env_setting("RAY_ADDRESS") or (ray is not None and ray.is_initialized()):
            self.ensure_ray()

    def _settle(self) -> None:
        """Agree on settings with the cluster, once: publish this platform's settings (no
        secrets) in the cluster's key-value store when none are there, else adopt the
        published ones for every setting this process was not given; an explicit root,
        registry or S3 endpoint that disagrees is a ConfigError naming both values."""
        if self._settled:
            return
        from ray.experimental import internal_kv

        key = f"settings/{self.config.namespace}"
        raw = internal_kv._internal_kv_get(key, namespace=SETTINGS_KV_NAMESPACE)
        if raw is None:
            document = json.dumps(cluster_settings(self.config), sort_keys=True)
            if not internal_kv._internal_kv_put(key, document, overwrite=False, namespace=SETTINGS_KV_NAMESPACE):
                self._settled = True  # published: this platform's settings are the cluster's now
                return
            raw = internal_kv._internal_kv_get(key, namespace=SETTINGS_KV_NAMESPACE)  # another process was first
        published = json.loads(raw)
        adopted = adopt_cluster_settings(self.config, published)
        missing = unshared_secrets(adopted, published)
        if missing:
            _log.warning("the platform on this cluster was given %s (never published); this process has none and "
                         "reads S3 with the node's default credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                         "in its environment (ray job submit --runtime-env-json) if that fails", ", ".join(missing))
        if adopted != self.config:
            self.config = adopted
            self.__dict__.pop("storage", None)  # opened before the cluster's settings were known
        self._settled = True

    # -- data catalog (docs/data.md) ------------------------------------------------------
    def register_dataset(self, name: str, source: str | list[str], *, kind: str = "facts", format: str | None = None,
                         partition: str | None = None, tags: list[str] | tuple[str, ...] = (),
                         description: str = "") -> Any:
        """Register a new dataset version from Parquet/CSV/JSON (local or s3://); returns a
        :class:`~mlplat.records.DatasetVersion`."""
        from mlplat.data import register_dataset

        return register_dataset(self.storage, self.registry, name, source, kind=kind, format=format,
                                partition=partition, tags=tags, description=description)

    def append_partition(self, name: str, partition: str, source: str | list[str], *, version: int | None = None,
                         format: str | None = None) -> Any:
        """Append a hive partition (``date=2026-11-27``); its schema must match the dataset's."""
        from mlplat.data import append_partition

        return append_partition(self.storage, self.registry, name, partition, source, version=version, format=format)

    def complete_partition(self, name: str, partition: str, *, version: int | None = None) -> Any:
        """Mark a partition finished (writes the ``partition_completed`` registry event)."""
        from mlplat.data import complete_partition

        return complete_partition(self.registry, name, partition, version=version)

    def list_datasets(self, *, prefix: str | None = None, tag: str | None = None, column: str | None = None,
                      kind: str | None = None) -> list[Any]:
        from mlplat.data import list_datasets

        return list_datasets(self.registry, prefix=prefix, tag=tag, column=column, kind=kind)

    def search_datasets(self, query: str) -> list[Any]:
        from mlplat.data import search_datasets

        return search_datasets(self.registry, query)

    def dataset(self, name: str, version: int | None = None) -> Any:
        """The catalog record of a dataset version (latest ready by default)."""
        from mlplat.data import get_dataset

        return get_dataset(self.registry, name, version)

    def read_dataset(self, name: str, version: int | None = None, *, start: str | None = None,
                     end: str | None = None, columns: list[str] | None = None) -> Any:
        """A dataset version (optionally partitions ``start``..``end``) as a ``ray.data.Dataset``."""
        from mlplat.data import read_dataset

        self.ensure_ray()
        return read_dataset(self.storage, self.dataset(name, version), start=start, end=end, columns=columns)

    # -- feature sets (docs/data.md) -----------------------------------------------------
    def build_features(self, spec: Any) -> Any:
        """Fit + materialize + register a feature set from a spec (YAML path, dict or
        :class:`~mlplat.records.FeatureSetSpec`); returns the FeatureSetVersion."""
        from mlplat.features.build import load_spec, materialize, parse_spec

        spec = load_spec(spec) if isinstance(spec, str | os.PathLike) else parse_spec(spec)
        source = self.dataset(spec.source.dataset, spec.source.version)
        rng = spec.partitions
        self.ensure_ray()
        ds = self.read_dataset(source.name, source.version, start=rng.start if rng else None,
                               end=rng.end if rng else None)
        return materialize(self.storage, self.registry, spec, source, ds)

    def feature_set(self, name: str, version: int | None = None) -> Any:
        from mlplat.features.build import get_feature_set

        return get_feature_set(self.registry, name, version)

    def list_feature_sets(self, *, prefix: str | None = None, tag: str | None = None) -> list[Any]:
        from mlplat.features.build import list_feature_sets

        return list_feature_sets(self.registry, prefix=prefix, tag=tag)

    def feature_encoder(self, name: str, version: int | None = None) -> Any:
        """The fitted :class:`~mlplat.features.FeatureEncoder` of a feature-set version."""
        from mlplat.features.build import load_encoder

        return load_encoder(self.storage, self.feature_set(name, version))

    def read_features(self, name: str, version: int | None = None, *, split: str | None = None) -> Any:
        """Materialized feature rows as a ``ray.data.Dataset`` (optionally one split)."""
        from mlplat.features.build import read_feature_set

        self.ensure_ray()
        return read_feature_set(self.storage, self.feature_set(name, version), split=split)

    # -- training (docs/training.md) -----------------------------------------------------
    def _training_config(self, config: Any) -> Any:
        from mlplat.training import load_training_config, parse_training_config

        return load_training_config(config) if isinstance(config, str | os.PathLike) else parse_training_config(config)

    def _start_scheduler(self) -> None:
        from mlplat.training.queue import ensure_scheduler

        self.ensure_ray()
        ensure_scheduler(self.config)

    def train(self, config: Any, *, wait: bool = False, timeout_s: float | None = None, priority: int = 0,
              progress: bool | None = None) -> Run:
        """Queue a training request (YAML path, dict or TrainingConfig); returns its run record at
        once, or the finished record with ``wait=True``. See ``runs()`` / ``run_status()``.
        ``progress``: while waiting, a bar over the epochs (default: in a Jupyter kernel)."""
        from mlplat.training.queue import submit

        cfg = self._training_config(config)
        self.ensure_ray()
        run = submit(self.registry, cfg, priority=priority)
        self._start_scheduler()
        return self._wait(run, timeout_s, progress) if wait else run

    def tune(self, config: Any, *, wait: bool = False, timeout_s: float | None = None, priority: int = 0,
             progress: bool | None = None) -> Run:
        """Queue a sweep over the config's ``search`` space; the best trial becomes the version."""
        from mlplat.training.queue import submit

        cfg = self._training_config(config)
        self.ensure_ray()
        run = submit(self.registry, cfg, kind="tune", priority=priority)
        self._start_scheduler()
        return self._wait(run, timeout_s, progress) if wait else run

    def _wait(self, run: Run, timeout_s: float | None, progress: bool | None) -> Run:
        """The finished run; with ``progress`` (None: when running in a Jupyter kernel) a tqdm
        bar over its epochs meanwhile (:func:`mlplat.console.follow_run`)."""
        from mlplat.training.queue import wait_for_run

        if progress is None:
            progress = "ipykernel" in sys.modules
        if not progress:
            return wait_for_run(self.registry, run.run_id, timeout_s=timeout_s)
        from mlplat.console import EpochBar, follow_run

        return follow_run(self.run_status, run.run_id, EpochBar(), timeout_s=timeout_s)

    def publish(self, model: str, code_version: str, *, config: Any = None, wait: bool = False,
                timeout_s: float | None = None, priority: int = 0) -> Run:
        """The CI hook: register a new version of ``model`` at ``code_version`` (REGISTERED) and queue
        its training (the config given, else the recipe of the model's latest version)."""
        from mlplat.training.queue import publish, wait_for_run

        cfg = None if config is None else self._training_config(config)
        self.ensure_ray()
        version, run = publish(self.registry, self.storage, model, code_version, config=cfg, priority=priority)
        self._start_scheduler()
        run = wait_for_run(self.registry, run.run_id, timeout_s=timeout_s) if wait else run
        return run if run.version else run.model_copy(update={"version": version.version})

    def runs(self, *, state: str | None = None, model: str | None = None, limit: int = 50) -> list[Run]:
        """Training runs, newest first (queued ones with their queue position)."""
        return self.registry.list_runs(state=state, model=model, limit=limit)

    def run_status(self, run_id: str) -> Run:
        """One run: state, queue position or live progress (epoch, metrics), outcome."""
        from mlplat.training.queue import run_status

        return run_status(self.registry, self.storage, run_id)

    def cancel_run(self, run_id: str) -> Run:
        """Cancel a queued run at once, or ask the scheduler to stop a running one."""
        run = self.registry.cancel_run(run_id)
        if run.state == RunState.RUNNING:
            self._start_scheduler()
        return run

    # -- registry shortcuts ------------------------------------------------------------------
    def promote(self, name: str, version: int, *, by: str | None = None) -> ModelVersion:
        """Make a VALIDATED (or CANARY) version PRODUCTION; the previous one is ARCHIVED and
        becomes ``previous``. The registry refuses versions still waiting for, or refused by,
        a human reviewer. The ``promoted`` event records ``by`` (default: who runs this)."""
        return self.registry.promote(name, version, by=by or acting_user())

    def rollback(self, name: str, *, region: str | None = None, by: str | None = None) -> ModelVersion:
        """Undo the last change of ``name`` (in ``region``): an active canary ends (its version
        REJECTED); else the ``previous`` version is production again. Returns what serves now."""
        from mlplat.lifecycle.deploy import rollback

        return rollback(self.registry, self.config, name, region=region, by=by or acting_user())

    # -- safe rollout (docs/rollout.md) -------------------------------------------------------
    def deploy(self, name: str, version: int | None = None, *, canary_percent: float | None = None,
               region: str | None = None, force: bool = False, by: str | None = None) -> Deployment:
        """Pre-warm ``version`` (default: the latest VALIDATED) on every replica that will serve
        it, then give it all traffic, or ``canary_percent`` of it. A failed pre-warm moves
        nothing and the version ends REJECTED (the returned deployment says why)."""
        from mlplat.lifecycle.deploy import deploy

        self.ensure_ray()
        return deploy(self.registry, self.config, name, version, canary_percent=canary_percent, region=region,
                      force=force, by=by or acting_user())

    def deployments(self, name: str | None = None) -> list[dict[str, Any]]:
        """Per model: production (and per region), the canary split, where those versions were
        pre-warmed, recent deployments, and the rollout controller's last decision on a canary."""
        from mlplat.lifecycle.deploy import deployments_view

        views = deployments_view(self.registry, name)
        decisions = self._controller_decisions()
        for view in views:
            decision = decisions.get(view["name"])
            if decision is not None and view["canary"] == decision.get("version"):
                view["controller"] = decision
            else:
                view["controller"] = {"state": decisions.get("", "idle")}
        return views

    def _controller_decisions(self) -> dict[str, Any]:
        """model -> the controller's last canary decision; "" -> "not running" when it is not."""
        import ray

        from mlplat.lifecycle.controller import CONTROLLER_NAME

        self.ensure_ray()
        try:
            actor = ray.get_actor(CONTROLLER_NAME, namespace=self.config.namespace)
            status: Any = ray.get(actor.status.remote(), timeout=5)
        except Exception:
            return {"": "not running"}
        return {d["name"]: {"state": "judging canary", **d} for d in status.get("canaries", {}).values()}

    def controller_status(self) -> dict[str, Any]:
        """The rollout controller's state: ticks, cursor, last decision per running canary."""
        import ray

        from mlplat.lifecycle.controller import ensure_controller

        self.ensure_ray()
        status: dict[str, Any] = ray.get(ensure_controller(self.config).status.remote())
        return status

    # -- serving ---------------------------------------------------------------------------
    def serve_start(self, *, blocking: bool = False) -> str:
        """Deploy the Serve app (ingress + pool + a deployment per model whose serving policy
        says ``dedicated: true``); returns the base URL. Redeploying restarts every replica."""
        from mlplat.serving import start_serving

        registry = self.registry
        from mlplat.serving.routes import placement_of

        dedicated = [m.name for m in registry.list_models() if placement_of(m.serving_policy) == "dedicated"]
        from mlplat.lifecycle.controller import ensure_controller

        ensure_controller(self.config)  # moves VALIDATED versions of `rollout: auto` models toward serving
        return start_serving(self.config, registry_actor=REGISTRY_ACTOR_NAME, dedicated_models=dedicated,
                             blocking=blocking)

    def serve_status(self) -> dict[str, Any]:
        from mlplat.serving import serving_status

        self.ensure_ray()
        return serving_status(self.config)

    def serve_stop(self) -> None:
        from mlplat.serving import stop_serving

        self.ensure_ray()
        stop_serving(self.config)

    def predict(self, name: str, rows: list[dict[str, Any]], *, version: int | None = None,
                url: str | None = None, timeout_s: float = 30.0, caller: str | None = None) -> dict[str, Any]:
        """Predict raw feature rows over HTTP, through the same path as every client
        (auth, validation, telemetry). Returns ``{"model_version", "predictions", ...}``.
        ``caller`` is sent as ``x-mlplat-caller`` (telemetry, and the sticky key of a canary).

        >>> p.predict("churn", [{"amount": 12.5, "age": 31, "country": "fr"}])  # doctest: +SKIP
        """
        import json
        import urllib.error
        import urllib.request

        from mlplat.errors import NotFound, ValidationError
        from mlplat.names import validate_name

        validate_name(name, "model name")
        base = url or f"http://{self.config.serve.host}:{self.config.serve.port}{self.config.serve.route_prefix.rstrip('/')}"
        if version is None:
            path, body = f"/v1/models/{name}:predict", {"instances": rows}
        else:  # v1 has no version form; v2 takes one tensor per raw feature
            columns = list(rows[0]) if rows else []
            path = f"/v2/models/{name}/versions/{int(version)}/infer"
            body = {"inputs": [{"name": c, "shape": [len(rows)], "datatype": "BYTES", "data": [r.get(c) for r in rows]}
                               for c in columns]}
        headers = {"content-type": "application/json"}
        if caller:
            headers["x-mlplat-caller"] = caller
        if self.config.api_token:
            headers["authorization"] = f"Bearer {self.config.api_token.get_secret_value()}"
        request = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as exc:
            detail = json.loads(exc.read() or b"{}").get("error", exc.reason)
            if exc.code == 404:
                raise NotFound(f"predict {name}: {detail}") from None
            raise ValidationError(f"predict {name}: HTTP {exc.code}: {detail}") from None
        except urllib.error.URLError as exc:
            raise ConnectionError(f"no mlplat server at {base} ({exc.reason}); start one with `mlplat serve start`") from None

    # -- validation (docs/validation.md) -------------------------------------------------
    def validate(self, name: str, version: int, *, feature_set: str | None = None, policy: Any = None) -> Any:
        """Validate a TRAINED version on its feature set's validation split (Ray Data batch
        inference + guardrail gate); ends VALIDATED or REJECTED. Returns a ValidationOutcome.

        >>> p.validate("churn", 3).decision.reasons  # doctest: +SKIP
        """
        from mlplat.validation import validate

        self.ensure_ray()
        return validate(self.registry, self.storage, name, version, feature_set=feature_set, policy=policy)

    def approve(self, name: str, version: int, *, by: str | None = None, note: str | None = None) -> ModelVersion:
        """Approve a VALIDATED version that waits for a human (approval PENDING -> APPROVED)."""
        from mlplat.validation import approve

        return approve(self.registry, name, version, by=by, note=note)

    def reject(self, name: str, version: int, *, by: str | None = None, note: str | None = None) -> ModelVersion:
        """Reject a VALIDATED version that waits for a human: it moves to REJECTED, with who and why."""
        from mlplat.validation import reject

        return reject(self.registry, name, version, by=by, note=note)

    def report(self, name: str, version: int) -> tuple[dict[str, Any], str]:
        """The validation report of a version and the URI of its directory (index.html inside)."""
        from mlplat.validation import report_of

        return report_of(self.storage, name, version)

    def score(self, model: str, dataset: str, *, version: int | str | None = None, dataset_version: int | None = None,
              output: str | None = None, keys: list[str] | None = None) -> Any:
        """Batch scoring: predictions of ``model`` (production unless ``version``) for ``dataset``,
        written to Parquet and registered as a dataset of kind ``inference``."""
        from mlplat.validation import score

        self.ensure_ray()
        return score(self.registry, self.storage, model, dataset=dataset, dataset_version=dataset_version,
                     version=version, output=output, keys=keys)

    # -- model families (docs/families.md) ---------------------------------------------------
    def train_family(self, config: Any) -> Any:
        """Train one model per entity of a feature set as one job (YAML path, dict or
        FamilyConfig); members ``<family>--<entity>`` end TRAINED. Returns a FamilyTrainResult."""
        from mlplat.families import load_family_config, parse_family_config, train_family

        cfg = load_family_config(str(config)) if isinstance(config, str | os.PathLike) else parse_family_config(config)
        self.ensure_ray()
        return train_family(cfg, registry=self.registry, storage=self.storage)

    def family(self, name: str, version: int | None = None) -> Any:
        """A family version (latest when None): members, skipped entities, pack, recipe."""
        from mlplat.families import get_family

        return get_family(self.registry, name, version)

    def validate_family(self, name: str, version: int | None = None, *, policy: Any = None) -> Any:
        """Validate every TRAINED member in one pass; per-member verdicts and report."""
        from mlplat.families import validate_family

        self.ensure_ray()
        return validate_family(self.registry, self.storage, name, version, policy=policy)

    def promote_family(self, name: str, version: int | None = None, *, members: list[str] | None = None,
                       by: str | None = None) -> Any:
        """Promote every VALIDATED member of a family version in one registry transaction."""
        from mlplat.families import promote_family

        return promote_family(self.registry, name, version, members=members, by=by or acting_user())

    def rollback_family(self, name: str, version: int | None = None, *, members: list[str] | None = None,
                        by: str | None = None) -> Any:
        """Roll every member this family version serves back to its previous version, in one transaction."""
        from mlplat.families import rollback_family

        return rollback_family(self.registry, name, version, members=members, by=by or acting_user())

    # -- monitoring (docs/monitoring.md) -----------------------------------------------------
    def drift(self, name: str, *, window: str | None = None, version: int | None = None,
              end: float | None = None) -> Any:
        """Drift of ``name``'s live telemetry over ``window`` (``"15m"``, ``"1h"``, ``"7d"``; default:
        the model's monitoring policy, 1h) ending at ``end`` (unix seconds, default now) against
        the reference statistics of ``version`` (default: production): Ray Data pass, verdict,
        report under ``reports/<name>/drift/``, ``drift_checked`` event. Returns a DriftResult.

        >>> p.drift("churn", window="24h").verdict.status  # doctest: +SKIP
        """
        from mlplat.monitoring import check_drift

        self.ensure_ray()
        return check_drift(self.storage, self.registry, name, window=window, version=version, end=end)

    def ingest_outcomes(self, name: str, files: str | list[str], *, label_column: str,
                        request_id_column: str | None = "request_id", entity_column: str | None = None,
                        time_column: str | None = None, batch: str | None = None) -> Any:
        """Join delayed labels to ``name``'s predictions (by request id, or point in time with
        ``entity_column`` + ``time_column``); writes ``outcomes/<name>/<batch>.parquet``, registered
        as dataset ``outcomes-<name>`` (kind ``outcomes``). Returns the batch's counts."""
        from mlplat.monitoring.outcomes import ingest_outcomes

        return ingest_outcomes(self.storage, self.registry, name, [files] if isinstance(files, str) else list(files),
                               label_column=label_column, request_id_column=request_id_column,
                               entity_column=entity_column, time_column=time_column, batch=batch)

    def lineage(self, name: str, version: int) -> Any:
        """The lineage of ``name`` v``version``: partitions -> feature set -> run -> version ->
        validation -> deployments -> drift -> the retrain it caused -> the next version
        (docs/lineage.md). Render with ``mlplat.monitoring.lineage.to_text / to_json / to_svg``."""
        from mlplat.monitoring.lineage import build_lineage

        return build_lineage(self.registry, name, int(version))



def _local_registry_mode() -> bool:
    return (env_setting("MLPLAT_REGISTRY_MODE") or "").lower() == "local"


_FORWARDED_ENV = (
    "MLPLAT_ROOT", "MLPLAT_REGISTRY_DB", "MLPLAT_REGISTRY_URL", "MLPLAT_S3_ENDPOINT", "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "MLPLAT_NAMESPACE",
)


def connect(root: str | None = None, address: str | None = None, config_path: str | None = None, **overrides: Any) -> Platform:
    """Open the platform. Defaults: local embedded Ray, storage under ``./.mlplat``.

    >>> p = connect(root="/tmp/mlplat-demo")  # doctest: +SKIP
    """
    config = platform_config(config_path, root=root, ray_address=address, **overrides)
    return Platform(config)


def dashboard_port(preferred: int = 8265) -> int:
    """The port for an embedded Ray's dashboard: Ray's default when it is free on loopback,
    else one the system picks (a second embedded instance on the machine)."""
    import socket

    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError("no free TCP port on 127.0.0.1 for Ray's dashboard")
