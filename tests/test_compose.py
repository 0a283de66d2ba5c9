"""The compose files and the image: they run entry points that exist, read only real settings, and are health-checked.

Nothing here needs a Docker engine: the files are read with PyYAML and every entry point they name is resolved
in this interpreter.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEV = "docker-compose.tasks.yml"
PROD = "docker-compose.prod.yml"
COMPOSE_FILES = [DEV, PROD]

#: Variables that only the compose files read (Courier itself never does). Keep this list tiny.
COMPOSE_ONLY = {"COURIER_IMAGE", "RABBITMQ_ERLANG_COOKIE", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"}
#: What production must be given explicitly: `${VAR:?message}`, no default.
PROD_SECRETS = [
    "COURIER_IMAGE",
    "DATABASE_URL",
    "CELERY_RESULT_BACKEND",
    "REDIS_PASSWORD",
    "RABBITMQ_PASSWORD",
    "RABBITMQ_ADMIN_USER",
    "RABBITMQ_ADMIN_PASSWORD",
    "RABBITMQ_ERLANG_COOKIE",
    "FLOWER_PASSWORD",
    "DATA_ENCRYPTION_KEYS",
    "POSTGRES_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
]
#: Settings whose URL or host names another service of the same file.
HOST_SETTINGS = [
    "DATABASE_URL",
    "CELERY_RESULT_BACKEND",
    "RABBITMQ_HOST",
    "RABBITMQ_MANAGEMENT_URL",
    "FLOWER_BROKER_API",
]

#: Settings deliberately not passed to the Courier containers, and why.
NOT_FORWARDED = {
    "API_HOST": "the API listens on 0.0.0.0:8000 in its container",
    "API_PORT": "it is the published host port",
    "API_WORKERS": "it reaches uvicorn as its --workers argument",
    "VAR_DIR": "the image sets /app/var",
    "WEB_ASSETS_DIR": "the image sets /app/node_modules, where its web-assets stage put the packages",
    "CELERY_WORKER_NAME": "a worker is named <tier>@<container hostname>",
    "WORKER_PER_TIER": "compose always runs a worker service per tier",
    "FLOWER_USER": "it reaches Flower as FLOWER_BASIC_AUTH",
    "FLOWER_PASSWORD": "it reaches Flower as FLOWER_BASIC_AUTH",
    "FLOWER_PORT": "it is the published host port",
}
NOT_FORWARDED_BY_FILE = {
    DEV: {
        "CELERY_BROKER_URL": "the broker URL is built from RABBITMQ_* to the rabbitmq service",
        "RABBITMQ_HOSTS": "the dev broker is one node",
        "RABBITMQ_MANAGEMENT_URLS": "the dev broker is one node",
        "BROKER_FAILOVER_STRATEGY": "the dev broker is one node",
        "QUEUE_REPLICAS": "the dev broker is one node",
        "REDIS_SENTINELS": "the dev Redis is one server, without Sentinel",
        "REDIS_SENTINEL_MASTER": "the dev Redis is one server, without Sentinel",
        "REDIS_SENTINEL_PASSWORD": "the dev Redis is one server, without Sentinel",
        "REDIS_URL": "the dev Redis serves both results and Courier's keys",
        "REDIS_PASSWORD": "the dev Redis has no password",
    },
    PROD: {
        "CELERY_TASK_ALWAYS_EAGER": "production refuses eager mode",
        "RABBITMQ_ADMIN_USER": "only migrate gets the administrator",
        "RABBITMQ_ADMIN_PASSWORD": "only migrate gets the administrator",
    },
}

#: `${NAME}`, `${NAME:-default}`, `${NAME?err}` …, and bare `$NAME`; `$$` is a literal dollar.
REFERENCE = re.compile(
    r"(?<!\$)\$(?:\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def load(name: str) -> dict[str, Any]:
    with (ROOT / name).open() as handle:
        return dict(yaml.safe_load(handle))


def env_example() -> dict[str, str]:
    """NAME=value lines of .env.example."""
    lines = (ROOT / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z_][A-Z0-9_]*=", line))


def strings(node: Any) -> Iterator[str]:
    """Every string in a parsed YAML document (comments are not part of it)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def references(document: dict[str, Any]) -> list[re.Match[str]]:
    return [match for text in strings(document) for match in REFERENCE.finditer(text)]


