"""Replica placement on a multi-node Ray cluster: the VLM pool only where its accelerator is.

A local cluster of one head and three worker nodes (``ray.cluster_utils.Cluster``, all
on this machine) where only two workers carry the custom resource ``memeserve_gpu``
standing in for a GPU. The graph is applied as a Serve config document (as ``serve
deploy`` would) with the VLMPool asking for one ``memeserve_gpu`` per replica and the
Preprocessor asking for none; Ray's state API then tells on which node each replica
actor runs. The resources are logical: every node has one logical CPU, whatever the
machine's core count.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from loadtest.corpus import MemeSpec, meme_bytes
from loadtest.harness.ports import free_port
from tests.support.app import deploy, wait_ready, with_own_library

APP = "memeserve"
RESOURCE = "memeserve_gpu"
VLM_REPLICAS = 2
PREPROCESSOR_REPLICAS = 2

# (label, logical CPUs, custom resources) per node; the first entry is the head.
NODES: tuple[tuple[str, int, dict[str, float]], ...] = (
    ("head", 1, {}),
    ("gpu-a", 1, {RESOURCE: 1}),
    ("gpu-b", 1, {RESOURCE: 1}),
    ("cpu-only", 1, {}),
)


@dataclass(frozen=True)
class Cluster:
    """The running cluster as the test sees it."""

    address: str
    base_url: str
    gpu_nodes: frozenset[str]
    plain_nodes: frozenset[str]


def placement_document(args: dict[str, Any]) -> dict[str, Any]:
    """A Serve config document for the graph with the placement-relevant overrides."""
    return {
        "applications": [
            {
                "name": APP,
                "route_prefix": "/",
                "import_path": "deployments.app:build_app",
                "args": args,
                "deployments": [
                    {
                        "name": "VLMPool",
                        "num_replicas": VLM_REPLICAS,
                        "ray_actor_options": {"num_cpus": 0.1, "resources": {RESOURCE: 1}},
                    },
                    {
                        "name": "Preprocessor",
                        "num_replicas": PREPROCESSOR_REPLICAS,
                        "ray_actor_options": {"num_cpus": 0.1},
                    },
                    {"name": "Ingress", "ray_actor_options": {"num_cpus": 0.1}},
                    {"name": "Structurer", "ray_actor_options": {"num_cpus": 0.05}},
                    {"name": "LoadController", "user_config": {"enabled": False}},
                ],
            }
        ]
    }


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Head + three workers, Serve on the head, the graph deployed; torn down after."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster as RayCluster

    _, cpus, resources = NODES[0]
    # The state API (list_actors) is served by the dashboard's head process, so this
    # cluster runs one, on a free port: other clusters on the machine may hold 8265.
    ray_cluster = RayCluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": cpus,
            "resources": resources,
            "include_dashboard": True,
            "dashboard_port": free_port(),
        },
    )
    try:
        for _, cpus, resources in NODES[1:]:
            ray_cluster.add_node(num_cpus=cpus, resources=resources)
        ray_cluster.wait_for_nodes()
        ray.init(address=ray_cluster.address, log_to_driver=False)
        try:
            alive = [node for node in ray.nodes() if node["Alive"]]
            assert len(alive) == len(NODES), alive
            gpu_nodes = frozenset(n["NodeID"] for n in alive if n["Resources"].get(RESOURCE))
            plain_nodes = frozenset(n["NodeID"] for n in alive) - gpu_nodes
            assert len(gpu_nodes) == 2 and len(plain_nodes) == 2
            port = free_port()
            # Every node here shares one address: one proxy (on the head) owns the port.
            serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
            try:
                deploy(placement_document(with_own_library({"engine": {"kind": "lite"}})))
                base_url = f"http://127.0.0.1:{port}"
                wait_ready(base_url, timeout_s=90)
                yield Cluster(ray_cluster.address, base_url, gpu_nodes, plain_nodes)
            finally:
                serve.shutdown()
        finally:
            ray.shutdown()
    finally:
        ray_cluster.shutdown()


def alive_replicas(address: str, deployment: str | None = None) -> list[Any]:
    """ALIVE replica actors of this app (of one ``deployment`` if given), with their node.

    ``address`` is the cluster's: without it the state API would pick whichever Ray
    instance on this machine started last, and other test runs may have their own.
    """
    from ray.util.state import list_actors

    actors = list_actors(address=address, filters=[("state", "=", "ALIVE")], detail=True)
    prefix = f"ServeReplica:{APP}:" + (deployment or "")
    return [
        actor
        for actor in actors
        if actor.class_name == prefix
        or (deployment is None and actor.class_name.startswith(prefix))
    ]


def replica_nodes(
    address: str, deployment: str, want: int, timeout_s: float = 60.0
) -> dict[str, str]:
    """``{actor_id: node_id}`` of the alive replicas of ``deployment`` once ``want`` are up.

    Polls: /readyz answers once one VLM replica has started, others may still be coming up.
    """
    deadline = time.monotonic() + timeout_s
    found: dict[str, str] = {}
    while time.monotonic() < deadline:
        found = {a.actor_id: a.node_id for a in alive_replicas(address, deployment)}
        if len(found) >= want:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{want} alive {deployment} replicas expected, got {found}")


def test_every_vlm_replica_runs_on_a_node_with_the_resource(cluster: Cluster) -> None:
    vlm = replica_nodes(cluster.address, "VLMPool", VLM_REPLICAS)
    assert len(vlm) == VLM_REPLICAS
    misplaced = {actor: node for actor, node in vlm.items() if node not in cluster.gpu_nodes}
    assert not misplaced, f"VLM replicas on nodes without {RESOURCE}: {misplaced}"
    # One memeserve_gpu per node and per replica: the two replicas cannot share a node.
    assert set(vlm.values()) == set(cluster.gpu_nodes)
    for actor in alive_replicas(cluster.address, "VLMPool"):
        assert actor.required_resources.get(RESOURCE) == 1, actor.required_resources


def test_preprocessor_replicas_need_no_resource_and_may_run_anywhere(cluster: Cluster) -> None:
    pre = replica_nodes(cluster.address, "Preprocessor", PREPROCESSOR_REPLICAS)
    assert len(pre) == PREPROCESSOR_REPLICAS
    assert set(pre.values()) <= cluster.gpu_nodes | cluster.plain_nodes
    for actor in alive_replicas(cluster.address, "Preprocessor"):
        assert RESOURCE not in (actor.required_resources or {}), actor.required_resources
    # The resource-less nodes are used: some replica of the graph does run there.
    app_nodes = {actor.node_id for actor in alive_replicas(cluster.address)}
    assert app_nodes & cluster.plain_nodes, "no replica at all on a resource-less node"


def test_the_spread_graph_answers_a_real_analyze_request(cluster: Cluster) -> None:
    data = meme_bytes(MemeSpec(template=4242, top="你说得对，但是", bottom="破防了"), "JPEG")
    with httpx.Client(base_url=cluster.base_url, timeout=60) as client:
        response = client.post("/v1/memes/analyze", files={"image": ("meme.jpg", data)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["meta"]["engine"] == "lite"
    assert body["meta"]["cache"]["hit"] is False
    assert "你说得对" in " ".join(body["evidence"]["ocr_text"])
