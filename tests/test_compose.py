"""Static checks of compose.yaml, the Dockerfile and .dockerignore against the code they start.

No Docker engine runs here, so these parse the files (PyYAML, ``ast``, a small Dockerfile
reader) and check what a reader would otherwise only find out at ``docker compose up``: a
service, stage, module, attribute, management command or environment variable that does not
exist, a worker on the wrong queue, a GPU that is never reserved. Nothing is imported or run.
"""

from __future__ import annotations

import ast
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CONFIG = ROOT / "webui" / "config.py"
SETTINGS = ROOT / "webui" / "settings.py"
PYPROJECT = ROOT / "pyproject.toml"

APP_SERVICES = ("web", "worker-cpu", "worker-models", "worker-gpu")
EXPECTED_SERVICES = {*APP_SERVICES, "redis", "postgres"}

# Variables the app containers may carry although webui/config.py does not read them.
WELL_KNOWN_ENV: dict[str, str] = {
    "DJANGO_SETTINGS_MODULE": "read by Django itself (python -m django, asgi.py, celery_app.py)",
    "PATH": "puts the venv's celery and uvicorn on the path",
    "PYTHONUNBUFFERED": "logs reach `docker compose logs` as they are written",
    "PYTHONDONTWRITEBYTECODE": "/app is read-only for the app user; no .pyc attempts",
    "PIP_NO_CACHE_DIR": "pip, at build time only",
    "PIP_DISABLE_PIP_VERSION_CHECK": "pip, at build time only",
    "DEBIAN_FRONTEND": "apt, at build time only",
    "LD_LIBRARY_PATH": "the CUDA images' loader path",
    "NVIDIA_VISIBLE_DEVICES": "the NVIDIA container runtime",
    "NVIDIA_DRIVER_CAPABILITIES": "the NVIDIA container runtime",
}

# Commands Django and the INSTALLED_APPS that are not ours provide (no import here to list them).
DJANGO_BUILTIN_COMMANDS = frozenset(
    {
        # django.core
        "check", "compilemessages", "createcachetable", "dbshell", "diffsettings", "dumpdata",
        "flush", "inspectdb", "loaddata", "makemessages", "makemigrations", "migrate",
        "optimizemigration", "runserver", "sendtestemail", "shell", "showmigrations",
        "sqlflush", "sqlmigrate", "sqlsequencereset", "squashmigrations", "startapp",
        "startproject", "test", "testserver",
        # django.contrib.auth, contenttypes, sessions, staticfiles; channels
        "changepassword", "createsuperuser", "remove_stale_contenttypes", "clearsessions",
        "collectstatic", "findstatic", "runworker",
    }
)  # fmt: skip

# A shell command line is split into simple commands at these operators.
SHELL_OPERATORS = frozenset({"&&", "||", ";", "|", "&", "(", ")"})


# --------------------------------------------------------------------------------------------
# Readers