def interpolate(value: str) -> str:
    """Apply `${VAR:-default}` defaults (no environment); a required `${VAR:?...}` stays as it is."""

    def substitute(match: re.Match[str]) -> str:
        return match.group("arg") or "" if match.group("op") in (":-", "-") else match.group(0)

    return REFERENCE.sub(substitute, value).replace("$$", "$")


def is_courier_service(service: dict[str, Any]) -> bool:
    """Built from ./Dockerfile (development) or running COURIER_IMAGE (production)."""
    return "build" in service or "COURIER_IMAGE" in str(service.get("image", ""))


def courier_services(name: str) -> list[str]:
    return [key for key, service in load(name)["services"].items() if is_courier_service(service)]


def commands(value: str | list[str]) -> list[list[str]]:
    """The argument lists a command runs, with `sh -c` / CMD-SHELL scripts split at `&&` and `;`."""
    argv = shlex.split(value) if isinstance(value, str) else [str(arg) for arg in value]
    if argv[:1] == ["CMD"]:
        argv = argv[1:]
    elif argv[:1] == ["CMD-SHELL"]:
        argv = ["sh", "-c", " ".join(argv[1:])]
    if argv[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in re.split(r"&&|;|\|\|", argv[2]) if part.strip()]
    return [argv]


def entry_points(argv: list[str]) -> list[tuple[str, str, str | None]]:
    """(kind, module, attribute) for each piece of Courier code an argument list starts."""
    found: list[tuple[str, str, str | None]] = []
    program = Path(argv[0]).name if argv else ""
    if program == "uvicorn":
        module, _, attribute = next(arg for arg in argv[1:] if not arg.startswith("-")).partition(":")
        found.append(("uvicorn", module, attribute))
    elif program == "celery":
        found.append(("celery -A", argv[argv.index("-A") + 1], "app"))
    elif program.startswith("python") and "-m" in argv:
        found.append(("python -m", argv[argv.index("-m") + 1], None))
    elif program.startswith("python") and "-c" in argv:
        code = argv[argv.index("-c") + 1]
        for module, names in re.findall(r"from\s+([\w.]+)\s+import\s+([\w\s,]+?)(?:;|$)", code, re.M):
            found.extend(("python -c", module, name.strip()) for name in names.split(","))
        found.extend(("python -c", module, None) for module in re.findall(r"^\s*import\s+([\w.]+)", code, re.M))
    elif program == "alembic":
        found.append(("alembic", "alembic", None))
    return found


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Dependency name → condition (the list form means service_started)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def is_one_shot(service: dict[str, Any]) -> bool:
    return str(service.get("restart", "no")) == "no" and "healthcheck" not in service


@pytest.mark.parametrize(
    ("compose_file", "service_name"),
    [(name, service) for name in COMPOSE_FILES for service in courier_services(name)],
)
def test_every_courier_service_runs_an_entry_point_that_exists(compose_file: str, service_name: str) -> None:
    # Given a service of a compose file that runs the Courier image
    service = load(compose_file)["services"][service_name]
    # When its command and its healthcheck are read for the Courier code they start
    argvs = commands(service["command"])
    if "healthcheck" in service:
        argvs += commands(service["healthcheck"]["test"])
    started = [entry for argv in argvs for entry in entry_points(argv)]
    # Then its command starts something we can check
    assert any(entry_points(argv) for argv in commands(service["command"])), service["command"]
    # And every module it names is importable, with the attribute the tool looks up
    for kind, module, attribute in started:
        if kind == "alembic":
            assert (ROOT / "alembic.ini").is_file() and any((ROOT / "alembic" / "versions").glob("*.py"))
            continue
        assert importlib.util.find_spec(module) is not None, f"{kind} {module}: no such module"
        if attribute:
            assert hasattr(importlib.import_module(module), attribute), f"{kind} {module}: no attribute {attribute}"


@pytest.mark.parametrize("compose_file", COMPOSE_FILES)
def test_every_variable_a_compose_file_reads_is_a_setting_in_env_example(compose_file: str) -> None:
    # Given the settings .env.example documents
    known = set(env_example())
    # When every ${VAR} of the compose file is collected
    names = {match.group("name") or match.group("bare") for match in references(load(compose_file))}
    # Then each is a setting, or one of the few that only the compose files read
    assert names, "no variables found: the reference pattern is broken"
    assert names - known - COMPOSE_ONLY == set()


