"""Checks on the deployment files: both Dockerfiles, docker-compose.yml, the
nginx configuration of its scale profile, and the Kubernetes manifests.

Neither Docker nor a cluster is needed. The compose file is validated
against the Compose Specification's JSON schema (the copy check-jsonschema
ships), the manifests strictly against Kubernetes' schemas (the copies
kubernetes-validate ships) for the versions in ``KUBERNETES_VERSIONS``, and
the nginx configuration by ``nginx -t`` where nginx is installed. Beyond
the schemas, the tests assert what a broken deployment would get wrong:
every file an image copies exists and reaches the build context, every
port and probe is the port the server binds and a route it serves, the
images and pods run unprivileged without PyTorch, and the GPU image holds
onnxruntime-gpu, built for the CUDA of its base image, and not onnxruntime.
"""

from __future__ import annotations

import fnmatch
import http.client
import json
import re
import shlex
import shutil
import subprocess
import tomllib
import urllib.request
from dataclasses import dataclass, field, fields
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft202012Validator, FormatChecker
from packaging.requirements import Requirement

from service.errors import problem_response
from service.settings import PREFIX, Settings
from tests.servers import free_port, gunicorn, wait_until_ready

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {
    "cpu": REPO_ROOT / "Dockerfile",
    "gpu": REPO_ROOT / "Dockerfile.gpu",
}
DOCKERIGNORE_PATH = REPO_ROOT / ".dockerignore"
COMPOSE_PATH = REPO_ROOT / "docker-compose.yml"
NGINX_PATH = REPO_ROOT / "deploy" / "nginx" / "nginx.conf"
KUBERNETES_DIR = REPO_ROOT / "deploy" / "kubernetes"
GPU_REQUIREMENTS_PATH = REPO_ROOT / "deploy" / "requirements-gpu.txt"
OPENAPI_PATH = REPO_ROOT / "service" / "openapi.yaml"

GUNICORN_COMMAND = ["gunicorn", "-c", "gunicorn.conf.py", "service:create_app()"]
SERVICE_UID = 10001
# Strict schemas of the oldest Kubernetes these manifests are meant for and
# of the newest that kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30", "1.37")
# The CUDA each pinned onnxruntime-gpu release was built with, as its wheel
# says in onnxruntime/capi/build_and_package_info.py. A new pin must be
# added here, which means looking its CUDA up.
ONNXRUNTIME_GPU_CUDA = {"1.31.1": "13.0"}
# The Python that each Ubuntu release of NVIDIA's CUDA images ships.
UBUNTU_PYTHON = {"ubuntu22.04": (3, 10), "ubuntu24.04": (3, 12)}
# What the README measured: a worker's resident memory with every model
# warm, and after face requests on large photos; gunicorn's master.
WORKER_WARM_MIB = 420
WORKER_PEAK_MIB = 680
MASTER_MIB = 34
# Docker's embedded DNS server, inside every container on a user network.
DOCKER_DNS = "127.0.0.11"


# Dockerfile parsing ---------------------------------------------------------


@dataclass
class Instruction:
    """One Dockerfile instruction with its continuation lines joined."""

    keyword: str
    arguments: str


