"""KFP v2 lightweight components: thin wrappers around ``pipelines.steps``.

KFP ships each function's *source* to the task's container, so everything a body needs is
imported inside it; the project image (``DEFAULT_IMAGE``, swappable per run with the pipeline's
``image`` parameter) already holds this package, hence ``install_kfp_package=False``.

No ``from __future__ import annotations`` here: KFP reads the real annotation objects.
"""

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

from vlm_core.config import ClusterConfig

DEFAULT_IMAGE = ClusterConfig.model_fields["image"].default


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def stage_op(
    config_yaml: str,
    image: str,
    namespace: str,
    nodes: int,
    procs_per_node: int,
    gpus_per_node: int,
) -> str:
    """Apply the run's parameters to the config and stage its datasets; returns the config."""
    from pipelines import steps

    cfg = steps.apply_overrides(
        steps.load_run_config(config_yaml),
        image=image,
        namespace=namespace,
        nodes=nodes,
        procs_per_node=procs_per_node,
        gpus_per_node=gpus_per_node,
    )
    return steps.stage_data(cfg).to_yaml()


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def train_op(config_yaml: str, stage: str, backend: str, checkpoint: Output[Model]) -> None:
    """Run one training stage as a PyTorchJob and wait; the checkpoint URL is the artifact."""
    from pipelines import steps

    result = steps.train_stage(steps.load_run_config(config_yaml), stage, init_from=None, backend=backend)
    checkpoint.uri = result.checkpoint
    checkpoint.metadata.update({"stage": stage, "url": result.checkpoint, "pytorchjob": result.job_name})


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def train_from_op(
    config_yaml: str, stage: str, backend: str, init: Input[Model], checkpoint: Output[Model]
) -> None:
    """Like ``train_op``, starting from the upstream stage's checkpoint artifact."""
    from pipelines import steps

    result = steps.train_stage(steps.load_run_config(config_yaml), stage, init_from=init.uri, backend=backend)
    checkpoint.uri = result.checkpoint
    checkpoint.metadata.update(
        {"stage": stage, "url": result.checkpoint, "pytorchjob": result.job_name, "init_from": init.uri}
    )


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def eval_op(config_yaml: str, checkpoint: Input[Model], metrics: Output[Metrics]) -> str:
    """Score the checkpoint on the configured benchmarks; returns the eval folder's URL."""
    from pipelines import steps

    cfg = steps.load_run_config(config_yaml)
    for bench, score in steps.evaluate(cfg, checkpoint.uri).items():
        metrics.log_metric(bench, score)
    return cfg.eval_output()