@pytest.mark.parametrize("compose_file", COMPOSE_FILES)
def test_every_setting_reaches_the_courier_containers_or_is_listed_with_the_reason_it_does_not(
    compose_file: str,
) -> None:
    # Given the settings .env.example documents, and those the file deliberately leaves out
    settings = set(env_example())
    left_out = set(NOT_FORWARDED) | set(NOT_FORWARDED_BY_FILE[compose_file])
    # When the environment of every Courier service is collected
    services = load(compose_file)["services"]
    forwarded = {key for name in courier_services(compose_file) for key in services[name]["environment"]}
    # Then a setting added to .env.example is not silently missing from the containers
    assert settings - forwarded - left_out == set()
    assert left_out <= settings, "NOT_FORWARDED names a setting that no longer exists"


def test_every_variable_is_written_with_braces_so_the_checks_see_its_default() -> None:
    # Given both compose files
    for compose_file in COMPOSE_FILES:
        # When bare $VAR references are collected
        bare = [match.group(0) for match in references(load(compose_file)) if match.group("bare")]
        # Then there are none (a container's own variable is written $$VAR)
        assert bare == [], compose_file


def test_the_dev_file_defaults_each_setting_to_the_value_env_example_gives_it() -> None:
    # Given the documented defaults
    documented = env_example()
    # When the defaults of the dev compose file are read
    defaults = {
        (match.group("name"), match.group("arg") or "")
        for match in references(load(DEV))
        if match.group("op") in (":-", "-")
    }
    # Then each equals the .env.example value, so a dev stack behaves like a native one
    assert defaults, "no defaults found"
    assert {(name, value) for name, value in defaults if documented.get(name) != value} == set()


@pytest.mark.parametrize("secret", PROD_SECRETS)
def test_the_prod_file_refuses_to_start_without_each_secret(secret: str) -> None:
    # Given the production compose file
    found = [match for match in references(load(PROD)) if match.group("name") == secret]
    # When its references to the secret are read
    # Then there is at least one, and every one is required (`:?`), never defaulted
    assert found, f"{secret} is not used"
    assert {match.group("op") for match in found} == {":?"}, [match.group(0) for match in found]


def test_the_prod_file_runs_courier_in_production_mode_with_restarts() -> None:
    # Given the production compose file
    services = load(PROD)["services"]
    for name in courier_services(PROD):
        service = services[name]
        # Then every Courier process runs with ENVIRONMENT=production
        assert service["environment"]["ENVIRONMENT"] == "production", name
        # And every long-running one is restarted when it dies
        if not is_one_shot(service):
            assert service["restart"] == "unless-stopped", name


def test_the_prod_workers_are_replicated_per_tier_and_beat_runs_once() -> None:
    # Given the production services
    services = load(PROD)["services"]
    # When their replica counts are read
    replicas = {name: services[name].get("deploy", {}).get("replicas", 1) for name in services}
    # Then the high tier has the most workers and there is exactly one beat
    assert replicas["worker-high"] >= replicas["worker-medium"] >= replicas["worker-low"] >= 1
    assert replicas["worker-high"] > 1
    assert replicas["beat"] == 1


def test_the_prod_broker_is_a_three_node_cluster_sharing_one_cookie() -> None:
    # Given the production services
    services = load(PROD)["services"]
    nodes = [name for name in services if name.startswith("rabbitmq-")]
    # Then there are three RabbitMQ nodes, each named after its host and given the same required cookie
    assert len(nodes) == 3
    for name in nodes:
        assert services[name]["hostname"] == name
        assert services[name]["environment"]["RABBITMQ_ERLANG_COOKIE"].startswith("${RABBITMQ_ERLANG_COOKIE:?")
    # And provisioning waits for all three, so quorum queues get a replica on each
    assert {name for name, condition in depends_on(services["migrate"]).items() if name in nodes} == set(nodes)