@dataclass
class Stage:
    """The instructions from one FROM up to the next."""

    base_image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def named(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def dockerfile_instructions(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions.

    Comment lines are dropped first, as Docker does, even between the
    continuation lines of one instruction.
    """
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    instructions = []
    pending = ""
    for line in lines:
        stripped = line.strip()
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        joined = (pending + stripped).strip()
        pending = ""
        if joined:
            keyword, _, arguments = joined.partition(" ")
            instructions.append(Instruction(keyword.upper(), arguments.strip()))
    return instructions


def dockerfile_stages(text: str) -> list[Stage]:
    """Group the instructions of a Dockerfile into build stages.

    Instructions before the first FROM (global ARGs) belong to no stage and
    are left out.
    """
    stages: list[Stage] = []
    for instruction in dockerfile_instructions(text):
        if instruction.keyword == "FROM":
            words = [w for w in instruction.arguments.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append(instruction)
    return stages


def command_words(arguments: str) -> list[str]:
    """Words of an exec-form (JSON array) or shell-form argument string."""
    if arguments.startswith("["):
        words = json.loads(arguments)
        assert isinstance(words, list), arguments
        return [str(word) for word in words]
    return shlex.split(arguments)


def split_copy(instruction: Instruction) -> tuple[dict[str, str], list[str], str]:
    """Return the flags, sources and destination of a COPY or ADD."""
    words = command_words(instruction.arguments)
    flags = {}
    while words and words[0].startswith("--"):
        flag, _, value = words.pop(0)[2:].partition("=")
        flags[flag] = value
    *sources, destination = words
    return flags, sources, destination


def stage_env(stage: Stage) -> dict[str, str]:
    """Variables set by the ENV instructions of a stage, last value wins."""
    env = {}
    for instruction in stage.named("ENV"):
        words = shlex.split(instruction.arguments)
        if words and "=" not in words[0]:
            env[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            key, _, value = word.partition("=")
            env[key] = value
    return env


def healthcheck_words(stage: Stage) -> list[str]:
    """The command of the stage's last HEALTHCHECK, without its options."""
    healthchecks = stage.named("HEALTHCHECK")
    assert healthchecks, "the stage has no HEALTHCHECK"
    arguments = healthchecks[-1].arguments
    assert arguments.upper() != "NONE", "the HEALTHCHECK is switched off"
    _, found, command = arguments.partition("CMD ")
    assert found, f"HEALTHCHECK without CMD: {arguments}"
    return command_words(command.strip())


def bind_port(bind: str) -> int:
    """Port of a gunicorn bind address such as 0.0.0.0:8000 or [::]:8000."""
    return int(bind.rsplit(":", 1)[1])


def probed_urls(words: list[str]) -> list[str]:
    """HTTP URLs that appear anywhere in a health check command."""
    return re.findall(r"https?://[^\s'\"]+", " ".join(words))


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE_PATH.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and line[0] != "#"]


def is_dockerignored(path: str, patterns: list[str]) -> bool:
    """Approximate Docker's rule: the last matching pattern decides.

    A pattern that matches a parent folder also excludes what is inside it.
    """
    parts = Path(path.rstrip("/")).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        globs = {glob, glob.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(c, g) for c in candidates for g in globs):
            ignored = not negated
    return ignored


def load_stages(image: str) -> list[Stage]:
    return dockerfile_stages(DOCKERFILES[image].read_text())


def runtime_stage(image: str) -> Stage:
    return load_stages(image)[-1]


def image_bind(image: str) -> str:
    return stage_env(runtime_stage(image))["VISION_BIND"]


def context_copy_sources(image: str) -> list[str]:
    """Sources of every COPY or ADD that reads from the build context."""
    sources = []
    for stage in load_stages(image):
        for instruction in stage.named("COPY") + stage.named("ADD"):
            flags, copied, _ = split_copy(instruction)
            if "from" not in flags:
                sources.extend(copied)
    return list(dict.fromkeys(sources))


def pip_installs(stage: Stage) -> list[list[str]]:
    """The words after `pip install` in each RUN of the stage."""
    installs = []
    for instruction in stage.named("RUN"):
        for command in re.split(r"&&|;", instruction.arguments):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"]:
                installs.append(words[2:])
    return installs


COPY_SOURCES = [
    (image, source) for image in DOCKERFILES for source in context_copy_sources(image)
]


# Compose parsing --------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    compose = yaml.safe_load(COMPOSE_PATH.read_text())
    assert isinstance(compose, dict)
    return compose


def interpolate(node: Any, environ: dict[str, str]) -> Any:
    """Compose's ``${NAME}`` and ``${NAME:-default}`` substitution, applied
    to every string of ``node`` as ``docker compose`` does before it
    validates; a whole-number result becomes an int."""
    if isinstance(node, dict):
        return {key: interpolate(value, environ) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, environ) for value in node]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3) or ""
        return environ.get(name) or default

    text = re.sub(r"\$\{(\w+)(:-([^}]*))?\}", substitute, node)
    return int(text) if text.isdigit() and text != node else text