def load_compose() -> dict[str, Any]:
    assert COMPOSE.is_file(), "compose.yaml is missing"
    data = yaml.safe_load(COMPOSE.read_text())  # resolves the x-corral-* anchors and `<<` merges
    assert isinstance(data, dict), "compose.yaml is not a mapping"
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose.get("services") or {}


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment`, list or mapping form, as a mapping of strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Dependency name -> condition (compose's default for the short list form is started)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def named_volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source, for the short `source:target[:mode]` and long volume forms."""
    mounts: dict[str, str] = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            mounts[volume["target"]] = volume.get("source", "")
        else:
            source, target = volume.split(":")[:2]
            mounts[target] = source
    return mounts


def split_shell(line: str) -> list[list[str]]:
    """Split a shell command line into simple commands, dropping `exec` and VAR=value prefixes."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in SHELL_OPERATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    result = []
    for argv in commands:
        while argv and (argv[0] == "exec" or re.fullmatch(r"[A-Za-z_]\w*=.*", argv[0])):
            argv = argv[1:]
        if argv:
            result.append(argv)
    return result


def simple_commands(argv: list[str]) -> list[list[str]]:
    """The programs an argv runs, looking inside `sh -c '...'`."""
    if len(argv) >= 3 and Path(argv[0]).name in {"sh", "bash"} and argv[1] == "-c":
        return split_shell(argv[2])
    return [argv]


def service_commands(service: dict[str, Any]) -> list[list[str]]:
    """Every program a service runs: its entrypoint/command and its healthcheck."""
    found: list[list[str]] = []
    for key in ("entrypoint", "command"):
        value = service.get(key)
        if isinstance(value, str):  # compose splits a string command itself, without a shell
            value = shlex.split(value)
        if value:
            found += simple_commands([str(v) for v in value])
    test = (service.get("healthcheck") or {}).get("test")
    if isinstance(test, str):
        found += split_shell(test)
    elif test and test[0] == "CMD":
        found += simple_commands([str(v) for v in test[1:]])
    elif test and test[0] == "CMD-SHELL":
        found += split_shell(test[1])
    return found


def option(argv: list[str], *names: str) -> str | None:
    """The value of a command-line option given as `-X v`, `--name v`, `--name=v` or `-Xv`."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
            if not name.startswith("--") and arg.startswith(name) and len(arg) > len(name):
                return arg[len(name) :]
    return None


def management_command(argv: list[str]) -> str | None:
    """The Django management command an argv runs, if it runs one."""
    rest: list[str] | None = None
    if Path(argv[0]).name == "django-admin":
        rest = argv[1:]
    elif Path(argv[0]).name.startswith("python"):
        if argv[1:3] == ["-m", "django"]:
            rest = argv[3:]
        elif len(argv) > 1 and Path(argv[1]).name == "manage.py":
            rest = argv[2:]
    if rest is None:
        return None
    positional = [arg for arg in rest if not arg.startswith("-")]
    return positional[0] if positional else None


def is_celery(argv: list[str]) -> bool:
    return Path(argv[0]).name == "celery" or argv[:3] == ["python", "-m", "celery"]


def celery_queues(argv: list[str]) -> list[str]:
    value = option(argv, "-Q", "--queues")
    return value.split(",") if value else []


def module_file(module: str) -> Path:
    """Where a dotted module lives in this repository (module.py or package/__init__.py)."""
    base = ROOT.joinpath(*module.split("."))
    package = base / "__init__.py"
    return package if package.is_file() else base.with_suffix(".py")


def top_level_names(path: Path) -> set[str]:
    """Names a module binds at import time: assignments, defs, classes, imports (also in if/try)."""
    names: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(
                node.target, ast.Name
            ):
                names.add(node.target.id)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, ast.If | ast.Try | ast.With):
                for part in ("body", "orelse", "finalbody"):
                    visit(getattr(node, part, []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(ast.parse(path.read_text(), filename=str(path)).body)
    return names


def check_module_attribute(module: str, attributes: tuple[str, ...], where: str) -> list[str]:
    """Problems, if `module` is not a file here or binds none of `attributes`."""
    path = module_file(module)
    if not path.is_file():
        return [f"{where}: module {module!r} has no file ({path.relative_to(ROOT)} is missing)"]
    if not set(attributes) & top_level_names(path):
        return [f"{where}: {path.relative_to(ROOT)} defines none of {attributes}"]
    return []


def config_env_names() -> set[str]:
    """Every variable webui/config.py reads: env("X"), env.<type>("X"), os.environ/getenv."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(CONFIG.read_text(), filename=str(CONFIG))):
        if isinstance(node, ast.Call) and node.args:
            first = node.args[0]
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                continue
            func = node.func
            reads_env = (isinstance(func, ast.Name) and func.id == "env") or (
                isinstance(func, ast.Attribute)
                and (
                    (isinstance(func.value, ast.Name) and func.value.id == "env")
                    or func.attr == "getenv"
                    or (isinstance(func.value, ast.Attribute) and func.value.attr == "environ")
                )
            )
            if reads_env:
                names.add(first.value)
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "environ"
            and isinstance(node.slice, ast.Constant)
        ):
            names.add(str(node.slice.value))
    return names


def management_commands() -> dict[str, Path]:
    """Our management commands, by name: webui/<app>/management/commands/<name>.py."""
    return {
        path.stem: path
        for path in (ROOT / "webui").glob("*/management/commands/*.py")
        if not path.name.startswith("_")
    }


def installed_apps() -> list[str]:
    """INSTALLED_APPS from webui/settings.py, read with ast."""
    for node in ast.parse(SETTINGS.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "INSTALLED_APPS" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    return []


def pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text())


def dependency_names() -> set[str]:
    return {
        re.split(r"[\s\[<>=!~;@]", dep, maxsplit=1)[0].lower()
        for dep in pyproject()["project"]["dependencies"]
    }


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (KEYWORD, arguments)


def dockerfile_stages() -> dict[str, Stage]:
    """The Dockerfile's stages by name (or index), with global ARG defaults expanded in FROM."""
    assert DOCKERFILE.is_file(), "Dockerfile is missing"
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())  # join continuation lines
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            parts = args.split()
            base = re.sub(
                r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), parts[0]
            )
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages))
            current = stages[name] = Stage(name=name, base=base)
        elif current is None:
            if keyword == "ARG":
                key, _, default = args.partition("=")
                global_args[key] = default.strip("\"'")
        else:
            current.instructions.append((keyword, args))
    return stages


def stage_closure(stages: dict[str, Stage], target: str) -> list[Stage]:
    """The stages a target is built from (FROM another stage, COPY --from), dependencies first."""
    ordered: list[Stage] = []

    def visit(name: str) -> None:
        stage = stages[name]
        if stage in ordered:
            return
        if stage.base in stages:
            visit(stage.base)
        for keyword, args in stage.instructions:
            source = re.search(r"--from=(\S+)", args)
            if keyword == "COPY" and source and source.group(1) in stages:
                visit(source.group(1))
        ordered.append(stage)

    visit(target)
    return ordered


def closure_instructions(stages: dict[str, Stage], target: str) -> list[tuple[str, str]]:
    return [ins for stage in stage_closure(stages, target) for ins in stage.instructions]


def env_keys(args: str) -> list[str]:
    """The names an ENV instruction sets (`K=V K2=V2` or the old `K V` form)."""
    if "=" not in args.split()[0]:
        return [args.split()[0]]
    return [word.split("=", 1)[0] for word in shlex.split(args)]


def image_env(stages: dict[str, Stage], target: str) -> dict[str, str]:
    """ENV values of a target's final stage and the stages it is FROM (not COPY --from)."""
    chain: list[Stage] = []
    name: str | None = target
    while name in stages:
        chain.insert(0, stages[name])
        name = stages[name].base
    values: dict[str, str] = {}
    for stage in chain:
        for keyword, args in stage.instructions:
            if keyword == "ENV":
                if "=" not in args.split()[0]:
                    key, _, value = args.partition(" ")
                    values[key] = value.strip()
                else:
                    values.update(word.split("=", 1) for word in shlex.split(args))
    return values


def service_targets(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Service -> Dockerfile target, for services built from this repository's Dockerfile."""
    targets = {}
    for name, service in services.items():
        build = service.get("build")
        if build is None:
            continue
        if isinstance(build, str):
            build = {"context": build}
        assert Path(build.get("dockerfile", "Dockerfile")).name == "Dockerfile", name
        targets[name] = build.get("target", "")
    return targets


def installs_project(run: str) -> bool:
    """Whether a RUN line pip-installs the project itself (`pip install [opts] [-e] .`)."""
    return bool(re.search(r"pip install[^&;|]*\s(-e\s+)?\.(\s|$)", run))


def dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `**` spans directories, `*` and `?` do not."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def iter_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from iter_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from iter_strings(item)


# --------------------------------------------------------------------------------------------
# compose.yaml: shape


def test_compose_has_the_five_services_and_no_version_key(compose: dict[str, Any]) -> None:
    # `version:` is obsolete in the Compose spec; recent compose warns on every command.
    assert "version" not in compose
    assert set(compose.get("services") or {}) == EXPECTED_SERVICES


def test_shared_environment_is_one_anchor(services: dict[str, dict[str, Any]]) -> None:
    text = COMPOSE.read_text()
    assert re.search(r"^x-corral-env:\s*&corral-env\s*$", text, re.MULTILINE)
    shared = load_compose()["x-corral-env"]
    for name in APP_SERVICES:
        env = environment(services[name])
        assert {k: env.get(k) for k in shared} == {k: str(v) for k, v in shared.items()}, name


def test_depends_on_names_defined_services_with_healthchecks(
    services: dict[str, dict[str, Any]],
) -> None:
    problems = []
    for name, service in services.items():
        for dep, condition in depends_on(service).items():
            if dep not in services:
                problems.append(f"{name} depends on undefined service {dep!r}")
            elif condition == "service_healthy" and not services[dep].get("healthcheck"):
                # No HEALTHCHECK in our images nor in postgres/redis: compose would wait forever.
                problems.append(f"{name} waits for {dep} to be healthy; {dep} has no healthcheck")
            # A service outside any profile that depends on a profiled one breaks a plain `up`.
            if dep in services and services[dep].get("profiles") and not service.get("profiles"):
                problems.append(f"{name} depends on {dep}, which only runs under a profile")
    assert not problems, "\n".join(problems)


def test_app_services_wait_for_the_services_their_urls_name(
    services: dict[str, dict[str, Any]],
) -> None:
    problems = []
    for name in APP_SERVICES:
        env, deps = environment(services[name]), depends_on(services[name])
        for var, image in (("DATABASE_URL", "postgres"), ("REDIS_URL", "redis")):
            host = urlsplit(env.get(var, "")).hostname
            if host not in services or not str(services[host].get("image", "")).startswith(image):
                problems.append(f"{name}: {var} host {host!r} is not a {image} service")
            elif deps.get(host) != "service_healthy":
                problems.append(f"{name} does not wait for {host} to be healthy")
    assert not problems, "\n".join(problems)


def test_database_url_matches_the_postgres_service(services: dict[str, dict[str, Any]]) -> None:
    pg = environment(services["postgres"])
    url = urlsplit(environment(services["web"])["DATABASE_URL"])
    assert url.scheme in {"postgres", "postgresql"}
    assert (url.username, url.password, url.path.lstrip("/"), url.port or 5432) == (
        pg["POSTGRES_USER"],
        pg["POSTGRES_PASSWORD"],
        pg["POSTGRES_DB"],
        5432,
    )
    assert str(services["postgres"]["image"]).startswith("postgres:16")
    mounts = named_volume_mounts(services["postgres"])
    assert mounts.get("/var/lib/postgresql/data") in (load_compose().get("volumes") or {})


def test_redis_and_postgres_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    assert str(services["redis"]["image"]).startswith("redis:7")
    assert "redis-cli" in " ".join(map(str, services["redis"]["healthcheck"]["test"]))
    assert "pg_isready" in " ".join(map(str, services["postgres"]["healthcheck"]["test"]))


def test_secret_key_is_required_from_the_environment(services: dict[str, dict[str, Any]]) -> None:
    # `${VAR:?msg}` makes compose refuse to start without it, rather than bake in a default.
    for name in APP_SERVICES:
        value = environment(services[name]).get("SECRET_KEY", "")
        assert re.fullmatch(r"\$\{SECRET_KEY:\?[^}]*\}", value), (name, value)


def test_interpolations_are_well_formed() -> None:
    # A stray `$` or an unclosed `${` fails `docker compose up` with "invalid interpolation".
    for value in iter_strings(load_compose()):
        rest = re.sub(r"\$\$", "", value)
        rest = re.sub(r"\$\{[A-Za-z_]\w*(?:(?::?[-?+])[^}]*)?\}", "", rest)
        rest = re.sub(r"\$[A-Za-z_]\w*", "", rest)
        assert "$" not in rest, f"bad interpolation in {value!r}"


def test_app_services_share_one_data_volume(services: dict[str, dict[str, Any]]) -> None:
    # corral_prepare (web) writes the model that the workers load: same volume, same path.
    declared = load_compose().get("volumes") or {}
    sources = set()
    for name in APP_SERVICES:
        env = environment(services[name])
        data_dir = env.get("DATA_DIR", "")
        assert data_dir == "/data", name
        assert env.get("MODELS_DIR", "").startswith(data_dir + "/"), name
        source = named_volume_mounts(services[name]).get(data_dir)
        assert source in declared, f"{name}: {data_dir} is not on a declared named volume"
        sources.add(source)
    assert len(sources) == 1, sources


# --------------------------------------------------------------------------------------------
# compose.yaml: what the services run


def test_web_migrates_and_prepares_before_serving(services: dict[str, dict[str, Any]]) -> None:
    commands = service_commands(services["web"])
    runs = [management_command(cmd) or Path(cmd[0]).name for cmd in commands]
    assert "uvicorn" in runs, runs
    serve = runs.index("uvicorn")
    assert "migrate" in runs[:serve] and "corral_prepare" in runs[:serve], runs
    uvicorn = commands[serve]
    assert "webui.asgi:application" in uvicorn
    # Bound to 127.0.0.1 the published port would reach nothing.
    assert option(uvicorn, "--host") == "0.0.0.0"
    # Behind `sh -c` only `exec` lets SIGTERM reach uvicorn instead of the shell.
    command = services["web"]["command"]
    if isinstance(command, list) and command[:2] == ["sh", "-c"]:
        assert re.search(r"\bexec\s+uvicorn\b", command[2])


def test_web_publishes_the_port_uvicorn_listens_on(services: dict[str, dict[str, Any]]) -> None:
    web = services["web"]
    uvicorn = next(cmd for cmd in service_commands(web) if Path(cmd[0]).name == "uvicorn")
    port = option(uvicorn, "--port")
    published = [
        str(p["target"]) if isinstance(p, dict) else str(p).rsplit(":", 1)[-1].split("/")[0]
        for p in web.get("ports") or []
    ]
    assert port in published, (port, published)
    assert port in " ".join(map(str, web["healthcheck"]["test"]))
    if "PORT" in environment(web):
        assert environment(web)["PORT"] == port


def test_workers_consume_their_queues(services: dict[str, dict[str, Any]]) -> None:
    nodenames = []
    for name, queue in (("worker-cpu", "cpu"), ("worker-models", "models"), ("worker-gpu", "gpu")):
        celery = [cmd for cmd in service_commands(services[name]) if "worker" in cmd]
        assert len(celery) == 1 and is_celery(celery[0]), (name, celery)
        assert celery_queues(celery[0]) == [queue], name
        declared = environment(services[name]).get("CORRAL_WORKER_QUEUES")
        if declared is not None:  # the app's idea of the queue must agree with -Q
            assert declared.split(",") == [queue], name
        nodenames.append(option(celery[0], "-n", "--hostname"))
    # Two workers with one node name make Celery warn and mix up control replies.
    assert None not in nodenames and len(set(nodenames)) == len(nodenames), nodenames


def test_gpu_worker_reserves_an_nvidia_gpu_and_builds_the_gpu_target(
    services: dict[str, dict[str, Any]],
) -> None:
    gpu = services["worker-gpu"]
    assert service_targets(services)["worker-gpu"] == "gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia"
        and "gpu" in d.get("capabilities", [])
        and (d.get("count") == "all" or isinstance(d.get("count"), int) or d.get("device_ids"))
        for d in devices
    ), devices
    # 0 would silently run every layer on the CPU.
    assert environment(gpu).get("CORRAL_N_GPU_LAYERS") == "-1"
    # Under a profile, so a plain `docker compose up` works on a host without a GPU.
    assert gpu.get("profiles")
    assert not services["worker-cpu"].get("deploy", {}).get("resources", {}).get("reservations")


def test_cpu_services_build_the_cpu_target(services: dict[str, dict[str, Any]]) -> None:
    targets = service_targets(services)
    assert targets.get("web") == "cpu" and targets.get("worker-cpu") == "cpu", targets


def test_modules_and_attributes_named_in_commands_exist(
    services: dict[str, dict[str, Any]],
) -> None:
    problems: list[str] = []
    checked = 0
    for name, service in services.items():
        for argv in service_commands(service):
            program = Path(argv[0]).name
            if program == "uvicorn":
                spec = next(a for a in argv[1:] if re.fullmatch(r"[\w.]+:[\w.]+", a))
                module, attribute = spec.split(":")
                problems += check_module_attribute(module, (attribute,), f"{name} uvicorn")
                checked += 1
            elif is_celery(argv):
                app = option(argv, "-A", "--app")
                assert app, f"{name}: celery without -A"
                module, _, attribute = app.partition(":")
                # Celery's -A module looks up `app`, then `celery`, in the module.
                wanted = (attribute,) if attribute else ("app", "celery")
                problems += check_module_attribute(module, wanted, f"{name} celery -A")
                checked += 1
    assert checked >= 3, "expected uvicorn and two celery workers"  # web + both workers
    assert not problems, "\n".join(dict.fromkeys(problems))  # healthchecks repeat the -A


def test_programs_come_from_the_project_dependencies(services: dict[str, dict[str, Any]]) -> None:
    deps = dependency_names()
    for name in APP_SERVICES:
        for argv in service_commands(services[name]):
            program = Path(argv[0]).name
            if program in {"uvicorn", "celery"}:
                assert program in deps, f"{name} runs {program}, not a dependency in pyproject"


def test_management_commands_exist_and_are_installed(services: dict[str, dict[str, Any]]) -> None:
    ours = management_commands()
    apps = installed_apps()
    used = {
        cmd
        for name in APP_SERVICES
        for argv in service_commands(services[name])
        if (cmd := management_command(argv))
    }
    # Also the ones the comments tell a reader to run (`docker compose exec web ... X`).
    used |= set(
        re.findall(r"(?:manage\.py|django-admin|-m django)\s+([a-z_]\w*)", COMPOSE.read_text())
    )
    assert "migrate" in used and "corral_prepare" in used, used
    problems = []
    for command in sorted(used - DJANGO_BUILTIN_COMMANDS):
        path = ours.get(command)
        if path is None:
            problems.append(f"no management command file webui/*/management/commands/{command}.py")
            continue
        app = ".".join(path.relative_to(ROOT).parts[:2])
        if not any(a == app or a.startswith(app + ".apps.") for a in apps):
            problems.append(f"{command}: app {app} is not in INSTALLED_APPS")
        elif "Command" not in top_level_names(path):
            problems.append(f"{command}: {path.relative_to(ROOT)} defines no Command class")
    assert not problems, "\n".join(problems)


def test_django_commands_know_their_settings(services: dict[str, dict[str, Any]]) -> None:
    # `python -m django` and django-admin need DJANGO_SETTINGS_MODULE; manage.py needs the file.
    stages = dockerfile_stages()
    targets = service_targets(services)
    for name in APP_SERVICES:
        for argv in service_commands(services[name]):
            if not management_command(argv):
                continue
            if any(Path(a).name == "manage.py" for a in argv[:2]):
                assert (ROOT / "manage.py").is_file(), f"{name} runs manage.py, which is missing"
                continue
            settings = (
                option(argv, "--settings")
                or environment(services[name]).get("DJANGO_SETTINGS_MODULE")
                or image_env(stages, targets[name]).get("DJANGO_SETTINGS_MODULE")
            )
            assert settings, f"{name}: {argv} runs without DJANGO_SETTINGS_MODULE"
            assert module_file(settings).is_file(), settings


def test_app_environment_is_read_by_config(services: dict[str, dict[str, Any]]) -> None:
    read = config_env_names()
    assert {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DATA_DIR"} <= read  # the parser works
    unknown = {
        f"{name}: {var}"
        for name in APP_SERVICES
        for var in environment(services[name])
        if var not in read and var not in WELL_KNOWN_ENV
    }
    assert not unknown, f"set in compose.yaml but never read by webui/config.py: {sorted(unknown)}"


# --------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore


def test_dockerfile_has_the_targets_compose_builds(services: dict[str, dict[str, Any]]) -> None:
    stages = dockerfile_stages()
    wanted = set(service_targets(services).values())
    assert wanted == {"cpu", "gpu"}, wanted
    assert wanted <= set(stages), f"missing stages {wanted - set(stages)}"


def test_cpu_target(services: dict[str, dict[str, Any]]) -> None:
    stages = dockerfile_stages()
    chain = stage_closure(stages, "cpu")
    assert all(s.base.startswith("python:3.11-slim") for s in chain), [s.base for s in chain]
    runs = " ".join(args for kw, args in closure_instructions(stages, "cpu") if kw == "RUN")
    assert "build-essential" in runs and "cmake" in runs  # llama-cpp-python builds from source
    assert installs_project(runs), "the project is not pip-installed"
    final = stages["cpu"].instructions
    assert ("WORKDIR", "/app") in final
    assert image_env(stages, "cpu").get("DATA_DIR") == "/data"
    user = [args for kw, args in final if kw == "USER"]
    assert user and user[-1].split(":")[0] not in {"root", "0"}, "cpu target runs as root"


def test_gpu_target(services: dict[str, dict[str, Any]]) -> None:
    stages = dockerfile_stages()
    chain = stage_closure(stages, "gpu")
    assert any(re.fullmatch(r"nvidia/cuda:12\.[\d.]+-devel-ubuntu22\.04", s.base) for s in chain), [
        s.base for s in chain
    ]
    instructions = closure_instructions(stages, "gpu")
    runs = [args for kw, args in instructions if kw == "RUN"]
    assert any("python3.11" in run for run in runs)
    assert any(installs_project(run) for run in runs), "the project is not pip-installed"
    # The first pip install that resolves dependencies must be the CUDA build: any earlier one
    # pulls a CPU-only llama-cpp-python, and later installs then find it already satisfied.
    resolving = [run for run in runs if "pip install" in run and "--no-deps" not in run]
    assert resolving and "-DGGML_CUDA=on" in resolving[0], resolving[:1]
    user = [args for kw, args in stages["gpu"].instructions if kw == "USER"]
    assert user and user[-1].split(":")[0] not in {"root", "0"}, "gpu target runs as root"


def test_dockerfile_env_is_read_by_config() -> None:
    read = config_env_names()
    unknown = {
        key
        for stage in dockerfile_stages().values()
        for keyword, args in stage.instructions
        if keyword == "ENV"
        for key in env_keys(args)
        if key not in read and key not in WELL_KNOWN_ENV
    }
    assert not unknown, f"Dockerfile sets variables nothing reads: {sorted(unknown)}"


def test_dockerignore_keeps_what_the_image_needs() -> None:
    # pip install . needs pyproject.toml and its readme; the app needs templates/ and static/.
    patterns = [
        line.strip().lstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        # A path is excluded when it or a parent directory matches; the last match wins.
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        result = False
        for pattern in patterns:
            negate, glob = pattern.startswith("!"), pattern.lstrip("!")
            if any(dockerignore_regex(glob).fullmatch(p) for p in prefixes):
                result = not negate
        return result

    readme = pyproject()["project"].get("readme")
    needed = ["pyproject.toml", "webui/config.py", "templates", "static", "workers", "inference"]
    needed += [readme] if isinstance(readme, str) else []
    assert not [p for p in needed if ignored(p)], [p for p in needed if ignored(p)]
    assert all(ignored(p) for p in (".git", ".venv", "data", "webui/__pycache__"))


def test_build_context_has_the_files_pip_install_needs() -> None:
    # setuptools fails `pip install .` when pyproject's readme file is missing.
    readme = pyproject()["project"].get("readme")
    if isinstance(readme, str):
        assert (ROOT / readme).is_file(), f"pyproject.toml names readme {readme}, which is missing"
