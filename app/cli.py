"""Operator CLI: `python -m app.cli --help`.

Each command imports what it uses inside its own body: `--help` and the commands that need no broker then load
neither Celery nor kombu nor the domains (a command starts in a fraction of the time), and one whose import fails
(a missing service library) breaks only itself."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any, NoReturn

import typer
from pydantic import BaseModel

from app.config import get_settings
from app.printable import visible

cli = typer.Typer(help="Courier operator commands.", no_args_is_help=True, add_completion=False)
topology_cli = typer.Typer(
    help="RabbitMQ topology: declare, verify, or migrate to another queue type.", no_args_is_help=True
)
cli.add_typer(topology_cli, name="topology")
dead_cli = typer.Typer(help="Dead letters: list, show, replay, purge.", no_args_is_help=True)
cli.add_typer(dead_cli, name="dead-letters")
queues_cli = typer.Typer(help="Work queues: list, pause, resume, purge.", no_args_is_help=True)
cli.add_typer(queues_cli, name="queues")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (the API's shape) for scripts.")]


def _console() -> Any:
    """A rich console that prints every string as it is: no markup (`[link=...]` in a task name stays text), no
    emoji codes, control characters escaped. Courier's own colours are `_styled` Text."""
    from rich.console import Console

    class VisibleConsole(Console):
        def render_str(self, text: str, **kwargs: Any) -> Any:
            return super().render_str(visible(text), **kwargs)

    return VisibleConsole(markup=False, emoji=False)


def _styled(text: str, style: str) -> Any:
    """`text` (control characters escaped) in a colour of Courier's."""
    from rich.text import Text

    return Text(visible(text), style=style)


def _operator() -> str:
    """Who runs the CLI, as recorded in the audit trail."""
    import getpass

    return f"cli:{getpass.getuser()}"


def _err(message: str) -> None:
    """A line for the operator on stderr, with any credential masked (errors may quote URLs)."""
    from app.logging import redact

    typer.echo(visible(redact(message)), err=True)


@cli.command("create-api-key")
def create_api_key(
    name: Annotated[str, typer.Option(help="A unique name; it is recorded as 'who triggered' each run.")],
    role: Annotated[
        str, typer.Option(help="client, admin or viewer (reads what an admin reads, changes nothing)")
    ] = "client",
) -> None:
    """Create an API key and print it alone on stdout, once; only its hash is stored."""
    from app.access import service
    from app.access.models import Role
    from app.db import session_scope
    from app.errors import CourierError

    try:
        parsed = Role(role)
    except ValueError:
        _err(f"Unknown role {role!r}: use client, admin or viewer.")
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


@cli.command("reencrypt-secrets")
def reencrypt_secrets() -> None:
    """Rewrite stored secrets under the first DATA_ENCRYPTION_KEYS key (then the old key can be dropped)."""
    from app.crypto import SecretUnreadable
    from app.db import session_scope
    from app.integrations import webhooks

    try:
        with session_scope() as session:
            count = webhooks.reencrypt_secrets(session=session)
    except SecretUnreadable as exc:
        _err(str(exc))
        raise typer.Exit(1) from None
    _err(f"Re-encrypted the signing secrets of {count} webhook endpoint(s) under the first key.")


_PASSWORD_MISMATCH = (
    "RabbitMQ's user {user!r} has another password than RABBITMQ_PASSWORD, and the running API, workers and recorder "
    "use RabbitMQ's: nothing was changed. Correct RABBITMQ_PASSWORD, or run `python -m app.cli provision "
    "--reset-password` to set it (then restart everything)."
)


@cli.command()
def provision(
    reset_password: Annotated[
        bool,
        typer.Option(
            "--reset-password",
            help="Set the broker user's password to RABBITMQ_PASSWORD even though RabbitMQ has another one (every "
            "running component must then restart with it).",
        ),
    ] = False,
) -> None:
    """Create the broker vhost and user (tags monitoring, policymaker) with the RABBITMQ_ADMIN_* account. An existing
    user keeps its password: one RABBITMQ_PASSWORD does not match is refused unless --reset-password."""
    from app.rabbitmq import ManagementClient, ManagementError

    settings = get_settings()
    user, password = settings.broker_credentials
    try:
        with ManagementClient.for_admin(settings) as admin:
            admin.put_vhost(settings.broker_vhost)
            if user != settings.rabbitmq_admin_user:
                if admin.user(user) is not None and not reset_password:
                    with ManagementClient.for_broker_user(settings) as own:
                        if not own.password_accepted():
                            _err(_PASSWORD_MISMATCH.format(user=user))
                            raise typer.Exit(1)
                # (an existing user's own password, checked above: this keeps its tags current)
                admin.put_user(user, password, "monitoring,policymaker")
            admin.put_permissions(settings.broker_vhost, user)
    except ManagementError as exc:
        _err(
            f"Provisioning failed: {exc}. Check RABBITMQ_ADMIN_USER/RABBITMQ_ADMIN_PASSWORD (the account that creates "
            "the vhost and user) and that the management API answers (RABBITMQ_MANAGEMENT_URL)."
        )
        raise typer.Exit(1) from None
    _err(f"Provisioned vhost {settings.broker_vhost!r} and user {user!r}.")