def compose_defaults() -> dict[str, Any]:
    """The compose file as it runs with no variable set."""
    compose = interpolate(load_compose(), {})
    assert isinstance(compose, dict)
    return compose


def compose_services(*profiles: str) -> dict[str, dict[str, Any]]:
    """The services `docker compose --profile ... up` starts."""
    services: dict[str, dict[str, Any]] = compose_defaults()["services"]
    return {
        name: service
        for name, service in services.items()
        if not service.get("profiles") or set(service["profiles"]) & set(profiles)
    }


def app_services() -> dict[str, dict[str, Any]]:
    """Services that run one of the project's images, under any profile."""
    services = compose_services("gpu", "scale")
    return {name: s for name, s in services.items() if "build" in s}


def service_image(service: dict[str, Any]) -> str:
    """Which of DOCKERFILES a service builds."""
    build = service["build"]
    dockerfile = (REPO_ROOT / build["context"] / build["dockerfile"]).resolve()
    return next(image for image, path in DOCKERFILES.items() if path == dockerfile)


def container_ports(ports: list[Any]) -> list[int]:
    """Container ports of a compose `ports` list, short or long syntax."""
    found = []
    for entry in ports:
        if isinstance(entry, dict):
            found.append(int(entry["target"]))
        else:
            target = str(entry).split("/")[0].rsplit(":", 1)[-1]
            found.append(int(target))
    return found


def host_ports(ports: list[Any]) -> list[int]:
    """Host ports of a compose `ports` list; a port given alone is both."""
    found = []
    for entry in ports:
        if isinstance(entry, dict):
            found.append(int(entry["published"]))
        else:
            parts = str(entry).split("/")[0].split(":")
            found.append(int(parts[-2] if len(parts) > 1 else parts[0]))
    return found


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        pairs = (item.partition("=") for item in environment)
        return {key: value for key, _, value in pairs}
    return {key: str(value) for key, value in environment.items()}


def service_bind(service: dict[str, Any]) -> str:
    bind = compose_environment(service).get("VISION_BIND")
    return bind or image_bind(service_image(service))


def compose_schema() -> dict[str, Any]:
    vendor = files("check_jsonschema.builtin_schemas.vendor")
    text = vendor.joinpath("compose-spec.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


# nginx and Kubernetes parsing -------------------------------------------------


def nginx_directive(name: str) -> list[list[str]]:
    """Arguments of every ``name ...;`` line of the nginx configuration."""
    found = []
    for line in NGINX_PATH.read_text().splitlines():
        words = line.split("#")[0].split()
        if words and words[0] == name:
            found.append(shlex.split(" ".join(words[1:]).rstrip(";")))
    return found


def kubernetes_documents() -> list[tuple[str, dict[str, Any]]]:
    documents = []
    for path in sorted(KUBERNETES_DIR.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document["kind"] != "Kustomization":
                documents.append((path.name, document))
    return documents


def kubernetes_object(kind: str) -> dict[str, Any]:
    (found,) = [d for _, d in kubernetes_documents() if d["kind"] == kind]
    return found


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = kubernetes_object("Deployment")["spec"]["template"]["spec"]
    return spec


def vision_container() -> dict[str, Any]:
    (container,) = pod_spec()["containers"]
    return dict(container)


def container_env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item for item in container.get("env", [])}


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity.removesuffix(suffix)) * factor
    return float(quantity) / 2**20


def cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


# Routes and settings ----------------------------------------------------------


@pytest.fixture(scope="module")
def get_routes() -> set[str]:
    """Paths the app answers to GET, from the contract (tests/test_openapi.py
    checks that the app serves exactly what the document lists)."""
    document = yaml.safe_load(OPENAPI_PATH.read_text())
    return {path for path, item in document["paths"].items() if "get" in item}


