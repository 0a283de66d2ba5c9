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
dead_cli = typer.Typer(help="Dead letters: list, show, replay, purge.", no_args_is_help=True)
cli.add_typer(dead_cli, name="dead-letters")


def _operator() -> str:
    """Who runs the CLI, as recorded in the audit trail."""
    import getpass

    return f"cli:{getpass.getuser()}"


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


@dead_cli.command("list")
def dead_list(
    task: Annotated[str | None, typer.Option(help="Task name.")] = None,
    reason: Annotated[str | None, typer.Option(help="Reason, e.g. malformed, timeout.")] = None,
    status: Annotated[str, typer.Option(help="pending, replayed, discarded or all.")] = "pending",
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List dead letters, newest first, and the counts by task, reason and error class."""
    from rich.console import Console
    from rich.table import Table

    from app.db import session_scope
    from app.deadletters import service
    from app.deadletters.models import Reason, Status
    from app.deadletters.schemas import DeadLetterSummary

    filters = service.DeadLetterFilter(
        task_name=task, reason=Reason(reason) if reason else None, status=None if status == "all" else Status(status)
    )
    with session_scope() as session:
        items, total, groups = service.list_letters(session=session, filters=filters, limit=limit, offset=0)
        rows = [DeadLetterSummary.model_validate(i) for i in items]
    if as_json:
        typer.echo(
            json.dumps({"total": total, "items": [r.model_dump(mode="json") for r in rows], "groups": groups}, indent=2)
        )
        return
    table = Table(title=f"Dead letters ({total} {status})")
    for column in ("id", "recorded", "task", "reason", "error", "queue", "task id", "status"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(
            str(r.id),
            r.recorded_at.strftime("%Y-%m-%d %H:%M:%S"),
            r.task_name or "-",
            r.reason,
            (r.error or "")[:60],
            r.queue or "-",
            r.task_id or "-",
            r.status,
        )
    console = Console()
    console.print(table)
    for group in groups:
        console.print(f"  {group['count']:>6}  {group['task_name']}  {group['reason']}  {group['error_class'] or ''}")


@dead_cli.command("show")
def dead_show(letter_id: int) -> None:
    """Everything recorded about one dead letter, as JSON."""
    from app.db import session_scope
    from app.deadletters import service
    from app.deadletters.schemas import AttemptRead, DeadLetterRead
    from app.errors import CourierError
    from app.runs import service as runs_service

    try:
        with session_scope() as session:
            letter = service.get(session=session, letter_id=letter_id)
            found = DeadLetterRead.model_validate(letter)
            if letter.task_id:
                attempts = runs_service.attempts(session=session, task_id=letter.task_id)
                found.attempts = [AttemptRead.model_validate(a) for a in attempts]
    except CourierError as exc:
        _err(exc.message)
        raise typer.Exit(1) from None
    typer.echo(found.model_dump_json(indent=2))


@dead_cli.command("replay")
def dead_replay(
    letter_ids: Annotated[list[int], typer.Argument(help="Dead-letter ids.")],
    why: Annotated[str | None, typer.Option(help="Recorded in the audit trail.")] = None,
) -> None:
    """Replay dead letters by id: back to their queue, same task id, fresh retry budget."""
    from app.db import session_scope
    from app.deadletters import service
    from app.errors import CourierError

    failed = 0
    for letter_id in letter_ids:
        try:
            with session_scope() as session:
                letter = service.replay(session=session, letter_id=letter_id, actor=_operator(), reason=why)
            typer.echo(f"replayed {letter_id}: {letter.task_name}[{letter.task_id}] -> {letter.queue}")
        except CourierError as exc:
            _err(exc.message)
            failed += 1
    raise typer.Exit(1 if failed else 0)


@dead_cli.command("purge")
def dead_purge(
    why: Annotated[str, typer.Option(help="Why they are discarded (required; audited).")],
    task: Annotated[str | None, typer.Option(help="Only this task name.")] = None,
    reason: Annotated[str | None, typer.Option(help="Only this reason.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Discard every pending dead letter that matches (records are kept, marked discarded)."""
    from app.db import session_scope
    from app.deadletters import service
    from app.deadletters.models import Reason

    filters = service.DeadLetterFilter(task_name=task, reason=Reason(reason) if reason else None)
    with session_scope() as session:
        count = len(service.ids_matching(session=session, filters=filters))
    if count and not yes:
        typer.confirm(f"Discard {count} pending dead letter(s)?", abort=True)
    with session_scope() as session:
        discarded = service.purge(session=session, filters=filters, actor=_operator(), reason=why)
    typer.echo(f"discarded {discarded}")


if __name__ == "__main__":
    cli()