@topology_cli.command("declare")
def topology_declare() -> None:
    """Declare exchanges, queues and bindings, and apply the limit policies (idempotent)."""
    from app.engine import topology
    from app.rabbitmq import ManagementError

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


@topology_cli.command("migrate")
def topology_migrate() -> None:
    """Rebuild queues whose type or priority differs from QUEUE_TYPE, keeping every message (stop workers first)."""
    import amqp

    from app.engine import migration, topology
    from app.rabbitmq import ManagementError

    settings = get_settings()
    try:
        done = migration.migrate(settings)
    except (migration.MigrationRefused, ManagementError, amqp.exceptions.AMQPError, OSError, RuntimeError) as exc:
        _err(f"Migration stopped, nothing lost (run it again to finish): {exc}")
        raise typer.Exit(1) from None
    for item in done:
        _err(
            f"- {item.name}: {item.before or 'classic'} -> {settings.queue_type.value}, {item.messages} message(s) kept"
        )
    problems = topology.verify(settings)
    if problems:
        _err("Migrated, but the topology still has problems:\n  - " + "\n  - ".join(problems))
        raise typer.Exit(1)
    _err(f"Topology on vhost {settings.broker_vhost!r} is {settings.queue_type.value}; {len(done)} queue(s) rebuilt.")


@topology_cli.command("verify")
def topology_verify() -> None:
    """Say what was checked and exit 0, or exit 1 and list the problems: dead-letter wiring, and in quorum mode
    queue types and replicas."""
    from app.engine import topology

    settings = get_settings()
    problems = topology.verify(settings)
    if problems:
        _err(
            f"Topology on vhost {settings.broker_vhost!r} does not match what Courier declares "
            f"({len(problems)} problem(s)):\n  - " + "\n  - ".join(problems)
        )
        raise typer.Exit(1)
    _err(topology.verified(settings))


