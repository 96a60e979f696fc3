#!/usr/bin/env python3
"""Write electiond(8), electionctl(8) and electiond.conf(5) as roff.

One source each, so a man page cannot drift from what the program does:
- electiond(8) and electionctl(8) walk the very argparse parsers that print
  --help (captured from electiond.daemon.parse_args and electiond.cli.main);
- electiond.conf(5) reads the shipped, commented etc/electiond.conf, whose
  `key = value ; note` lines (commented out when the key has no default)
  are the reference of every key; tests/test_manpages.py checks it names
  every key the config parser knows.

Usage: scripts/manpages.py OUTDIR   (debian/rules runs it at build time)
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import re
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from electiond import __version__, cli, daemon  # noqa: E402


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


def capture_parser(entry) -> argparse.ArgumentParser:
    """The parser ``entry`` builds, taken at its parse_args call (nothing runs)."""
    original = argparse.ArgumentParser.parse_args

    def grab(self, *args, **kwargs):
        raise _Captured(self)

    argparse.ArgumentParser.parse_args = grab
    try:
        entry([])
    except _Captured as captured:
        return captured.parser
    finally:
        argparse.ArgumentParser.parse_args = original
    raise RuntimeError(f"{entry!r} built no parser")


def esc(text: str) -> str:
    """Plain text as roff: backslashes, leading dots and quotes, hyphens."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.M)


def date_stamp() -> str:
    # reproducible builds: the changelog's date, not today's
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc) if epoch else \
        datetime.datetime.now(datetime.timezone.utc)
    return when.strftime("%Y-%m-%d")


def header(name: str, section: int, summary: str) -> list[str]:
    return [
        f'.TH {name.upper()} {section} "{date_stamp()}" "electiond {__version__}" "electiond"',
        ".SH NAME",
        f"{esc(name)} \\- {esc(summary)}",
    ]


