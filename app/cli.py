"""Operator CLI: `python -m app.cli --help`."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from app.config import get_settings

cli = typer.Typer(help="Courier operator commands.", no_args_is_help=True, add_completion=False)
topology_cli = typer.Typer(help="RabbitMQ topology: declare or verify.", no_args_is_help=True)
cli.add_typer(topology_cli, name="topology")


def _err(message: str) -> None:
    typer.echo(message, err=True)


@cli.command("create-api-key")
def create_api_key(
    name: Annotated[str, typer.Option(help="A unique name; it is recorded as 'who triggered' each run.")],
    role: Annotated[str, typer.Option(help="admin or client")] = "client",
) -> None:
    """Create an API key and print it alone on stdout, once; only its hash is stored."""
    from app.access import service
    from app.access.models import Role
    from app.db import session_scope
    from app.errors import CourierError

    try:
        parsed = Role(role)
    except ValueError:
        _err(f"Unknown role {role!r}: use admin or client.")
        raise typer.Exit(2) from None
    try:
        with session_scope() as session:
            _, plain = service.create(session=session, name=name, role=parsed)
    except CourierError as exc:
        _err(exc.message)
        raise typer.Exit(1) from None
    typer.echo(plain)


@cli.command("revoke-api-key")
def revoke_api_key(name: str) -> None:
    """Revoke a key by name (it stops working within API_KEY_CACHE_S seconds)."""
    from app.access import service
    from app.db import session_scope
    from app.errors import CourierError

    try:
        with session_scope() as session:
            service.revoke(session=session, name=name)
    except CourierError as exc:
        _err(exc.message)
        raise typer.Exit(1) from None
    _err(f"Revoked API key {name!r}.")


@cli.command("list-api-keys")
def list_api_keys() -> None:
    """List keys: name, role, prefix, created, revoked."""
    from app.access import service
    from app.db import session_scope

    with session_scope() as session:
        for key in service.list_keys(session=session):
            revoked = key.revoked_at.isoformat() if key.revoked_at else "-"
            typer.echo(f"{key.name}\t{key.role}\t{key.prefix}…\t{key.created_at.isoformat()}\t{revoked}")


@cli.command()
def provision() -> None:
    """Create the broker vhost and user (tags monitoring, policymaker) with the RABBITMQ_ADMIN_* account."""
    from app.rabbitmq import ManagementClient, ManagementError

    settings = get_settings()
    user, password = settings.broker_credentials
    try:
        with ManagementClient.for_admin(settings) as admin:
            admin.put_vhost(settings.broker_vhost)
            if user != settings.rabbitmq_admin_user:
                admin.put_user(user, password, "monitoring,policymaker")
            admin.put_permissions(settings.broker_vhost, user)
    except ManagementError as exc:
        _err(f"Provisioning failed: {exc}")
        raise typer.Exit(1) from None
    _err(f"Provisioned vhost {settings.broker_vhost!r} and user {user!r}.")


@topology_cli.command("declare")
def topology_declare() -> None:
    """Declare exchanges, queues and bindings, and apply the limit policies (idempotent)."""
    from app.rabbitmq import ManagementError
    from app.tasks import topology

    settings = get_settings()
    try:
        topology.declare(settings)
    except (topology.TopologyError, ManagementError) as exc:
        _err(str(exc))
        raise typer.Exit(1) from None
    problems = topology.verify(settings)
    if problems:
        _err("Declared, but the topology still has problems:\n  - " + "\n  - ".join(problems))
        raise typer.Exit(1)
    _err(f"Topology declared on vhost {settings.broker_vhost!r} ({settings.queue_type.value} queues).")


@topology_cli.command("verify")
def topology_verify() -> None:
    """Exit 1 and list the problems when the dead-letter wiring is incomplete."""
    from app.tasks import topology

    problems = topology.verify(get_settings())
    for problem in problems:
        _err(f"- {problem}")
    raise typer.Exit(1 if problems else 0)


@cli.command()
def health(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Check broker, result backend, database and workers; exit 0 when all are up, 1 otherwise."""
    from app.tasks import control

    settings = get_settings()
    components = {
        "broker": control.check_broker(settings),
        "result_backend": control.check_redis(),
        "database": control.check_database(),
        "workers": control.check_workers(),
    }
    up = all(c.status == "up" for c in components.values())
    if as_json:
        typer.echo(json.dumps({k: v.model_dump() for k, v in components.items()}, indent=2))
    else:
        for name, comp in components.items():
            latency = f"{comp.latency_ms:.1f} ms" if comp.latency_ms is not None else ""
            typer.echo(f"{name:<15} {comp.status:<5} {latency:>10}  {comp.detail or ''}")
    sys.exit(0 if up else 1)


if __name__ == "__main__":
    cli()