SETTING_NAMES = {PREFIX + setting.name.upper() for setting in fields(Settings)}


def vision_variables() -> list[tuple[str, str]]:
    """Every VISION_* name the deployment files set, with where."""
    found = []
    for image in DOCKERFILES:
        for stage in load_stages(image):
            found += [(name, image) for name in stage_env(stage)]
    for name, service in app_services().items():
        found += [(variable, name) for variable in compose_environment(service)]
    found += [(name, "deployment.yaml") for name in container_env(vision_container())]
    return [(name, place) for name, place in found if name.startswith(PREFIX)]


def test_every_vision_variable_is_a_setting() -> None:
    unknown = [pair for pair in vision_variables() if pair[0] not in SETTING_NAMES]

    assert vision_variables()
    assert not unknown


# Dockerfile tests -------------------------------------------------------------


def test_cpu_image_builds_and_runs_on_python_slim() -> None:
    stages = load_stages("cpu")

    assert len(stages) >= 2
    assert all(stage.base_image == "python:3.11-slim" for stage in stages)


@pytest.mark.parametrize(("image", "source"), COPY_SOURCES)
def test_copy_source_exists_in_repository(image: str, source: str) -> None:
    assert (REPO_ROOT / source).exists(), f"{image}: COPY {source}: no such file"


@pytest.mark.parametrize(("image", "source"), COPY_SOURCES)
def test_copy_source_is_not_dockerignored(image: str, source: str) -> None:
    assert not is_dockerignored(source, dockerignore_patterns())


@pytest.mark.parametrize("image", DOCKERFILES)
def test_build_stage_exports_the_models_for_the_runtime(image: str) -> None:
    *build_stages, runtime = load_stages(image)
    build = next(
        stage
        for stage in build_stages
        if any("python -m export" in i.arguments for i in stage.named("RUN"))
    )
    installs = " ".join(i.arguments for i in build.named("RUN"))
    copies_from_build = [
        split_copy(i)
        for i in runtime.named("COPY")
        if split_copy(i)[0].get("from") == build.name
    ]

    assert ".[export]" in installs
    assert any(
        "models" in source for _, sources, _ in copies_from_build for source in sources
    )


def test_gpu_image_exports_with_the_cpu_image_build_stage() -> None:
    cpu_build, gpu_build = load_stages("cpu")[0], load_stages("gpu")[0]

    assert gpu_build == cpu_build


@pytest.mark.parametrize("image", DOCKERFILES)
def test_runtime_stage_does_not_install_torch_or_the_export_extra(image: str) -> None:
    runtime = runtime_stage(image)
    commands = " ".join(i.arguments for i in runtime.named("RUN")).lower()

    assert "torch" not in commands
    assert "[export]" not in commands
    assert pip_installs(runtime)


@pytest.mark.parametrize("image", DOCKERFILES)
def test_runtime_stage_runs_as_the_unprivileged_service_user(image: str) -> None:
    runtime = runtime_stage(image)
    users = runtime.named("USER")
    commands = " ".join(i.arguments for i in runtime.named("RUN"))

    assert users, "the runtime stage has no USER"
    # Numeric, so that Kubernetes can tell the image's user is not root.
    assert users[-1].arguments == f"{SERVICE_UID}:{SERVICE_UID}"
    assert f"useradd --system --uid {SERVICE_UID}" in commands


@pytest.mark.parametrize("image", DOCKERFILES)
def test_runtime_stage_starts_gunicorn_with_the_app_factory(image: str) -> None:
    commands = runtime_stage(image).named("CMD")

    assert commands
    assert command_words(commands[-1].arguments) == GUNICORN_COMMAND


@pytest.mark.parametrize("image", DOCKERFILES)
def test_runtime_stage_exposes_the_bound_port(image: str) -> None:
    runtime = runtime_stage(image)
    exposed = {
        int(word.split("/")[0])
        for expose in runtime.named("EXPOSE")
        for word in expose.arguments.split()
    }

    assert bind_port(image_bind(image)) in exposed