@cli.command()
def health(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Check broker, result backend, database and workers; exit 0 when all are up, 1 otherwise."""
    from app import health as checks

    settings = get_settings()
    components = {
        "broker": checks.check_broker(settings),
        "result_backend": checks.check_redis(),
        "database": checks.check_database(),
        "workers": checks.check_workers(),
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
    from rich.table import Table

    from app.db import session_scope
    from app.deadletters import service
    from app.deadletters.models import Reason, Status
    from app.deadletters.schemas import DeadLetterGroup, DeadLetterSummary

    filters = service.DeadLetterFilter(
        task_name=task, reason=Reason(reason) if reason else None, status=None if status == "all" else Status(status)
    )
    with session_scope() as session:
        items, total, groups = service.list_letters(session=session, filters=filters, limit=limit, offset=0)
        rows = [DeadLetterSummary.model_validate(i) for i in items]
    if as_json:
        shaped = [DeadLetterGroup(**g).model_dump(mode="json") for g in groups]
        typer.echo(
            json.dumps({"total": total, "items": [r.model_dump(mode="json") for r in rows], "groups": shaped}, indent=2)
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
    console = _console()
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
    from app.engine import dead_letters
    from app.errors import CourierError

    failed = 0
    for letter_id in letter_ids:
        try:
            with session_scope() as session:
                letter = dead_letters.replay(session=session, letter_id=letter_id, actor=_operator(), reason=why)
            typer.echo(visible(f"replayed {letter_id}: {letter.task_name}[{letter.task_id}] -> {letter.queue}"))
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


# --- Operator commands -------------------------------------------------------------------------------


def _print_json(value: BaseModel | Sequence[BaseModel] | dict[str, Any]) -> None:
    """JSON as the API answers it (pydantic's JSON mode), for scripts."""
    if isinstance(value, BaseModel):
        data: Any = value.model_dump(mode="json")
    elif isinstance(value, Sequence):
        data = [v.model_dump(mode="json") for v in value]
    else:
        data = value
    typer.echo(json.dumps(data, indent=2))


def _describe(exc: Exception) -> str:
    """One line for the operator: which service failed and how, without SQL, URLs or a traceback."""
    import redis
    import sqlalchemy.exc
    from kombu.exceptions import OperationalError as BrokerUnreachable

    from app.errors import CourierError

    if isinstance(exc, CourierError):
        if "login failed" in str(exc.__cause__ or "").lower():  # reachable, but the broker user's password is wrong
            return (
                "RabbitMQ refused the login of RABBITMQ_USER with RABBITMQ_PASSWORD: correct RABBITMQ_PASSWORD, or run "
                "`python -m app.cli provision --reset-password` to give the user that password."
            )
        return exc.message
    if isinstance(exc, sqlalchemy.exc.NoSuchModuleError | sqlalchemy.exc.ArgumentError):  # DATABASE_URL's scheme
        return (
            f"DATABASE_URL names no database Courier can use ({exc}); write postgresql://USER@HOST:5432/NAME, or "
            "leave it empty for SQLite in var/."
        )
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return f"Redis is unreachable ({type(exc).__name__}: {exc}); check REDIS_URL and CELERY_RESULT_BACKEND."
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        cause = exc.orig if exc.orig is not None else exc
        first = (str(cause).strip().splitlines() or [""])[0]
        if getattr(cause, "sqlstate", None) == "42P01" or "no such table" in first:  # undefined table
            return f"The database has no Courier schema ({first}); run `alembic upgrade head` or start_tasks.sh start."
        if isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            return f"The database is unreachable ({type(cause).__name__}: {first}); check DATABASE_URL."
        return f"The database refused the query ({type(cause).__name__}: {first})."
    if isinstance(exc, BrokerUnreachable):
        return f"The message broker is unreachable ({exc}); check RABBITMQ_HOST and RABBITMQ_PORT."
    return f"{type(exc).__name__}: {exc}"


def _fail(exc: Exception) -> NoReturn:
    """Say what went wrong on stderr and exit 1 (no traceback for operators)."""
    _err(_describe(exc))
    raise typer.Exit(1) from None


def main() -> None:
    """Run the CLI; a command that meets a dead service or any other error says so in one line and exits 1."""
    from app.logging import configure_logging

    # Log lines of the commands (Courier's, Celery's, kombu's) go to stderr as text, credentials masked.
    configure_logging("WARNING", fmt="text")
    try:
        cli()
    except Exception as exc:  # a command that did not catch its own failure: still no traceback for operators
        try:
            _fail(exc)
        except typer.Exit as done:
            sys.exit(done.exit_code)


def _overview_screen(window_s: int) -> Any:
    """The status screen: queues, workers, paused tiers and recent counts, as rich renderables."""
    from rich.console import Group
    from rich.text import Text

    from app.db import session_scope
    from app.engine.inspect import Broker
    from app.operations import service

    with session_scope() as session:
        found = service.overview(session=session, broker=Broker(get_settings()), window_s=window_s)
    paused = {p.queue for p in found.paused}
    counts = ", ".join(f"{k} {v}" for k, v in sorted(found.counts.items())) or "none"
    summary = Text.assemble(
        visible(f"Last {window_s // 60} min: {counts}; {found.per_minute:.1f} finished/min. Dead letters pending: "),
        (str(found.dead_letters_pending), "red" if found.dead_letters_pending else ""),
        ".",
    )
    return found, Group(_queues_table(found.queues, paused), _workers_table(found.workers), summary)


def _outage_screen(exc: Exception) -> Any:
    """The status screen while a service is down: what failed in one red line, then the queues (RabbitMQ's
    management API) and the workers (their heartbeats in Redis) if they still answer, each part on its own."""
    from rich.console import Group

    from app.engine.inspect import Broker
    from app.operations import service

    parts: list[Any] = [_styled(_describe(exc), "red")]
    shown: tuple[tuple[str, Callable[[], Any]], ...] = (
        ("queues", lambda: _queues_table(Broker(get_settings()).queues(), set())),
        ("workers", lambda: _workers_table(service.workers())),
    )
    for what, part in shown:
        try:
            parts.append(part())
        except Exception as part_exc:
            parts.append(_styled(f"No {what}: {_describe(part_exc)}", "red"))
    return Group(*parts)


def _queues_table(queues: Iterable[Any], paused: set[str]) -> Any:
    from rich.table import Table

    from app.operations.service import PAUSABLE

    table = Table(title="Queues", title_justify="left")
    for column in ("queue", "ready", "unacked", "consumers", "state"):
        table.add_column(column, justify="right" if column in ("ready", "unacked", "consumers") else "left")
    for q in queues:
        state: Any = ""
        if q.name in paused:
            state = _styled("paused", "yellow")
        elif q.name in PAUSABLE:
            state = "consuming" if q.consumers else _styled("no worker", "red")
        ready = _styled(str(q.ready), "red" if q.name == "dead_letter" and q.ready else "")
        table.add_row(q.name, ready, str(q.unacked), str(q.consumers), state)
    return table


def _workers_table(workers: list[Any]) -> Any:
    from rich.table import Table

    table = Table(title=f"Workers ({len(workers)})", title_justify="left")
    for column in ("hostname", "queues", "concurrency", "pool", "heartbeat", "uptime"):
        table.add_column(column)
    for w in workers:
        table.add_row(
            w.hostname,
            ",".join(w.queues),
            str(w.concurrency or "-"),
            w.pool or "-",
            f"{w.heartbeat_age_s:.1f} s ago",
            f"{w.uptime_s:.0f} s" if w.uptime_s is not None else "-",
        )
    return table


@cli.command()
def status(
    as_json: JsonOption = False,
    watch: Annotated[float, typer.Option(help="Refresh every N seconds until Ctrl-C (0 = once).", min=0)] = 0,
    window_s: Annotated[int, typer.Option(help="Window of the recent counts, in seconds.", min=60)] = 300,
) -> None:
    """Queues, workers, paused tiers, rates and dead letters on one screen (--watch refreshes it). While a service
    is down it says which, shows what still answers, and exits 1."""
    from rich.live import Live

    def screen() -> Any:
        try:
            return _overview_screen(window_s)[1]
        except Exception as exc:  # a broker, Redis or database outage: what still answers, around it
            return _outage_screen(exc)

    if as_json:
        try:
            found = _overview_screen(window_s)[0]
        except Exception as exc:
            _fail(exc)
        _print_json(found)
        return
    if not watch:
        try:
            _console().print(_overview_screen(window_s)[1])
        except Exception as exc:
            _console().print(_outage_screen(exc))
            raise typer.Exit(1) from None
        return
    with Live(screen(), refresh_per_second=4, screen=False) as live:
        try:
            while True:
                time.sleep(watch)
                live.update(screen())
        except KeyboardInterrupt:
            pass


def _table(title: str | None, columns: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> Any:
    """A rich table with these columns and rows (titled on the left when titled)."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table


@cli.command()
def active(as_json: JsonOption = False) -> None:
    """Tasks executing now, per worker."""

    from app.engine import inspect

    found = inspect.active()
    if as_json:
        _print_json(found)
        return
    rows = [(t.task_id, t.name or "-", t.worker, t.started_at.isoformat() if t.started_at else "-") for t in found]
    _console().print(_table(f"Active tasks ({len(found)})", ("task id", "name", "worker", "started"), rows))


@cli.command()
def scheduled(as_json: JsonOption = False) -> None:
    """Countdown/ETA tasks held by workers, and beat's periodic schedule."""

    from app.engine import inspect

    found = inspect.scheduled()
    if as_json:
        _print_json(found)
        return
    held = _table(
        f"Held by workers ({len(found.held)})",
        ("task id", "name", "eta", "worker"),
        [(str(h.get("task_id")), str(h.get("name")), str(h.get("eta")), str(h.get("worker"))) for h in found.held],
    )
    periodic = _table(
        "Periodic (beat)",
        ("entry", "task", "schedule", "queue"),
        [(p["name"], p["task"], p["schedule"], str(p.get("queue"))) for p in found.periodic],
    )
    _console().print(held, periodic)


@cli.command()
def task(task_id: str, as_json: JsonOption = False) -> None:
    """Everything known about one task: state, progress, result or error, attempts, timings."""
    from rich.table import Table

    from app.db import session_scope
    from app.engine import inspect

    with session_scope() as session:
        found = inspect.task_status(session=session, task_id=task_id)
    if found is None:
        _err(f"No task {task_id} is known to Courier.")
        raise typer.Exit(1)
    if as_json:
        _print_json(found)
        return
    table = Table(show_header=False, title=f"Task {task_id}", title_justify="left")
    for field, value in found.model_dump(mode="json").items():
        table.add_row(
            field, "-" if value is None else json.dumps(value) if isinstance(value, dict | list) else str(value)
        )
    _console().print(table)


@cli.command()
def revoke(
    task_id: str,
    terminate: Annotated[bool, typer.Option(help="Also kill it if it is running (SIGTERM).")] = False,
    reason: Annotated[str | None, typer.Option(help="Recorded with the revocation.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Revoke a task durably: if it has not started it never runs, even across worker restarts."""
    from app.db import session_scope
    from app.engine import inspect

    with session_scope() as session:
        found = inspect.revoke(
            session=session, task_id=task_id, terminate=terminate, revoked_by=_operator(), reason=reason
        )
    if as_json:
        _print_json(found)
        return
    typer.echo(f"{task_id}: {'revoked' if found.revoked else 'not revoked'} (state {found.state})")
    if found.note:
        typer.echo(found.note)


@cli.command()
def performance(
    window_s: Annotated[int, typer.Option(help="Window in seconds.", min=60)] = 3600,
    as_json: JsonOption = False,
) -> None:
    """Throughput and P50/P95/max run times over a window, per task name and in total."""
    from rich.table import Table

    from app.db import session_scope
    from app.operations import service

    with session_scope() as session:
        found = service.performance(session=session, window_s=window_s)
    if as_json:
        _print_json(found)
        return

    def secs(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"

    table = Table(
        title=f"Last {window_s} s: {found.finished} finished, {found.per_minute:.1f}/min", title_justify="left"
    )
    for column in ("task", "finished", "ok", "failed", "per min", "p50", "p95", "max"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for t in found.tasks:
        table.add_row(
            t.name,
            str(t.finished),
            str(t.succeeded),
            str(t.failed),
            f"{t.per_minute:.1f}",
            secs(t.p50_s),
            secs(t.p95_s),
            secs(t.max_s),
        )
    table.add_row(
        "all", str(found.finished), "", "", f"{found.per_minute:.1f}", secs(found.p50_s), secs(found.p95_s), ""
    )
    _console().print(table)


@queues_cli.command("list")
def queues_list(as_json: JsonOption = False) -> None:
    """Ready, unacked and consumers of every Courier queue."""

    from app.engine import inspect

    try:
        found = inspect.queues(get_settings())
    except Exception as exc:
        _fail(exc)
    if as_json:
        _print_json(found)
        return
    rows = [(q.name, str(q.ready), str(q.unacked), str(q.consumers)) for q in found]
    _console().print(_table(None, ("queue", "ready", "unacked", "consumers"), rows))


@queues_cli.command("pause")
def queues_pause(
    queue: str,
    reason: Annotated[str | None, typer.Option(help="Recorded in the audit trail.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Stop every worker consuming a tier until it is resumed, across worker restarts (audited)."""
    _queue_control(queue, reason, as_json, paused=True)


@queues_cli.command("resume")
def queues_resume(
    queue: str,
    reason: Annotated[str | None, typer.Option(help="Recorded in the audit trail.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Let the workers configured for a tier consume it again (audited)."""
    _queue_control(queue, reason, as_json, paused=False)


def _queue_control(queue: str, reason: str | None, as_json: bool, *, paused: bool) -> None:
    """Pause or resume a tier through the operations service and report which live workers acknowledged."""
    from app.db import session_scope
    from app.engine.inspect import Broker
    from app.operations import service
    from app.operations.schemas import QueueControlRead

    change = service.pause if paused else service.resume
    try:
        with session_scope() as session:
            acked = change(
                session=session, queue=queue, actor=_operator(), reason=reason, broker=Broker(get_settings())
            )
    except Exception as exc:
        _fail(exc)
    found = QueueControlRead(queue=queue, paused=paused, workers=acked)
    if as_json:
        _print_json(found)
        return
    if paused:
        typer.echo(f"paused {queue}; workers that stopped consuming it now: {', '.join(acked) or 'none live'}")
    else:
        typer.echo(f"resumed {queue}; workers consuming it again: {', '.join(acked) or 'none live'}")


@queues_cli.command("purge")
def queues_purge(
    queue: str,
    reason: Annotated[str | None, typer.Option(help="Recorded in the audit trail.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Drop every ready message of a queue (high, medium, low or dead_letter) for good; asks first; audited."""
    from app.db import session_scope
    from app.engine.inspect import Broker
    from app.operations import service
    from app.operations.exceptions import UnknownQueue
    from app.operations.schemas import PurgeRead

    broker = Broker(get_settings())
    try:
        if queue not in service.PURGEABLE:
            raise UnknownQueue(queue, service.PURGEABLE)
        waiting = broker.ready(queue)
        if not yes:
            typer.confirm(f"Drop {waiting} message(s) from {queue!r} for good?", abort=True, err=True)
        with session_scope() as session:
            dropped = service.purge(session=session, queue=queue, actor=_operator(), reason=reason, broker=broker)
    except typer.Abort:
        raise
    except Exception as exc:
        _fail(exc)
    found = PurgeRead(queue=queue, purged=dropped)
    if as_json:
        _print_json(found)
        return
    typer.echo(f"purged {dropped} message(s) from {queue}")


if __name__ == "__main__":
    main()