def test_every_prod_client_is_given_every_broker_node_and_every_sentinel() -> None:
    # Given the production services and the settings every Courier container gets (defaults applied)
    services = load(PROD)["services"]
    for name in courier_services(PROD):
        env = {key: interpolate(str(value)) for key, value in services[name]["environment"].items()}
        # Then the broker hosts and management URLs name each RabbitMQ node, and the queues are quorum, replicated
        nodes = {node for node in services if node.startswith("rabbitmq-")}
        assert {host.split(":")[0] for host in env["RABBITMQ_HOSTS"].split(",")} == nodes, name
        assert {urlsplit(url).hostname for url in env["RABBITMQ_MANAGEMENT_URLS"].split(",")} == nodes, name
        assert env["QUEUE_TYPE"] == "quorum" and int(env["QUEUE_REPLICAS"]) == len(nodes), name
        # And Redis is reached through every Sentinel of the file, never a server directly
        sentinels = {s for s, service in services.items() if "--sentinel" in str(service.get("command", ""))}
        assert len(sentinels) == 3
        assert {address.split(":")[0] for address in env["REDIS_SENTINELS"].split(",")} == sentinels, name
    # And the Sentinels watch the first Redis as primary with a quorum of two, its replica following it
    sentinel_script = str(services["sentinel-1"]["command"])
    assert "sentinel monitor $$REDIS_SENTINEL_MASTER redis-1 6379 2" in sentinel_script
    assert "--replicaof redis-1 6379" in str(services["redis-2"]["command"])


@pytest.mark.parametrize("compose_file", COMPOSE_FILES)
def test_every_service_has_a_healthcheck_or_is_a_one_shot_that_others_wait_for(compose_file: str) -> None:
    # Given every service of the file
    services = load(compose_file)["services"]
    awaited = {
        name
        for service in services.values()
        for name, cond in depends_on(service).items()
        if cond == "service_completed_successfully"
    }
    for name, service in services.items():
        # Then it is health-checked, or it runs once and a long-running service waits for it to succeed
        # (which is also what lets `docker compose up --wait` finish)
        if is_one_shot(service):
            assert name in awaited, f"{name} is a one-shot nobody waits for"
        else:
            assert service["healthcheck"]["test"], name


@pytest.mark.parametrize("compose_file", COMPOSE_FILES)
def test_courier_processes_start_only_after_migrate_has_succeeded(compose_file: str) -> None:
    # Given the Courier services of the file
    services = load(compose_file)["services"]
    for name in courier_services(compose_file):
        if name == "migrate":
            continue
        # Then each waits for the migrate job, and for every dependency to be healthy or done
        conditions = depends_on(services[name])
        assert conditions.get("migrate") == "service_completed_successfully", name
        assert set(conditions.values()) <= {"service_healthy", "service_completed_successfully"}, name


@pytest.mark.parametrize("compose_file", COMPOSE_FILES)
def test_every_host_a_courier_service_connects_to_is_a_service_of_the_same_file(compose_file: str) -> None:
    # Given the Courier services, with `${VAR:-default}` resolved to its default
    services = load(compose_file)["services"]
    for name in courier_services(compose_file):
        environment = {key: interpolate(str(value)) for key, value in services[name]["environment"].items()}
        for setting in HOST_SETTINGS:
            value = environment.get(setting, "")
            if not value or "${" in value:  # unset, or supplied by the operator
                continue
            # When the host is read from the URL (or the bare host)
            host = urlsplit(value).hostname if "://" in value else value
            # Then it is a service here, not 127.0.0.1 (which in a container is the container itself)
            assert host in services, f"{name}: {setting}={value}"


def test_the_dev_rabbitmq_default_user_is_the_one_migrate_provisions_with() -> None:
    # Given the dev broker, whose image creates one administrator on first boot
    services = load(DEV)["services"]
    broker = services["rabbitmq"]["environment"]
    migrate = services["migrate"]["environment"]
    # Then migrate provisions as that administrator, and the Courier user and vhost are the ones it creates
    assert migrate["RABBITMQ_ADMIN_USER"] == broker["RABBITMQ_DEFAULT_USER"] == migrate["RABBITMQ_USER"]
    assert migrate["RABBITMQ_ADMIN_PASSWORD"] == broker["RABBITMQ_DEFAULT_PASS"] == migrate["RABBITMQ_PASSWORD"]
    assert migrate["RABBITMQ_VHOST"] == broker["RABBITMQ_DEFAULT_VHOST"]