@pytest.mark.parametrize("image", DOCKERFILES)
def test_dockerfile_healthcheck_probes_readyz_on_the_bound_port(image: str) -> None:
    port = bind_port(image_bind(image))
    words = healthcheck_words(runtime_stage(image))
    urls = [urlsplit(url) for url in probed_urls(words)]

    assert any(url.path == "/readyz" and url.port == port for url in urls), urls


def gpu_requirements() -> dict[str, Requirement]:
    lines = GPU_REQUIREMENTS_PATH.read_text().splitlines()
    requirements = [Requirement(line) for line in lines if line and line[0] != "#"]
    return {requirement.name: requirement for requirement in requirements}


def test_gpu_runtime_installs_onnxruntime_gpu_and_not_onnxruntime() -> None:
    runtime = runtime_stage("gpu")
    installs = pip_installs(runtime)
    copied = [split_copy(i) for i in runtime.named("COPY")]
    requirement_files = [
        source for flags, sources, _ in copied if not flags for source in sources
    ]
    requirements = gpu_requirements()

    # The requirements file, then the project without its dependencies,
    # which would bring onnxruntime back.
    assert "deploy/requirements-gpu.txt" in requirement_files
    assert installs[0][0] == "--requirement"
    assert all("--no-deps" in words for words in installs[1:])
    assert "onnxruntime" not in requirements
    assert "torch" not in requirements
    assert str(requirements["onnxruntime-gpu"].specifier).startswith("==")


def test_gpu_requirements_follow_the_project_dependencies() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    project = {
        requirement.name: requirement
        for requirement in map(Requirement, pyproject["project"]["dependencies"])
    }
    requirements = gpu_requirements()
    onnxruntime_gpu = requirements.pop("onnxruntime-gpu")
    onnxruntime = project.pop("onnxruntime")

    assert {name: str(r) for name, r in requirements.items()} == {
        name: str(r) for name, r in project.items()
    }
    (pin,) = onnxruntime_gpu.specifier
    assert onnxruntime.specifier.contains(pin.version)


def test_gpu_base_image_carries_the_cuda_of_onnxruntime_gpu() -> None:
    base = runtime_stage("gpu").base_image
    (pin,) = gpu_requirements()["onnxruntime-gpu"].specifier
    match = re.fullmatch(
        r"nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-runtime-(ubuntu[\d.]+)", base
    )

    assert match, f"{base} is not an NVIDIA CUDA runtime image with cuDNN"
    assert pin.version in ONNXRUNTIME_GPU_CUDA, "look up the pin's CUDA version"
    cuda_major = ONNXRUNTIME_GPU_CUDA[pin.version].split(".")[0]
    assert match.group(1) == cuda_major
    assert UBUNTU_PYTHON[match.group(3)] >= (3, 11)


def test_gpu_image_requires_cuda() -> None:
    assert stage_env(runtime_stage("gpu"))["VISION_PROVIDERS"] == "cuda"


# Compose tests ----------------------------------------------------------------


@pytest.mark.parametrize("interpolated", [False, True], ids=["as-written", "defaults"])
def test_compose_file_follows_the_compose_specification(interpolated: bool) -> None:
    compose = compose_defaults() if interpolated else load_compose()
    validator = Draft202012Validator(compose_schema(), format_checker=FormatChecker())
    misspelt = json.loads(json.dumps(compose))
    misspelt["services"]["vision"]["healthchek"] = misspelt["services"]["vision"].pop(
        "healthcheck"
    )

    assert [error.message for error in validator.iter_errors(compose)] == []
    assert not validator.is_valid(misspelt)


def test_default_profile_starts_the_cpu_service_alone() -> None:
    services = compose_services()

    assert list(services) == ["vision"]
    assert service_image(services["vision"]) == "cpu"
    assert services["vision"]["image"] == "vision-service:cpu"
    assert services["vision"]["restart"] == "unless-stopped"


