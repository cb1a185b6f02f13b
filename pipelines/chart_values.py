"""The Helm chart's values as a pydantic model, the chart's ``values.schema.json`` from it, and the
chart's example run.

The run config is embedded whole under ``run`` (``RunConfig``, one source): the chart passes it to
the driver Job as its ConfigMap, and the driver builds every PyTorchJob from it. Only what a run
config cannot know (which install-time objects to create, their sizes) lives beside it.

The example run (the chart's defaults, and ``manifests/``) is ``configs/quickstart.yaml`` moved onto
the chart's PVC: tiny random models on CPU, synthetic data made in-cluster by the staging step.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from vlm_core.config import STAGE_NAMES, RunConfig, load_config
from vlm_core.storage import is_local, join

REPO_DIR = Path(__file__).resolve().parent.parent
CHART_DIR = REPO_DIR / "charts" / "vlm-platform"
SCHEMA_PATH = CHART_DIR / "values.schema.json"
VALUES_PATH = CHART_DIR / "values.yaml"
EXAMPLE_SOURCE = REPO_DIR / "configs" / "quickstart.yaml"
EXAMPLE_PVC = "vlm-data"

# Fields of a run config that hold a location; `*` matches any key of a map.
PATH_FIELDS = (
    "output",
    "data.synthesize",
    "data.datasets.*.url",
    "data.datasets.*.image_root",
    "stages.*.init_from",
    "eval.checkpoint",
    "eval.data.*.questions",
    "eval.data.*.annotations",
    "eval.data.*.images",
)


class _Values(BaseModel):
    # Helm passes values as given: a typo must fail `helm install`, not vanish.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ServiceAccountValues(_Values):
    create: bool = Field(True, description="Create the launcher ServiceAccount (named by run.cluster.service_account).")


class RbacValues(_Values):
    create: bool = Field(True, description="Create the launcher's Role and RoleBinding in the release namespace.")


class PersistenceValues(_Values):
    create: bool = Field(True, description="Create the PVC named by run.cluster.storage.pvc (if set).")
    size: str = "20Gi"
    storageClassName: str | None = Field(None, description="Default: the cluster's default StorageClass.")
    accessModes: list[Literal["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]] = Field(
        default_factory=lambda: ["ReadWriteOnce"],
        description="ReadWriteOnce works with every default StorageClass while the run's pods share a node; "
        "multi-node runs need ReadWriteMany (or object storage).",
    )


class DriverValues(_Values):
    enabled: bool = Field(
        True, description="Create the driver Job; off installs only what a Kubeflow Pipelines run needs around it."
    )
    backoffLimit: int = Field(
        3, ge=0, description="Retries of a failed driver pod; a retry adopts the run's existing jobs and outputs."
    )
    cpu: str = Field("1", description="The driver stages data and watches the jobs; raise it for large datasets.")
    memory: str = "2Gi"


class TensorBoardValues(_Values):
    enabled: bool = True
    logDir: str | None = Field(None, description="Default: <run.output>/tensorboard (every stage's runs).")
    image: str | None = Field(None, description="Default: run.cluster.image (which ships TensorBoard).")
    port: int = Field(6006, gt=0, lt=65536)
    cpu: str = "500m"
    memory: str = "1Gi"


class ChartValues(_Values):
    run: RunConfig = Field(
        description="The run config (as `vlm run --config` reads it); the driver runs staging, each stage and "
        "eval from it. Its namespace is the release's."
    )
    driver: DriverValues = Field(
        DriverValues(), description="The Job running `vlm run --backend kubernetes` on the run config."
    )
    serviceAccount: ServiceAccountValues = Field(
        ServiceAccountValues(), description="The launcher ServiceAccount (run.cluster.service_account)."
    )
    rbac: RbacValues = Field(RbacValues(), description="What the launcher may do, in the release namespace only.")
    persistence: PersistenceValues = Field(
        PersistenceValues(), description="The PVC named by run.cluster.storage.pvc (kept on uninstall)."
    )
    tensorboard: TensorBoardValues = Field(
        TensorBoardValues(), description="TensorBoard Deployment + Service on <run.output>/tensorboard."
    )


# ----------------------------------------------------------------------------- the example run


def _path_values(data: Any, pattern: list[str], prefix: str = "") -> Iterator[tuple[str, Any]]:
    if not pattern:
        yield prefix, data
        return
    if not isinstance(data, dict):
        return
    head, rest = pattern[0], pattern[1:]
    for key in sorted(data) if head == "*" else [head] if head in data else []:
        yield from _path_values(data[key], rest, f"{prefix}.{key}" if prefix else key)


def relative_paths(cfg: RunConfig) -> dict[str, str]:
    """``{"dotted.key": path}`` for every location in ``cfg`` that is a relative local path."""
    data = cfg.model_dump(mode="json")
    found = {}
    for field in PATH_FIELDS:
        for key, value in _path_values(data, field.split(".")):
            relative = isinstance(value, str) and is_local(value) and "://" not in value and not value.startswith("/")
            if relative and not (key.startswith("stages.") and value in STAGE_NAMES):
                found[key] = value
    return found


def on_volume(cfg: RunConfig, pvc: str) -> RunConfig:
    """``cfg`` with its relative paths under the mount of ``pvc``: on a cluster every pod mounts it
    there, while a relative path would name a different folder in each pod."""
    mount = cfg.cluster.storage.pvc_mount
    overrides: dict[str, Any] = {"cluster.storage.pvc": pvc}
    overrides.update({key: join(mount, path) for key, path in relative_paths(cfg).items()})
    return cfg.with_overrides(overrides, source=f"{cfg.name} on PVC {pvc}")


def example_run() -> RunConfig:
    """The chart's default run: the quickstart on the chart's PVC, its synthetic data made by the
    staging step in-cluster (``data.synthesize``), so a fresh cluster needs nothing prepared."""
    return on_volume(load_config(EXAMPLE_SOURCE), EXAMPLE_PVC)


# ----------------------------------------------------------------------------- values.yaml and schema

_VALUES_HEADER = """\
# Values of the vlm-platform chart. GENERATED by `vlm pipeline chart-values --write` from
# configs/quickstart.yaml (moved onto the chart's PVC) and pipelines/chart_values.py; edit those.
# values.schema.json (from the same models) rejects unknown keys and bad values at install.
#
# Run your own config: `vlm pipeline chart-values --config my.yaml -o my-values.yaml`, then
# `helm install vlm charts/vlm-platform -n vlm -f my-values.yaml`.
"""


def values_document(values: ChartValues) -> dict[str, Any]:
    """Every value spelled out: Helm applies no schema defaults, so templates need them all."""
    return values.model_dump(mode="json")


def default_values() -> dict[str, Any]:
    return values_document(ChartValues(run=example_run()))


def values_yaml_text() -> str:
    """The chart's values.yaml: each top-level key under a comment taken from its description."""
    parts = [_VALUES_HEADER]
    for key, value in default_values().items():
        description = ChartValues.model_fields[key].description
        comment = "".join(f"# {line}\n" for line in textwrap.wrap(description, 96)) if description else ""
        parts.append("\n" + comment + yaml.safe_dump({key: value}, sort_keys=False))
    return "".join(parts)


def user_values(cfg: RunConfig, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Values that install ``cfg``: its full dump, with ``null`` for every map key the chart's
    defaults have and ``cfg`` lacks (Helm deep-merges maps; a null deletes the default's key,
    so the example's stages and datasets do not leak into your run)."""
    defaults = default_values() if defaults is None else defaults
    return {"run": _null_missing(defaults.get("run", {}), cfg.model_dump(mode="json"))}


def _null_missing(default: Any, wanted: Any) -> Any:
    if not (isinstance(default, dict) and isinstance(wanted, dict)):
        return wanted
    out = {key: _null_missing(default.get(key), value) for key, value in wanted.items()}
    out.update({key: None for key in default if key not in wanted})
    return out


def values_schema_text() -> str:
    schema = ChartValues.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "vlm-platform chart values"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_chart_files() -> list[Path]:
    """Regenerate values.yaml and values.schema.json."""
    VALUES_PATH.write_text(values_yaml_text())
    SCHEMA_PATH.write_text(values_schema_text())
    return [VALUES_PATH, SCHEMA_PATH]
