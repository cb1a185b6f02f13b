"""The training pipeline, compiled from a run config's steps: stage data -> each training stage
in ``init_from`` order -> eval (``operators.orchestrator.plan``, the driver's plan too).

``vlm pipeline compile`` writes the default, align -> instruct -> eval (the committed
``pipelines/vlm_pipeline.yaml``); ``vlm pipeline compile --config FILE`` compiles the pipeline of
that config (e.g. one ``full`` stage). The same pipeline object runs on this machine with
``kfp.local`` (which ignores the Kubernetes-specific settings below). No postponed annotations
here: KFP reads the pipeline signature's real types.

Parameters: ``config_yaml`` (the run config), ``overrides`` (``{"dotted.key": value}``, applied
by ``RunConfig.with_overrides`` in the first task: the one override path), ``backend``
(``kubernetes`` | ``local``), and the settings of the launcher tasks' own pods: ``image`` (the
task image only; the PyTorchJobs run ``cluster.image`` of the config), ``s3_secret``, ``pvc``.
"""

from dataclasses import dataclass
from pathlib import Path

from kfp import compiler, dsl
from kfp import kubernetes as kfp_k8s

from pipelines.components import DEFAULT_IMAGE, eval_op, stage_op, train_from_op, train_op
from vlm_core.config import RunConfig, StorageConfig

PIPELINE_NAME = "vlm-train-eval"
COMPILED_PATH = Path(__file__).with_name("vlm_pipeline.yaml")
# Fixed at compile time (KFP takes no parameter here): the run config's default mount point.
PVC_MOUNT = StorageConfig.model_fields["pvc_mount"].default
DEFAULT_S3_SECRET = "vlm-s3"
DEFAULT_PVC = "vlm-data"

# Keys of the Secret named by `s3_secret`, exposed under the same names (botocore reads them).
S3_SECRET_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}


@dataclass(frozen=True)
class PipelineShape:
    """What a compiled pipeline is fixed to: its stages (each with the stage it starts from), whether
    it evaluates, and the defaults of its task-pod parameters."""

    stages: tuple[tuple[str, "str | None"], ...]
    evaluate: bool = True
    image: str = DEFAULT_IMAGE
    s3_secret: str = DEFAULT_S3_SECRET
    pvc: str = DEFAULT_PVC

    @classmethod
    def of(cls, cfg: RunConfig) -> "PipelineShape":
        from operators.orchestrator.plan import training_order, upstream_stage

        storage = cfg.cluster.storage
        return cls(
            stages=tuple((s, upstream_stage(cfg, s)) for s in training_order(cfg)),
            evaluate=bool(cfg.eval.benchmarks),
            image=cfg.cluster.image,
            s3_secret=storage.s3_secret or DEFAULT_S3_SECRET,
            pvc=storage.pvc or DEFAULT_PVC,
        )


DEFAULT_SHAPE = PipelineShape(stages=(("align", None), ("instruct", "align")))


def _on_cluster(task: dsl.PipelineTask, *, image: str, s3_secret: str, pvc: str) -> None:
    """Settings every task needs on Kubernetes: the task image, S3 keys and the shared PVC."""
    task.set_container_image(image)
    # optional: runs whose storage needs no keys (a PVC only, or IAM roles) skip the Secret.
    kfp_k8s.use_secret_as_env(task, secret_name=s3_secret, secret_key_to_env=S3_SECRET_KEYS, optional=True)
    kfp_k8s.mount_pvc(task, pvc_name=pvc, mount_path=PVC_MOUNT)
    # Outputs live at URLs outside KFP's artifact store: a cache hit could claim a checkpoint
    # that has since been overwritten; the steps themselves skip what is complete.
    task.set_caching_options(False)


def build_pipeline(shape: PipelineShape = DEFAULT_SHAPE):
    """The pipeline function (a KFP ``GraphComponent``) of one shape."""
    names = [name for name, _ in shape.stages]

    @dsl.pipeline(name=PIPELINE_NAME, description=f"Stage data, train {' -> '.join(names)} as PyTorchJobs"
                  + (", evaluate as a PyTorchJob." if shape.evaluate else "."))  # fmt: skip
    def vlm_pipeline(
        config_yaml: str,
        overrides: dict = {},  # noqa: B006 - KFP reads defaults from the signature
        backend: str = "kubernetes",
        image: str = shape.image,
        s3_secret: str = shape.s3_secret,
        pvc: str = shape.pvc,
    ) -> None:
        """``config_yaml`` is the run config, ``overrides`` changes it (dotted keys);
        ``backend`` is ``kubernetes`` on a cluster, ``local`` on one machine; ``image``,
        ``s3_secret`` and ``pvc`` configure the launcher tasks' pods only."""
        staged = stage_op(config_yaml=config_yaml, overrides=overrides, stages=names, backend=backend)
        tasks, checkpoints = [staged.set_display_name("stage data")], {}
        for name, upstream in shape.stages:
            if upstream is None:
                task = train_op(config_yaml=staged.output, stage=name, backend=backend)
            else:
                task = train_from_op(config_yaml=staged.output, stage=name, backend=backend, init=checkpoints[upstream])
            task.set_display_name(name).after(tasks[-1])  # one step at a time, as the driver runs them
            checkpoints[name] = task.outputs["checkpoint"]
            tasks.append(task)
        if shape.evaluate and names:
            evaluation = eval_op(config_yaml=staged.output, backend=backend, checkpoint=checkpoints[names[-1]])
            tasks.append(evaluation.set_display_name("eval"))
        for task in tasks:
            _on_cluster(task, image=image, s3_secret=s3_secret, pvc=pvc)

    return vlm_pipeline


def compile_pipeline(path: "str | Path" = COMPILED_PATH, shape: PipelineShape = DEFAULT_SHAPE) -> Path:
    path = Path(path)
    compiler.Compiler().compile(build_pipeline(shape), str(path))
    return path
