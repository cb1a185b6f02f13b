"""PyTorchJob builder + validation against the vendored CRD schema and the operator's webhook rules."""

from __future__ import annotations

import copy

import pytest
import yaml
from click.testing import CliRunner

from operators.pytorchjob import EVAL, build_config_map, build_pytorchjob, render_job
from operators.validation import InvalidPyTorchJob, pytorchjob_problems, validate_pytorchjob
from vlm_core.config import parse_config


def make_config(**overrides) -> dict:
    data = {
        "name": "demo",
        "data": {"datasets": {"caps": {"url": "s3://bucket/caps.jsonl"}}},
        "stages": {"align": {"datasets": ["caps"], "trainable": ["projector"], "max_steps": 10}},
        "output": "s3://bucket/runs/demo",
    }
    for key, value in overrides.items():
        data[key] = value
    return data


def config(**overrides):
    return parse_config(make_config(**overrides))


def master(job):
    return job["spec"]["pytorchReplicaSpecs"]["Master"]


def container(replica):
    return replica["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("nodes", [1, 2, 8])
@pytest.mark.parametrize("gpus", [0, 8])
def test_jobs_for_1_2_8_nodes_validate(nodes, gpus):
    cfg = config(
        distributed={"nodes": nodes, "procs_per_node": max(gpus, 1)},
        cluster={"resources": {"gpus_per_node": gpus, "cpu": "500m" if gpus == 0 else "16", "memory": "2Gi"}},
    )
    job = validate_pytorchjob(build_pytorchjob(cfg, "align"))
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1
    if nodes == 1:
        assert "Worker" not in replicas
    else:
        assert replicas["Worker"]["replicas"] == nodes - 1
    assert job["metadata"]["name"] == "demo-align"
    assert job["spec"]["nprocPerNode"] == str(max(gpus, 1))
    limits = container(replicas["Master"])["resources"]["limits"]
    assert limits.get("nvidia.com/gpu") == (gpus or None)


def test_container_command_volumes_and_security():
    cfg = config(
        distributed={"nodes": 2},
        cluster={
            "storage": {"pvc": "ckpt", "pvc_mount": "/mnt/vlm", "s3_endpoint": "http://minio:9000", "s3_secret": "s3-creds"},
            "scheduling": {"node_selector": {"pool": "gpu"}, "tolerations": [{"key": "gpu", "operator": "Exists"}],
                           "priority_class": "training", "queue": "research", "gang": True},
            "restart_policy": "ExitCode", "backoff_limit": 5, "active_deadline_seconds": 3600,
            "resources": {"shm_size": "4Gi"},
        },
    )
    job = build_pytorchjob(cfg.with_overrides({"cluster.image": "registry/vlm:1"}), "align")
    c = container(master(job))
    assert c["name"] == "pytorch" and c["image"] == "registry/vlm:1"
    assert c["command"] == ["torchrun"]
    assert c["args"] == ["-m", "vlm_core.cli", "train", "--config", "/etc/vlm/config.yaml", "--stage", "align",
                         "--resume", "auto"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in master(job)["template"]["spec"]["volumes"]}
    assert volumes[mounts["/etc/vlm"]]["configMap"]["name"] == "demo-align-config"
    assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "4Gi"}
    assert volumes[mounts["/mnt/vlm"]]["persistentVolumeClaim"]["claimName"] == "ckpt"
    env = {e["name"]: e for e in c["env"]}
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key] == {"name": key, "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": key}}}
    pod = master(job)["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["nodeSelector"] == {"pool": "gpu"} and pod["priorityClassName"] == "training"
    assert pod["serviceAccountName"] == "vlm-launcher"
    run = job["spec"]["runPolicy"]
    assert run["backoffLimit"] == 5 and run["activeDeadlineSeconds"] == 3600 and run["cleanPodPolicy"] == "None"
    assert run["schedulingPolicy"] == {"minAvailable": 2, "queue": "research", "priorityClass": "training"}
    assert master(job)["restartPolicy"] == "ExitCode"
    validate_pytorchjob(job)


def test_config_map_holds_the_run_config_and_no_secrets(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "super-secret-value")
    cfg = config(cluster={"storage": {"s3_secret": "s3-creds"}})
    cm = build_config_map(cfg, "align")
    assert cm["metadata"]["name"] == "demo-align-config"
    assert parse_config(yaml.safe_load(cm["data"]["config.yaml"])) == cfg
    objects = render_job(cfg, "align")
    assert "super-secret-value" not in yaml.safe_dump_all(objects)


def test_elastic_policy_uses_workers_only():
    cfg = config(distributed={"nodes": 4}, cluster={"elastic_min_nodes": 2})
    job = validate_pytorchjob(build_pytorchjob(cfg, "align"))
    assert set(job["spec"]["pytorchReplicaSpecs"]) == {"Worker"}
    assert job["spec"]["elasticPolicy"]["minReplicas"] == 2
    assert job["spec"]["elasticPolicy"]["maxReplicas"] == 4
    assert job["spec"]["elasticPolicy"]["rdzvBackend"] == "c10d"


def test_unknown_stage_is_a_clear_error():
    with pytest.raises(ValueError, match="stage 'instruct' is not configured"):
        build_pytorchjob(config(), "instruct")


# ----------------------------------------------------------------------------- rejected objects


@pytest.fixture()
def job():
    return build_pytorchjob(config(distributed={"nodes": 2}), "align")


BROKEN = {
    "two masters": (lambda j: master(j).update(replicas=2), "Master.replicas: must be 1 (got 2)"),
    "no pytorch container": (
        lambda j: container(master(j)).update(name="trainer"),
        "Master.template.spec.containers: must have a container named 'pytorch'",
    ),
    "no image": (lambda j: container(master(j)).pop("image"), "containers[0].image: must be given"),
    "elastic without workers": (
        lambda j: (j["spec"]["pytorchReplicaSpecs"].pop("Worker"), j["spec"].update(elasticPolicy={"maxReplicas": 2})),
        "Worker: must be configured if elastic policy is used",
    ),
    "unknown replica type": (
        lambda j: j["spec"]["pytorchReplicaSpecs"].update(Chief=copy.deepcopy(master(j))),
        "replica type 'Chief' is not supported; allowed: Master, Worker",
    ),
    "bad name": (lambda j: j["metadata"].update(name="Demo_Align"), "'Demo_Align' is not a DNS-1035 label"),
    "typo field": (lambda j: container(master(j)).update(imagePullPolcy="Always"), "unknown field 'imagePullPolcy'"),
    "bad quantity": (
        lambda j: container(master(j))["resources"]["limits"].update(memory="16 GB"),
        "limits.memory: '16 GB' is not a Kubernetes quantity",
    ),
    "wrong type": (lambda j: master(j).update(replicas="one"), "replicas: 'one' is not of type 'integer'"),
    "int32 overflow": (lambda j: j["spec"]["runPolicy"].update(backoffLimit=2**31), "out of range for int32"),
    "duplicate env": (
        lambda j: container(master(j))["env"].append({"name": "HF_HOME", "value": "/x"}),
        "duplicate entry with name='HF_HOME'",
    ),
    "bad restart policy": (lambda j: master(j).update(restartPolicy="Sometimes"), "'Sometimes' is not supported"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_objects_are_rejected_with_the_reason(job, case):
    breaker, message = BROKEN[case]
    breaker(job)
    with pytest.raises(InvalidPyTorchJob) as err:
        validate_pytorchjob(job)
    assert message in str(err.value)


def test_every_problem_is_listed_at_once(job):
    master(job)["replicas"] = 3
    container(master(job))["imagee"] = "x"
    job["metadata"]["name"] = "9lives"
    problems = pytorchjob_problems(job)
    assert len(problems) == 3, problems


def test_int_or_string_quantities_accept_numbers_and_strings(job):
    container(master(job))["resources"]["limits"].update(cpu=4, memory="16Gi")
    container(master(job))["resources"]["requests"].update(cpu="500m")
    assert pytorchjob_problems(job) == []


# ----------------------------------------------------------------------------- CLI


def test_job_render_prints_config_map_and_job(tmp_path):
    from operators.jobs_cli import job_group

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(make_config()))
    result = CliRunner().invoke(job_group, ["render", "--config", str(path), "--step", "align",
                                            "--set", "distributed.nodes=3", "--set", "cluster.image=reg/vlm:2"])
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(result.output))
    assert [d["kind"] for d in docs] == ["ConfigMap", "PyTorchJob"]
    assert docs[1]["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2
    assert container(master(docs[1]))["image"] == "reg/vlm:2"
    # the job runs the overridden config: the ConfigMap holds it
    assert parse_config(yaml.safe_load(docs[0]["data"]["config.yaml"])).distributed.nodes == 3
    validate_pytorchjob(docs[1])


def test_job_render_refuses_an_unknown_key_in_one_line(tmp_path):
    from operators.jobs_cli import job_group

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(make_config()))
    result = CliRunner().invoke(job_group, ["render", "--config", str(path), "--step", "align", "--set", "distributed.nodez=3"])
    assert result.exit_code == 1
    assert "distributed.nodez" in result.output and "Traceback" not in result.output


# ----------------------------------------------------------------------------- eval, labels


def eval_config(**overrides):
    data = make_config(
        eval={"benchmarks": ["synth_vqa"], "checkpoint": "s3://bucket/runs/demo/align"},
        distributed={"nodes": 2, "procs_per_node": 4},
        cluster={"resources": {"gpus_per_node": 4, "cpu": "8", "memory": "32Gi"}},
    )
    data.update(overrides)
    return parse_config(data)


def test_eval_is_a_pytorchjob_built_like_the_stages():
    cfg = eval_config()
    config_map, job = render_job(cfg, EVAL)
    stage_job = build_pytorchjob(cfg, "align")
    assert job["metadata"]["name"] == "demo-eval" and config_map["metadata"]["name"] == "demo-eval-config"
    assert container(master(job))["args"] == ["-m", "vlm_core.cli", "eval", "run", "--config", "/etc/vlm/config.yaml"]
    assert container(master(job))["command"] == ["torchrun"]  # distributed eval: torchrun reads PET_*
    # GPUs, topology and placement exactly as a training stage's
    assert job["spec"]["nprocPerNode"] == "4" and job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    assert container(master(job))["resources"] == container(master(stage_job))["resources"]
    assert container(master(job))["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert job["spec"]["runPolicy"] == stage_job["spec"]["runPolicy"]
    # the ConfigMap carries the checkpoint eval scores
    assert parse_config(yaml.safe_load(config_map["data"]["config.yaml"])).eval.checkpoint == "s3://bucket/runs/demo/align"


def test_eval_without_benchmarks_is_a_clear_error():
    with pytest.raises(ValueError, match="eval has no benchmarks"):
        build_pytorchjob(config(), EVAL)


def test_every_object_carries_the_run_labels():
    cfg = eval_config()
    for step in ("align", EVAL):
        for obj in render_job(cfg, step):
            assert obj["metadata"]["labels"] == {
                "app.kubernetes.io/name": "vlm-platform",
                "app.kubernetes.io/instance": "demo",
                "app.kubernetes.io/component": step,
                "app.kubernetes.io/part-of": "demo",
            }
        job = render_job(cfg, step)[1]
        assert master(job)["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == step


def test_owner_reference_is_added_to_every_object():
    from operators.pytorchjob import with_owner

    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": "demo-driver", "uid": "u-1"}
    owned = with_owner(render_job(eval_config(), "align"), owner)
    assert all(o["metadata"]["ownerReferences"] == [owner] for o in owned)
    validate_pytorchjob(owned[1])
