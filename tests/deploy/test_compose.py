"""docker-compose.yml checked without a Docker engine: the Compose schema, and consistency with the code.

Every service command must parse with the real ``wsm`` CLI, every ``WSM_*`` variable must be a
Settings field, volumes and ports must be coherent, and the Dockerfile must copy what exists.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from wsm.cli import SUBCOMMANDS, build_parser
from wsm.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _settings_variables() -> set[str]:
    return {f"WSM_{name.upper()}" for name in Settings.model_fields}


def _validator() -> jsonschema.Draft201909Validator:
    schema = json.loads((ROOT / "deploy/schema/compose-spec.json").read_text())
    return jsonschema.Draft201909Validator(schema)


def test_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    errors = [f"{list(e.path)}: {e.message}" for e in _validator().iter_errors(compose)]
    assert not errors, errors


def test_the_schema_really_rejects_mistakes(compose: dict[str, Any]) -> None:
    broken = yaml.safe_load(yaml.safe_dump(compose))
    broken["services"]["api"]["restart_policy"] = "always"  # not a service key
    broken["services"]["redis"]["healthcheck"]["retries"] = "five"
    assert len(list(_validator().iter_errors(broken))) >= 2


def test_expected_services_are_present(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "redis",
        "minio",
        "minio-init",
        "api",
        "worker-merge",
        "worker-eval",
        "trainer",
    }
    for name in ("worker-eval", "trainer"):
        devices = compose["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"], f"{name} must reserve a GPU"


def _wsm_argv(command: list[str]) -> list[str] | None:
    if command[0] == "wsm":
        return command[1:]
    if command[0] == "torchrun":
        module = command.index("-m")
        assert command[module + 1] == "wsm.cli", "torchrun must start the wsm CLI module"
        return command[module + 2 :]
    return None


def test_every_wsm_command_parses(compose: dict[str, Any]) -> None:
    seen = 0
    for name, service in compose["services"].items():
        argv = _wsm_argv(service["command"]) if isinstance(service.get("command"), list) else None
        if argv is None:
            continue
        argv = [re.sub(r"\$\{[^}]*:-([^}]*)\}", r"\1", arg) for arg in argv]
        assert argv[0] in SUBCOMMANDS, f"{name}: 'wsm {argv[0]}' is not a wsm command"
        args = build_parser(only=argv[0]).parse_args(argv)
        assert callable(args.func), name
        seen += 1
    assert seen == 4  # api, worker-merge, worker-eval, trainer


def test_every_wsm_variable_is_a_setting(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text() + (ROOT / ".env.example").read_text()
    used = set(VARIABLE.findall(text)) | set(re.findall(r"^(WSM_[A-Z0-9_]+)=", text, re.M))
    for service in compose["services"].values():
        env = service.get("environment") or {}
        used |= {key for key in env if isinstance(env, dict)}
    unknown = {v for v in used if v.startswith("WSM_")} - _settings_variables()
    assert not unknown, f"variables no Settings field reads: {sorted(unknown)}"


def test_env_example_covers_every_required_variable() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    example = set(re.findall(r"^([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert required <= example, f"missing from .env.example: {sorted(required - example)}"


def test_volumes_and_ports_are_coherent(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used: set[str] = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                used.add(source)
    assert used == declared, f"declared but unused: {declared - used}; used but undeclared: {used - declared}"
    api = compose["services"]["api"]
    port = api["command"][api["command"].index("--port") + 1]
    assert api["ports"][0].endswith(f":{port}")
    assert f"localhost:{port}/healthz" in " ".join(api["healthcheck"]["test"])


def test_dependencies_name_real_services(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for dependency in service.get("depends_on", {}):
            assert dependency in compose["services"], f"{name} depends on unknown {dependency}"


def test_dockerfile_copies_what_exists() -> None:
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