def test_the_image_installs_the_project_runs_as_a_user_and_serves_the_api_by_default() -> None:
    # Given the Dockerfile's final stage (the image; a stage before it installs the front-end packages)
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    everything = [line for line in lines if line and not line.startswith("#")]
    instructions = everything[max(i for i, line in enumerate(everything) if line.startswith("FROM ")) :]
    # Then it starts from Python 3.11, installs the project, and drops root before the command
    assert instructions[0] == "FROM python:3.11-slim"
    assert any("pip install" in line and line.rstrip("\\ ").endswith(".") for line in instructions)
    user_at = max(i for i, line in enumerate(instructions) if line.startswith("USER "))
    assert instructions[user_at] not in ("USER root", "USER 0")
    cmd = next(line for line in instructions if line.startswith("CMD "))
    assert instructions.index(cmd) > user_at
    # And its default command is the API entry point, which exists
    [(kind, module, attribute)] = entry_points(yaml.safe_load(cmd.removeprefix("CMD ")))
    assert kind == "uvicorn" and hasattr(importlib.import_module(module), str(attribute))


def test_the_image_serves_the_front_end_packages_installed_from_the_lock_file() -> None:
    # Given the Dockerfile and the packages the API serves (app/web_assets.py)
    from app.web_assets import PACKAGES

    text = (ROOT / "Dockerfile").read_text()
    # Then a stage installs exactly package-lock.json, running no install script
    assert "COPY package.json package-lock.json ./" in text
    assert "RUN npm ci --no-audit --no-fund --ignore-scripts" in text
    # And the image gets every served directory where WEB_ASSETS_DIR points
    assert "WEB_ASSETS_DIR=/app/node_modules" in text
    for package in PACKAGES:
        copy = f"COPY --from=web-assets /web/node_modules/{package.directory} ./node_modules/{package.directory}"
        assert copy in text, package.name
    # And the build context does not send a local node_modules/ (the stage installs its own)
    assert "node_modules" in (ROOT / ".dockerignore").read_text().splitlines()


@pytest.mark.parametrize("compose_file", COMPOSE_FILES)
def test_every_redis_keeps_an_append_only_file_fsynced_every_second_on_a_volume(compose_file: str) -> None:
    # Given the Redis servers of the file (the image, or a command that runs redis-server)
    services = load(compose_file)["services"]
    servers = {name: s for name, s in services.items() if str(s.get("image", "")).startswith("redis")}
    sentinels = {name for name, s in servers.items() if "--sentinel" in str(s["command"])}
    assert set(servers) - sentinels
    for name, service in servers.items():
        if name in sentinels:  # a Sentinel keeps no data, only its configuration
            continue
        # Then each runs with the append-only file on and fsync every second (what Courier checks at start-up;
        # RDB snapshots alone lose what was accepted since the last one), and keeps /data on a named volume
        argv = [arg for command in commands(service["command"]) for arg in command]
        assert argv[argv.index("--appendonly") + 1] == "yes", name
        assert argv[argv.index("--appendfsync") + 1] == "everysec", name
        assert any(str(volume).endswith(":/data") for volume in service.get("volumes", [])), name


@pytest.mark.parametrize("compose_file", COMPOSE_FILES)
def test_flower_turns_task_events_on_only_when_task_events_enabled_says_so(compose_file: str) -> None:
    # Given Flower's command line: Flower's own enable_events defaults to true, which turns events on in every
    # worker whatever TASK_EVENTS_ENABLED says
    command = [str(arg) for arg in load(compose_file)["services"]["flower"]["command"]]
    # Then it is given TASK_EVENTS_ENABLED, defaulting to .env.example's value (false)
    assert "--enable_events=${TASK_EVENTS_ENABLED:-false}" in command
    assert env_example()["TASK_EVENTS_ENABLED"] == "false"


def test_the_cluster_nodes_pause_a_minority_rather_than_run_partitioned() -> None:
    # Given the RabbitMQ configuration of the prod file's nodes and of scripts/cluster.sh's
    prod = load(PROD)["configs"]["rabbitmq-conf"]["content"]
    local = (ROOT / "scripts" / "cluster.sh").read_text()
    # Then a node cut off from the majority pauses (its clients fail over) and rejoins by itself: with the default,
    # ignore, a node frozen past net_ticktime stayed partitioned, holding its clients, until restarted by hand
    for config in (prod, local):
        assert re.search(r"^\s*cluster_partition_handling = pause_minority$", config, re.M)