@pytest.mark.parametrize("name", app_services())
def test_app_service_builds_an_image_of_the_project(name: str) -> None:
    service = app_services()[name]
    image = service_image(service)

    assert service["build"]["context"] == "."
    assert service["image"] == f"vision-service:{image}"


@pytest.mark.parametrize("name", app_services())
def test_app_service_healthcheck_probes_readyz_on_the_bound_port(
    name: str, get_routes: set[str]
) -> None:
    service = app_services()[name]
    test = service["healthcheck"]["test"]
    words = test if isinstance(test, list) else [test]
    urls = [urlsplit(url) for url in probed_urls(words)]

    assert "/readyz" in get_routes
    assert [url.path for url in urls] == ["/readyz"]
    assert all(url.port == bind_port(service_bind(service)) for url in urls), urls


@pytest.mark.parametrize("name", app_services())
def test_app_service_container_port_is_the_bound_port(name: str) -> None:
    service = app_services()[name]
    ports = container_ports(service.get("ports", [])) + [
        int(port) for port in service.get("expose", [])
    ]

    assert ports == [bind_port(service_bind(service))]


@pytest.mark.parametrize(
    "profiles",
    [(), ("gpu",), ("scale",), ("gpu", "scale")],
    ids=["default", "gpu", "scale", "gpu-and-scale"],
)
def test_host_ports_do_not_clash(profiles: tuple[str, ...]) -> None:
    published = [
        port
        for service in compose_services(*profiles).values()
        for port in host_ports(service.get("ports", []))
    ]

    assert len(published) == len(set(published)), published


def test_gpu_profile_reserves_an_nvidia_gpu() -> None:
    service = compose_services("gpu")["vision-gpu"]
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]

    assert service["profiles"] == ["gpu"]
    assert service_image(service) == "gpu"
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    assert compose_environment(service)["VISION_PROVIDERS"] == "cuda"


def test_scale_profile_runs_replicas_behind_nginx() -> None:
    services = compose_services("scale")
    replica, balancer = services["vision-replica"], services["lb"]
    (mount,) = balancer["volumes"]
    source, target, mode = mount.split(":")
    (listen,) = nginx_directive("listen")

    assert replica["deploy"]["replicas"] >= 2
    assert "ports" not in replica, "replicas share no host port"
    assert balancer["depends_on"] == {
        "vision-replica": {"condition": "service_healthy"}
    }
    assert (REPO_ROOT / source).resolve() == NGINX_PATH
    assert (target, mode) == ("/etc/nginx/nginx.conf", "ro")
    assert container_ports(balancer["ports"]) == [int(listen[0])]


def test_replicas_follow_the_replicas_variable() -> None:
    compose = interpolate(load_compose(), {"REPLICAS": "5", "LB_PORT": "9090"})
    services = compose["services"]

    assert services["vision-replica"]["deploy"]["replicas"] == 5
    assert host_ports(services["lb"]["ports"]) == [9090]


def test_replicas_together_use_no_more_than_one_core_each() -> None:
    replica = compose_services("scale")["vision-replica"]
    environment = compose_environment(replica)

    assert int(environment["VISION_WORKERS"]) * int(environment["VISION_THREADS"]) == 1


# nginx tests ------------------------------------------------------------------


def test_nginx_sends_requests_to_the_replica_service() -> None:
    replica = compose_services("scale")["vision-replica"]
    (assignment,) = nginx_directive("set")
    variable, address = assignment
    host, _, port = address.rpartition(":")

    assert (host, int(port)) == ("vision-replica", bind_port(service_bind(replica)))
    assert nginx_directive("proxy_pass") == [[f"http://{variable}"]]
    # Looked up through Docker's DNS at run time, so replicas can change.
    assert nginx_directive("resolver")[0][0] == DOCKER_DNS