def help_text(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(default)s" in text:
        text = text.replace("%(default)s", str(action.default))
    return text


def option_lines(parser: argparse.ArgumentParser) -> list[str]:
    out: list[str] = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        if not action.option_strings:
            spec = f"\\fI{esc(action.metavar or action.dest)}\\fR"
        else:
            takes = action.nargs != 0
            metavar = action.metavar or action.dest.upper()
            spec = ", ".join(f"\\fB{esc(o)}\\fR" + (f" \\fI{esc(metavar)}\\fR" if takes else "")
                             for o in action.option_strings)
        out += [".TP", spec, esc(help_text(action))]
    return out


def synopsis(parser: argparse.ArgumentParser) -> str:
    usage = parser.format_usage().strip()
    # {status,members,...} is one word too long to fill a line: the COMMANDS section lists them
    usage = re.sub(r"\{[^}]*\}", "COMMAND", usage)
    return esc(" ".join(re.sub(r"^usage:\s*", "", usage).split()))


SEE_ALSO = ".SH SEE ALSO\n\\fBelectiond\\fR(8), \\fBelectionctl\\fR(8), \\fBelectiond.conf\\fR(5), " \
           "/usr/share/doc/electiond/README.md, /usr/share/doc/electiond/README.Debian"


def electiond_page() -> str:
    parser = capture_parser(daemon.parse_args)
    lines = header("electiond", 8, parser.description.rstrip("."))
    lines += [".SH SYNOPSIS", synopsis(parser), ".SH DESCRIPTION",
              esc("Elects one leader among the members listed in the config file over UDP multicast and runs "
                  "the promote, demote and fault hooks as leadership moves. Under systemd it reports READY=1 "
                  "once its sockets are bound and the control socket listens, STATUS= on every role change "
                  "and WATCHDOG=1 from its event loop; SIGHUP reloads hooks, keys, timing and health checks; "
                  "SIGTERM hands leadership over and stops."),
              ".SH OPTIONS"]
    lines += option_lines(parser)
    codes = [(0, "clean stop"), (daemon.EX_UNAVAILABLE, "a network error waiting cannot fix"),
             (daemon.EX_SOFTWARE, "a bug: an exception escaped the event loop"),
             (daemon.EX_IOERR, "--recover-state could not write the new state file"),
             (daemon.EX_TEMPFAIL, "another electiond holds this state directory"),
             (daemon.EX_CONFIG, "bad config, corrupt state or unusable state directory; systemd does not "
                                "restart it (RestartPreventExitStatus=78)")]
    lines.append(".SH EXIT STATUS")
    for code, meaning in codes:
        lines += [".TP", f"\\fB{code}\\fR", esc(meaning)]
    lines += [".SH FILES", ".TP", "/etc/electiond/electiond.conf", esc("the configuration, see electiond.conf(5)"),
              ".TP", "/etc/electiond/\\fINAME\\fR.conf",
              esc("one cluster per electiond@NAME.service instance"),
              ".TP", "/var/lib/electiond/state.json", esc("the persisted term and vote"),
              ".TP", "/run/electiond/control.sock", esc("the control socket electionctl(8) talks to"),
              ".TP", "/usr/lib/electiond/hooks/", esc("the shipped hooks: vip and systemd-unit"),
              SEE_ALSO]
    return "\n".join(lines) + "\n"


def electionctl_page() -> str:
    parser = capture_parser(cli.main)
    lines = header("electionctl", 8, parser.description.rstrip("."))
    lines += [".SH SYNOPSIS", synopsis(parser), ".SH DESCRIPTION",
              esc("Asks the local electiond over its control socket. Root and members of group electiond "
                  "may use it."), ".SH OPTIONS"]
    lines += option_lines(parser)
    lines.append(".SH COMMANDS")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    for name, subparser in sub.choices.items():
        args = " ".join(f"[\\fI{esc(a.dest)}\\fR]" if a.nargs == "?" else f"\\fI{esc(a.dest)}\\fR"
                        for a in subparser._actions if not a.option_strings)
        lines += [".TP", f"\\fB{esc(name)}\\fR {args}".rstrip(), esc(helps.get(name) or "")]
        extra = [a for a in subparser._actions if a.option_strings and a.help not in (None, argparse.SUPPRESS)
                 and "-h" not in a.option_strings]
        if extra:
            lines += [".RS"] + option_lines_for(extra) + [".RE"]
    lines += [".SH EXIT STATUS"]
    lines += [".TP", "\\fB0\\fR", esc("success (for is-leader: this node leads)"),
              ".TP", "\\fB1\\fR", esc("a negative answer or a refused command"),
              ".TP", "\\fB2\\fR", esc("the daemon cannot be reached or answered nonsense"),
              ".TP", "\\fB3\\fR", esc("permission denied (a mutating command from neither root nor admin_group)"),
              ".TP", "\\fB4\\fR", esc("a bad request (a usage error, an unknown node, coordination unsupported)"),
              ".TP", "\\fB75\\fR", esc("lock, barrier, run-as-leader: not obtained within --wait/--timeout"),
              ".TP", "\\fB76\\fR", esc("lock, run-as-leader: lost; CMD was stopped (otherwise CMD's own status)"),
              SEE_ALSO]
    return "\n".join(lines) + "\n"


def option_lines_for(actions: list[argparse.Action]) -> list[str]:
    holder = argparse.ArgumentParser(add_help=False)
    holder._actions = actions
    return option_lines(holder)


# `key = value ; note`, possibly commented out (`# key = value ; note`): no default
_KEY_LINE = re.compile(r"^(#\s*)?([a-z_]+)\s*=\s*([^;]*?)\s*(?:;\s*(.*))?$")
_CONTINUATION = re.compile(r"^#?\s{4,};?\s*(.*)$")


def parse_config_reference(text: str) -> tuple[list[str], list[tuple[str, list[tuple[str, str, bool, str]]]]]:
    """The shipped config as (preamble, [(section, [(key, value, has_default, note)])]).
    Prose comments between keys go with the section as key '' entries."""
    preamble: list[str] = []
    sections: list[tuple[str, list[tuple[str, str, bool, str]]]] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line.strip():
            continue
        m = re.match(r"^\[([a-z]+)\]$", line)
        if m:
            sections.append((m.group(1), []))
            continue
        if not sections:
            preamble.append(re.sub(r"^#\s?", "", line))
            continue
        entries = sections[-1][1]
        cont = _CONTINUATION.match(line)
        if cont and entries and entries[-1][0]:
            key, value, has_default, note = entries[-1]
            entries[-1] = (key, value, has_default, f"{note} {cont.group(1)}".strip())
            continue
        m = _KEY_LINE.match(line)
        if m and (m.group(1) is None or m.group(4) is not None or m.group(3)):
            entries.append((m.group(2), m.group(3), m.group(1) is None, m.group(4) or ""))
            continue
        prose = re.sub(r"^#\s?", "", line)
        if entries and not entries[-1][0]:
            entries[-1] = ("", "", False, f"{entries[-1][3]} {prose}")  # one paragraph
        else:
            entries.append(("", "", False, prose))
    return preamble, sections


def conf_page(config_text: str) -> str:
    preamble, sections = parse_config_reference(config_text)
    lines = header("electiond.conf", 5, "configuration of the electiond leader election daemon")
    lines += [".SH SYNOPSIS", "/etc/electiond/electiond.conf, /etc/electiond/\\fINAME\\fR.conf",
              ".SH DESCRIPTION",
              esc("An INI file. This page is generated from the commented config the package installs, "
                  "so both show the same keys, defaults and notes. A key shown without a default "
                  "is unset unless you set it.")]
    for line in preamble:
        lines += [".br", esc(line)] if line else [".PP"]
    for section, entries in sections:
        lines.append(f".SH [{section.upper()}]")
        for key, value, has_default, note in entries:
            if not key:
                lines += [".PP", esc(note)]
                continue
            shown = (f"(shipped: {value})" if has_default else f"(unset; example: {value})") if value else ""
            lines += [".TP", f"\\fB{esc(key)}\\fR {esc(shown)}".rstrip(), esc(note)]
    lines.append(SEE_ALSO)
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    out = pathlib.Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    (out / "electiond.8").write_text(electiond_page())
    (out / "electionctl.8").write_text(electionctl_page())
    (out / "electiond.conf.5").write_text(conf_page((REPO / "etc" / "electiond.conf").read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
