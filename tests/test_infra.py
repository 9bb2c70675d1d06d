"""infra/docker-compose.yml and prefect.yaml name services and commands that exist."""
from __future__ import annotations

from pathlib import Path

import yaml

from recsys.app.cli import main as cli_main

REPO = Path(__file__).resolve().parent.parent


def test_compose_services_and_commands():
    compose = yaml.safe_load((REPO / "infra" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "prefect-server", "worker", "dask-scheduler", "dask-worker"}
    # Prefect's own metadata database is Postgres, created by the init script
    server_env = services["prefect-server"]["environment"]
    assert server_env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert "/prefect" in server_env["PREFECT_API_DATABASE_CONNECTION_URL"]
    init_mount = next(v for v in services["postgres"]["volumes"] if "initdb" in v)
    assert (REPO / "infra" / init_mount.split(":")[0].removeprefix("./")).exists()
    assert services["prefect-server"]["command"][:3] == ["prefect", "server", "start"]
    # the worker runs a real recsys command against the server and the database
    worker = services["worker"]
    program, command = worker["command"][0], worker["command"][1]
    assert program == "recsys" and command in cli_main.commands
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["environment"]["RECSYS_DATABASE_URL"].count("postgresql+psycopg2://") == 1
    assert set(worker["depends_on"]) == {"postgres", "prefect-server", "dask-scheduler"}
    # the scheduled runs walk on the compose file's Dask cluster (recsys/jobs/execution.py)
    assert worker["environment"]["RECSYS_DASK_ADDRESS"] == "tcp://dask-scheduler:8786"
    assert services["dask-scheduler"]["command"][:2] == ["dask", "scheduler"]
    assert services["dask-worker"]["command"][:3] == ["dask", "worker", "tcp://dask-scheduler:8786"]
    for name in ("dask-scheduler", "dask-worker"):  # the same image: recsys importable in every worker
        assert services[name]["build"] == worker["build"]
    dockerfile = REPO / worker["build"]["context"].replace("..", ".") / worker["build"]["dockerfile"]
    assert dockerfile.exists()
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source


def test_prefect_yaml_entrypoints_exist_and_match_the_served_deployments():
    import importlib

    from recsys.app.scheduling import build_deployments

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    served = {(d.flow_name, d.name) for d in build_deployments()}
    declared = set()
    for deployment in spec["deployments"]:
        path, func = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, func)
        declared.add((flow.name, deployment["name"]))
        assert deployment["schedules"][0]["cron"]
    assert declared == served
