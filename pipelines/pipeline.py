"""The training pipeline: stage -> align -> instruct -> eval, driven by one run config.

The same pipeline object compiles to YAML for the KFP UI and runs on this machine with
``kfp.local`` (which ignores the Kubernetes-specific settings below). No postponed annotations here:
KFP reads the pipeline signature's real types.
"""

from pathlib import Path

from kfp import compiler, dsl
from kfp import kubernetes as kfp_k8s

from pipelines.components import DEFAULT_IMAGE, eval_op, stage_op, train_from_op, train_op
from pipelines.steps import KEEP_COUNT, KEEP_GPUS, KEEP_TEXT
from vlm_core.config import StorageConfig

PIPELINE_NAME = "vlm-train-eval"
COMPILED_PATH = Path(__file__).with_name("vlm_pipeline.yaml")
# Fixed at compile time (KFP takes no parameter here): the run config's default mount point.
PVC_MOUNT = StorageConfig.model_fields["pvc_mount"].default

# Keys of the Secret named by `s3_secret`, exposed under the same names (botocore reads them).
S3_SECRET_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}


def _on_cluster(task: dsl.PipelineTask, *, image: str, s3_secret: str, pvc: str) -> None:
    """Settings every task needs on Kubernetes: the project image, S3 keys and the shared PVC."""
    task.set_container_image(image)
    # optional: runs whose storage needs no keys (a PVC only, or IAM roles) skip the Secret.
    kfp_k8s.use_secret_as_env(task, secret_name=s3_secret, secret_key_to_env=S3_SECRET_KEYS, optional=True)
    kfp_k8s.mount_pvc(task, pvc_name=pvc, mount_path=PVC_MOUNT)


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Stage data, train the alignment and instruction stages as PyTorchJobs, evaluate.",
)
def vlm_pipeline(
    config_yaml: str,
    image: str = DEFAULT_IMAGE,
    namespace: str = KEEP_TEXT,
    nodes: int = KEEP_COUNT,
    procs_per_node: int = KEEP_COUNT,
    gpus_per_node: int = KEEP_GPUS,
    backend: str = "kubernetes",
    s3_secret: str = "vlm-s3",
    pvc: str = "vlm-data",
    node_selector: dict = {},  # noqa: B006 - KFP reads defaults from the signature
    tolerations: list = [],  # noqa: B006
) -> None:
    """``config_yaml`` is the run config; ``namespace``/``nodes``/``procs_per_node`` left at
    ''/0 and ``gpus_per_node`` at -1 keep the config's values. ``node_selector`` and
    ``tolerations`` place the eval task (the trainers are placed by the run config's cluster
    section); ``backend`` is ``kubernetes`` on a cluster, ``local`` on one machine."""
    staged = stage_op(
        config_yaml=config_yaml,
        image=image,
        namespace=namespace,
        nodes=nodes,
        procs_per_node=procs_per_node,
        gpus_per_node=gpus_per_node,
    ).set_display_name("stage data")
    align = train_op(config_yaml=staged.output, stage="align", backend=backend).set_display_name("align")
    instruct = train_from_op(
        config_yaml=staged.output, stage="instruct", backend=backend, init=align.outputs["checkpoint"]
    ).set_display_name("instruct")
    evaluation = eval_op(config_yaml=staged.output, checkpoint=instruct.outputs["checkpoint"]).set_display_name("eval")

    for task in (staged, align, instruct, evaluation):
        _on_cluster(task, image=image, s3_secret=s3_secret, pvc=pvc)
        # Outputs live at URLs outside KFP's artifact store: a cache hit could claim a
        # checkpoint that has since been overwritten, so every run does the work.
        task.set_caching_options(False)
    kfp_k8s.add_node_selector_json(evaluation, node_selector)
    kfp_k8s.add_toleration_json(evaluation, tolerations)


def compile_pipeline(path: "str | Path" = COMPILED_PATH) -> Path:
    path = Path(path)
    compiler.Compiler().compile(vlm_pipeline, str(path))
    return path
