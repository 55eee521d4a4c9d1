"""``parley``: the command line. Sub-commands for discussions and information
come from the one command table; ``console``, ``slack`` and ``discord`` start
the long-running front-ends.

Exit status: 0 on success, 1 when a turn or discussion failed, 2 for a usage
error (bad option, unknown provider or persona, missing configuration), 3 when
policy or a budget refused the request (nothing was sent to any provider).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from bots.cli_output import print_json_events, print_plain
from core import info
from core.commands import COMMANDS, parse
from core.config import Settings
from core.errors import ParleyError, UsageError
from core.governance import Refused
from core.governance.scope import local_caller
from core.present import plain
from core.services import build_services

FRONT_ENDS = {
    "run": "Start what is configured: Slack and/or Discord when their tokens are set, else the console.",
    "console": "Interactive terminal session: type /ask, /compare, /consensus and follow-ups.",
    "slack": "Run the Slack app (Socket Mode with SLACK_APP_TOKEN, else HTTP).",
    "discord": "Run the Discord bot (DISCORD_TOKEN).",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="parley",
        description="A panel of AI experts in your terminal, Slack and Discord.",
    )
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    for c in COMMANDS.values():
        sp = sub.add_parser(c.name, help=c.summary, description=c.summary)
        if c.takes_prompt:
            sp.add_argument("text", nargs="*", help="options key:value, then the question")
            sp.add_argument("--conversation", help="continue a conversation: earlier turns are context")
        elif c.actions:
            actions = "|".join(a.name for a in c.actions)
            sp.add_argument("text", nargs="*", help=f"{actions}, then options key:value (and NAME or KEY)")
        if c.name != "help":
            sp.add_argument("--json", action="store_true", help="newline-delimited JSON events / rows")
        if c.name == "providers":
            sp.add_argument("--check", action="store_true", help="re-check every provider now")
    for name, summary in FRONT_ENDS.items():
        sp = sub.add_parser(name, help=summary, description=summary)
        sp.add_argument("args", nargs=argparse.REMAINDER)
    ev = sub.add_parser("eval", help=EVAL_HELP, description=EVAL_HELP)
    ev.add_argument("file", nargs="?", help="a JSONL question set (question, answer, match); default: the shipped set")
    ev.add_argument("--modes", default="ask,consensus", help="comma separated: ask, compare, consensus")
    ev.add_argument("--options", default="", help="options for every discussion, e.g. 'providers:local depth:full'")
    ev.add_argument("--concurrency", type=int, default=2, help="discussions at once (default 2)")
    ev.add_argument("--limit", type=int, default=0, help="only the first N questions")
    ev.add_argument("--json", action="store_true", help="one JSON report")
    ev.add_argument("--chart", help="write a PNG chart of accuracy per mode here")
    return p


EVAL_HELP = "Run a question set through modes; accuracy (95% Wilson interval), cost, time and ballot rate per mode."


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    cmd = args.cmd or "console"
    if extra and hasattr(args, "text"):
        # Words after a flag (`ask hello --json world`) still belong to the question.
        args.text += [w for w in extra if w != "--"]
    elif extra and cmd in FRONT_ENDS:
        args.args = [*extra, *args.args]  # `parley slack --port 3000`: the front-end's own options
    elif extra:
        build_parser().parse_args(argv)  # reports the unknown arguments and exits 2
    try:
        if cmd in FRONT_ENDS:
            return _front_end(cmd, getattr(args, "args", []))
        return asyncio.run(_run(cmd, args))
    except Refused as e:
        print(f"parley: {e.message}", file=sys.stderr)
        return 3
    except UsageError as e:
        print(f"parley: {e.message}", file=sys.stderr)
        return 2
    except ParleyError as e:
        print(f"parley: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nparley: stopped.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `parley providers | head`: the reader left
        _quiet_stdout()
        return 1


def _quiet_stdout() -> None:
    """The reader of stdout went away: send the rest (and the exit-time flush) nowhere,
    as the Python docs advise for SIGPIPE, instead of printing a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def load_front_end(name: str, attr: str = "main") -> Any:
    """``attr`` of ``bots.<name>.main`` (or ``bots.run``); a missing front-end is a clear usage error."""
    import importlib

    module = "bots.run" if name == "run" else f"bots.{name}.main"
    try:
        return getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("bots."):
            raise UsageError(
                f"The {name} front-end is not available in this build ({module} is missing). "
                f"Use `parley console` or the one-shot commands (`parley ask ...`)."
            ) from None
        raise


def _front_end(name: str, rest: list[str]) -> int:
    return int(load_front_end(name)(rest))


async def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from core import evaluation

    items = evaluation.load(Path(args.file) if args.file else evaluation.shipped())
    if args.limit:
        items = items[: args.limit]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    async with build_services(Settings()) as services:
        report = await evaluation.run(services, local_caller("cli"), items, modes, args.options, args.concurrency)
    if args.chart:
        evaluation.chart(report, Path(args.chart))
    print(evaluation.as_json(report) if args.json else evaluation.table(report))
    return 0


async def _run(cmd: str, args: argparse.Namespace) -> int:
    if cmd == "eval":
        return await _eval(args)
    settings = Settings()
    request = parse(cmd, " ".join(getattr(args, "text", None) or []), max_prompt_chars=settings.max_prompt_chars,
                    max_turns=settings.max_turns)
    caller = local_caller("cli")
    async with build_services(settings) as services:
        services.store.mark_interrupted(["cli"])  # runs of `parley` processes that died (kill -9)
        if request.mode is None:
            answer = await info.answer(services, request, caller=caller, check=getattr(args, "check", False))
            if getattr(args, "json", False):
                for r in answer.rows:
                    print(json.dumps(r))
            else:
                print(plain(answer.doc))
            return 0
        grant = await services.governance.admit(request, caller, conversation=args.conversation)
        for alert in grant.alerts:
            print(f"parley: {alert}", file=sys.stderr)
        events = services.engine.run(grant.request, conversation=args.conversation, front_end="cli", grant=grant)
        try:
            if args.json:
                return await print_json_events(events)
            return await print_plain(events, stream_single=grant.request.mode == "single")
        except BrokenPipeError:  # `parley ask … | head`: stop the discussion, record it as interrupted
            await events.aclose()
            _quiet_stdout()
            return 1


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()

