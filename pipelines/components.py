"""KFP v2 lightweight components: each calls one task of ``pipelines.tasks`` (one step of the
orchestrator, the same step the driver runs).

KFP ships each function's *source* to the task's container, so everything a body needs is
imported inside it; the project image (the task image, the pipeline's ``image`` parameter)
already holds this package, hence ``install_kfp_package=False``. The training and eval tasks
only launch and watch their PyTorchJobs: the work runs in the job's pods, on the image and
resources of the run config's ``cluster`` section.

No ``from __future__ import annotations`` here: KFP reads the real annotation objects.
"""

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

from vlm_core.config import ClusterConfig

DEFAULT_IMAGE = ClusterConfig.model_fields["image"].default


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def stage_op(config_yaml: str, overrides: dict, stages: list, backend: str) -> str:
    """Apply the run's overrides and stage its datasets; returns the config the next tasks read."""
    from pipelines.tasks import staging_task

    return staging_task(config_yaml, overrides, stages, backend)


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def train_op(config_yaml: str, stage: str, backend: str, checkpoint: Output[Model]) -> None:
    """Run one training stage as a PyTorchJob and wait; the checkpoint URL is the artifact."""
    from pipelines.tasks import training_task

    checkpoint.uri = training_task(config_yaml, stage, backend)
    checkpoint.metadata.update({"stage": stage, "url": checkpoint.uri})


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def train_from_op(config_yaml: str, stage: str, backend: str, init: Input[Model], checkpoint: Output[Model]) -> None:
    """Like ``train_op``, starting from the upstream stage's checkpoint artifact."""
    from pipelines.tasks import training_task

    checkpoint.uri = training_task(config_yaml, stage, backend, init_from=init.uri)
    checkpoint.metadata.update({"stage": stage, "url": checkpoint.uri, "init_from": init.uri})


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def eval_op(config_yaml: str, backend: str, checkpoint: Input[Model], metrics: Output[Metrics]) -> None:
    """Score the checkpoint with eval's PyTorchJob; the headline numbers become KFP metrics."""
    from pipelines.tasks import eval_task

    for name, score in eval_task(config_yaml, backend, checkpoint.uri).items():
        metrics.log_metric(name, score)