def test_nginx_body_limit_is_the_service_limit() -> None:
    (limit,) = nginx_directive("client_max_body_size")
    (body,) = [words[1] for words in nginx_directive("return") if words[0] == "413"]
    expected = problem_response(
        413,
        "body-too-large",
        f"The request body exceeds the limit of {Settings().max_body_bytes} bytes.",
    )

    assert limit == [f"{Settings().max_body_bytes // 2**20}m"]
    assert json.loads(body) == expected.get_json()


def test_nginx_buffers_whole_requests_and_passes_request_ids() -> None:
    headers = {words[0]: words[1] for words in nginx_directive("proxy_set_header")}

    assert nginx_directive("proxy_request_buffering") == [["on"]]
    assert nginx_directive("proxy_buffering") == [["on"]]
    assert headers["X-Request-ID"] == "$vision_request_id"


needs_nginx = pytest.mark.skipif(
    shutil.which("nginx") is None,
    reason="nginx is not installed (apt-get install nginx-light to check it)",
)


@needs_nginx
def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    completed = subprocess.run(
        ["nginx", "-t", "-p", f"{tmp_path}/", "-c", str(NGINX_PATH)]
        + ["-g", f"pid {tmp_path}/nginx.pid;"],
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert completed.returncode == 0, completed.stderr


@pytest.mark.slow
@needs_nginx
def test_nginx_in_front_of_a_replica(tmp_path: Path, models_dir: Path) -> None:
    # The same configuration, with the replica's name replaced by a real
    # server's address and the listening port by a free one.
    nginx_port = free_port()
    with gunicorn(
        tmp_path,
        VISION_BIND=f"127.0.0.1:{free_port()}",
        VISION_WORKERS="1",
        VISION_MODELS_DIR=str(models_dir),
    ) as server:
        config = tmp_path / "nginx.conf"
        config.write_text(
            NGINX_PATH.read_text()
            .replace("vision-replica:8000", f"{server.host}:{server.port}")
            .replace("listen 8080;", f"listen 127.0.0.1:{nginx_port};")
        )
        nginx = subprocess.Popen(
            ["nginx", "-p", f"{tmp_path}/", "-c", str(config)]
            + ["-g", f"pid {tmp_path}/nginx.pid; daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until_ready(server)
            check_through_nginx(f"http://127.0.0.1:{nginx_port}", server.url)
        finally:
            nginx.terminate()
            nginx.wait(timeout=30)


def check_through_nginx(balancer: str, replica: str) -> None:
    ready = urllib.request.Request(balancer + "/readyz")
    ready.add_header("X-Request-ID", "lb-test-1")
    with urllib.request.urlopen(ready, timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["X-Request-ID"] == "lb-test-1"

    with urllib.request.urlopen(balancer + "/healthz", timeout=10) as answer:
        # nginx's own id when the client sends none, which the replica kept.
        assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["X-Request-ID"])

    # A body announced larger than the limit is refused before it is sent,
    # by nginx with the same answer the replica gives.
    bodies = []
    for url in (balancer, replica):
        parts = urlsplit(url)
        connection = http.client.HTTPConnection(parts.netloc, timeout=10)
        connection.putrequest("POST", "/v1/classify")
        connection.putheader("Content-Type", "image/jpeg")
        connection.putheader("Content-Length", str(Settings().max_body_bytes + 1))
        connection.endheaders()
        answer = connection.getresponse()
        assert answer.status == 413
        assert answer.headers["Content-Type"] == "application/problem+json"
        bodies.append(json.loads(answer.read()))
        connection.close()
    assert bodies[0] == bodies[1]


# Kubernetes tests -------------------------------------------------------------


KUBERNETES_CASES = [
    pytest.param(document, version, id=f"{name}-{document['kind']}-{version}")
    for name, document in kubernetes_documents()
    for version in KUBERNETES_VERSIONS
]


@pytest.mark.parametrize(("document", "version"), KUBERNETES_CASES)
def test_manifest_follows_the_kubernetes_schema(
    document: dict[str, Any], version: str
) -> None:
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(part) for part in error.path)
        pytest.fail(f"{document['kind']} at {path}: {error.message}")


def test_strict_schemas_refuse_an_unknown_field() -> None:
    deployment = json.loads(json.dumps(kubernetes_object("Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBERNETES_DIR / "kustomization.yaml").read_text())
    manifests = {name for name, _ in kubernetes_documents()}

    assert sorted(kustomization["resources"]) == sorted(manifests)
    assert [image["name"] for image in kustomization["images"]] == ["vision-service"]
    assert vision_container()["image"].split(":")[0] == "vision-service"


def test_container_port_is_the_bound_port() -> None:
    container = vision_container()
    env = container_env(container)
    (port,) = container["ports"]
    annotations = kubernetes_object("Deployment")["spec"]["template"]["metadata"]

    assert port["containerPort"] == bind_port(env["VISION_BIND"]["value"])
    assert bind_port(env["VISION_BIND"]["value"]) == bind_port(image_bind("cpu"))
    assert annotations["annotations"]["prometheus.io/port"] == str(
        port["containerPort"]
    )


@pytest.mark.parametrize(
    ("probe", "path"),
    [
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ],
)
def test_probe_asks_a_served_route_on_the_container_port(
    probe: str, path: str, get_routes: set[str]
) -> None:
    container = vision_container()
    request = container[probe]["httpGet"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}

    assert request["path"] == path
    assert path in get_routes
    assert request["port"] in ports


def test_startup_probe_allows_for_the_model_warm_up() -> None:
    probe = vision_container()["startupProbe"]

    # Two workers load and warm every model in about 1 s on this project's
    # machine; a busy node with a cold disk takes far longer.
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 120


def test_pod_runs_unprivileged_on_a_read_only_filesystem() -> None:
    pod, container = pod_spec(), vision_container()
    security = container["securityContext"]
    (mount,) = container["volumeMounts"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == SERVICE_UID
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    # gunicorn.conf.py and the metrics write under the temporary directory.
    assert mount["mountPath"] == "/tmp"
    assert "emptyDir" in volumes[mount["name"]]


def test_termination_grace_covers_the_graceful_timeout() -> None:
    container = vision_container()
    env = container_env(container)
    graceful = int(env["VISION_GRACEFUL_TIMEOUT"]["value"])
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]

    assert pre_stop[0] == "sleep"
    assert pod_spec()["terminationGracePeriodSeconds"] > int(pre_stop[1]) + graceful


def test_workers_and_memory_follow_the_cpu_limit() -> None:
    container = vision_container()
    env = container_env(container)
    resources = container["resources"]
    reference = env["VISION_WORKERS"]["valueFrom"]["resourceFieldRef"]
    cpu_limit = cores(resources["limits"]["cpu"])
    workers = int(-(-cpu_limit // 1))

    assert reference["resource"] == "limits.cpu"
    assert reference["containerName"] == container["name"]
    assert workers * int(env["VISION_THREADS"]["value"]) <= cpu_limit
    assert cores(resources["requests"]["cpu"]) == cpu_limit
    assert mebibytes(resources["requests"]["memory"]) >= (
        workers * WORKER_WARM_MIB + MASTER_MIB
    )
    assert mebibytes(resources["limits"]["memory"]) >= (
        workers * WORKER_PEAK_MIB + MASTER_MIB
    )


def test_service_hpa_and_budget_select_the_deployment() -> None:
    deployment = kubernetes_object("Deployment")
    service = kubernetes_object("Service")
    autoscaler = kubernetes_object("HorizontalPodAutoscaler")
    budget = kubernetes_object("PodDisruptionBudget")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (port,) = service["spec"]["ports"]
    (metric,) = autoscaler["spec"]["metrics"]

    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert service["spec"]["selector"] == labels
    assert budget["spec"]["selector"]["matchLabels"] == labels
    assert port["targetPort"] == vision_container()["ports"][0]["name"]
    assert autoscaler["apiVersion"] == "autoscaling/v2"
    assert autoscaler["spec"]["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert metric["resource"]["name"] == "cpu"
    assert autoscaler["spec"]["minReplicas"] >= 2
