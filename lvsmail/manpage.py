"""Man pages lvsmail(8) and lvsmail-cluster(5), and the key reference in docs/, generated from their sources.

lvsmail(8) is written from the click command tree and lvsmail-cluster(5) from
the cluster file's key table (``lvsmail.config.keys``), the one the loader
enforces, so neither page can drift from the program. Roff is written
directly (man(7) macros), without docutils or Sphinx, so building the
package needs nothing more than lvsmail's own dependencies.

The output is reproducible: the date is SOURCE_DATE_EPOCH when the build sets
it (https://reproducible-builds.org/specs/source-date-epoch/, as
dpkg-buildpackage does), else the date of the newest debian/changelog entry,
else a fixed date; never the time of the run.

    python3 -m lvsmail.manpage OUTDIR                          # OUTDIR/lvsmail.8, OUTDIR/lvsmail-cluster.5
    python3 -m lvsmail.manpage --markdown docs/cluster-file.md # refresh the generated key reference there
    python3 -m lvsmail.manpage --check docs/cluster-file.md    # exit 1 if that reference is stale

The ``lab`` command group is left out of lvsmail(8): it belongs to a
development checkout, and the package does not install it (docs/lab.md
describes it).
"""

from __future__ import annotations

import argparse
import datetime
import email.utils
import inspect
import os
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import click

from lvsmail import __version__
from lvsmail.config.keys import SECTIONS, Key, Section
from lvsmail.statefiles import DEFAULT_STATE_DIR

#: Used when neither SOURCE_DATE_EPOCH nor debian/changelog gives a date.
FALLBACK_DATE = "2026-12-04"
#: Command groups a production host does not get (the package removes them).
LEFT_OUT = frozenset({"lab"})
#: Markers around the generated part of a Markdown document.
BEGIN_MARK = ("<!-- BEGIN generated key reference: do not edit by hand; "
              "refresh with python3 -m lvsmail.manpage --markdown docs/cluster-file.md -->")
END_MARK = "<!-- END generated key reference -->"
_CHANGELOG = Path(__file__).resolve().parent.parent / "debian" / "changelog"

SEE_ALSO_8 = (("lvsmail-cluster", "5"), ("ipvsadm", "8"), ("keepalived", "8"), ("ldirectord", "8"),
              ("systemctl", "1"), ("journalctl", "1"))
SEE_ALSO_5 = (("lvsmail", "8"), ("ipvsadm", "8"), ("keepalived.conf", "5"), ("ldirectord", "8"))

EXIT_STATUS = (
    ("0", "Success: the file is valid, the table is in sync, every server checked is healthy."),
    ("1", "Something is pending or unhealthy: --dry-run found changes to make, config check or diff found "
          "differences, a verification or a wait did not succeed, join or leave failed and undid its steps."),
    ("2", "Usage or configuration error: a bad option, or a cluster file that does not validate "
          "(every problem is listed, each as file:line: key: message)."),
)

ENVIRONMENT = (
    ("NOTIFY_SOCKET, WATCHDOG_USEC", "Set by systemd for lvsmail-director.service (Type=notify, WatchdogSec=): the "
                                     "director reports READY, RELOADING, STOPPING and a STATUS line, and sends the "
                                     "watchdog keep-alive from its main loop. Checks and hooks it runs do not inherit "
                                     "them."),
    ("JOURNAL_STREAM", "When standard error is the journal's stream, log lines carry their syslog priority and no "
                       "timestamp of lvsmail's own, so journalctl -p err shows exactly the errors; on a terminal "
                       "lines are timestamped."),
    ("LVSMAIL_EVENT_LOOP", "asyncio: run on asyncio's own event loop even when uvloop is installed."),
)

FILES = (
    ("/etc/lvsmail/cluster.yaml", "The cluster file (lvsmail-cluster(5)); the default of -c. The package "
                                  "installs a commented example, kept across upgrades."),
    ("/etc/lvsmail/", "Also the place for the root-only files the cluster file names: check credentials, "
                      "the registration key, the VRRP key."),
    (DEFAULT_STATE_DIR + "/", "The director's state directory (--state-dir): the services it owns, its local API "
                      "socket FILE.sock, health and failover state, operator overrides and the recorded outages."),
    ("/var/lib/lvsmail/", "What realserver join changed (realserver.json, so leave can restore it) and, when "
                          "registration.members_file points there, the joined members."),
)


# -- roff ----------------------------------------------------------------------

def roff_text(text: str) -> str:
    """Escape running text for roff: backslashes, hyphen-minus, non-ASCII, control lines."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    text = re.sub(r"``([^`]+)``", lambda m: f"\\fB{m[1]}\\fR", text)
    text = "".join(ch if ord(ch) < 128 else f"\\[u{ord(ch):04X}]" for ch in text)
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def _quote(text: str) -> str:
    """A macro argument: escaped, in double quotes (a quote inside is written \\(dq)."""
    return '"' + roff_text(text).replace('"', "\\(dq") + '"'


def _paragraphs(text: str) -> Iterator[tuple[bool, str]]:
    """(verbatim, text) per paragraph of click help; a paragraph starting with \\b keeps its lines."""
    text = inspect.cleandoc(text.split("\f", 1)[0])
    for block in re.split(r"\n\s*\n", text.strip()):
        if block.startswith("\b"):
            yield True, block[1:].strip("\n")
        elif block.strip():
            yield False, " ".join(line.strip() for line in block.splitlines())


def _roff_help(text: str) -> list[str]:
    """Help text as roff paragraphs."""
    out: list[str] = []
    for verbatim, para in _paragraphs(text):
        if out:
            out.append(".PP")
        out.extend([".nf", roff_text(para), ".fi"] if verbatim else [roff_text(para)])
    return out


def page_date() -> str:
    """The page's date: SOURCE_DATE_EPOCH, else the newest debian/changelog entry, else FALLBACK_DATE."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        try:
            when = datetime.datetime.fromtimestamp(int(epoch), datetime.UTC)
        except (ValueError, OverflowError, OSError):
            raise SystemExit(f"lvsmail.manpage: SOURCE_DATE_EPOCH={epoch!r} is not a Unix time") from None
        return when.strftime("%Y-%m-%d")
    if _CHANGELOG.is_file():
        for line in _CHANGELOG.read_text(encoding="utf-8").splitlines():
            if line.startswith(" -- ") and "  " in line[4:]:
                parsed = email.utils.parsedate_to_datetime(line[4:].split("  ", 1)[1])
                return parsed.strftime("%Y-%m-%d")
    return FALLBACK_DATE


def _header(name: str, section: str, title: str, date: str) -> list[str]:
    return [f'.\\" Generated by python3 -m lvsmail.manpage from {title}; do not edit.',
            f'.TH {name.upper()} {section} "{date}" "lvsmail {__version__}" '
            f'"{"System Administration" if section == "8" else "File Formats"}"',
            ".nh", ".ad l"]


def _see_also(pages: Iterable[tuple[str, str]]) -> list[str]:
    refs = list(pages)
    out = [".SH SEE ALSO"]
    for i, (name, section) in enumerate(refs):
        out.append(f".BR {roff_text(name)} ({section}){',' if i < len(refs) - 1 else ''}")
    return out


# -- lvsmail(8): the command tree ---------------------------------------------------

def commands(group: click.Group, ctx: click.Context) -> Iterator[tuple[click.Context, click.Command]]:
    """Every visible command under ``group`` with its context, depth first, in name order."""
    for name in sorted(group.list_commands(ctx)):
        command = group.get_command(ctx, name)
        if command is None or command.hidden or (ctx.parent is None and name in LEFT_OUT):
            continue
        sub = click.Context(command, info_name=name, parent=ctx)
        yield sub, command
        if isinstance(command, click.Group):
            yield from commands(command, sub)


def _options(ctx: click.Context) -> list[tuple[str, str]]:
    """(synopsis, help) of each option click would list under --help, --help itself left out."""
    out = []
    for param in ctx.command.get_params(ctx):
        if param.name == "help" or getattr(param, "hidden", False):
            continue
        record = param.get_help_record(ctx)
        if record is not None:
            out.append(record)
    return out


def _roff_option(synopsis: str, help_text: str) -> list[str]:
    """One option as a .TP entry: flags bold, metavar italic."""
    parts = []
    for flag in synopsis.split(", "):
        name, _, metavar = flag.partition(" ")
        parts.append(f"\\fB{roff_text(name)}\\fR" + (f" \\fI{roff_text(metavar)}\\fR" if metavar else ""))
    entry = [".TP", ", ".join(parts)]
    if help_text.strip():
        entry.append(roff_text(" ".join(help_text.split())))
    return entry


def lvsmail_8(cli: click.Group, date: str) -> str:
    """The roff source of lvsmail(8)."""
    root = click.Context(cli, info_name="lvsmail")
    lines = _header("lvsmail", "8", "the command line", date)
    lines += [".SH NAME", "lvsmail \\- run a mail cluster behind Linux Virtual Server",
              ".SH SYNOPSIS", ".B lvsmail", "[\\fB\\-v\\fR] \\fICOMMAND\\fR [\\fISUBCOMMAND\\fR] [\\fIOPTIONS\\fR] "
              "[\\fIARGUMENTS\\fR]", ".br", ".B lvsmail \\-\\-version",
              ".SH DESCRIPTION"]
    lines += _roff_help(cli.help or "")
    lines += [".PP", roff_text(
        "One cluster file (lvsmail-cluster(5)) describes the cluster. On a director, lvsmail director start "
        "makes the kernel's IPVS table match it and keeps it so, checks the real servers' health and moves the "
        "virtual addresses between the director pair with VRRP; it runs under systemd as lvsmail-director.service. "
        "On a real server, lvsmail realserver join sets up the network, the mail stack and the boot unit "
        "lvsmail-realserver.service, and leave undoes exactly that. Every command takes --help.")]
    lines += [".SH GLOBAL OPTIONS"]
    for synopsis, help_text in _options(root):
        lines += _roff_option(synopsis, help_text)
    lines += [".SH COMMANDS"]
    for ctx, command in commands(cli, root):
        usage = " ".join([ctx.command_path, *command.collect_usage_pieces(ctx)])
        if isinstance(command, click.Group):
            usage = f"{ctx.command_path} COMMAND"
        lines += [f".SS {_quote(usage)}"]
        lines += _roff_help(command.help or command.short_help or "")
        for synopsis, help_text in _options(ctx):
            lines += _roff_option(synopsis, help_text)
    lines += [".SH EXIT STATUS"]
    for code, meaning in EXIT_STATUS:
        lines += [".TP", f"\\fB{code}\\fR", roff_text(meaning)]
    lines += [".SH ENVIRONMENT"]
    for name, meaning in ENVIRONMENT:
        lines += [".TP", f"\\fB{roff_text(name)}\\fR", roff_text(meaning)]
    lines += [".SH FILES"]
    for path, meaning in FILES:
        lines += [".TP", f"\\fI{roff_text(path)}\\fR", roff_text(meaning)]
    lines += _see_also(SEE_ALSO_8)
    return "\n".join(lines) + "\n"


# -- lvsmail-cluster(5): the key table ---------------------------------------------------

def _key_details(key: Key) -> str:
    """Type, default and (for check keys) the types that take it, in one parenthesis-free line."""
    text = f"Type: {key.type}. Default: {key.default}."
    if key.types and key.name != "type":
        text += f" Check types: {', '.join(key.types)}."
    return text


EXAMPLE = """\
cluster: clustermail
vips: [192.0.2.33]
services:
  - name: smtp
    vip: 192.0.2.33
    port: 25
    scheduler: wlc
    persistent: 120
    forwarding: tun
    realservers: [198.51.100.20, 198.51.100.32, {address: 198.51.100.36, weight: 1}]
    check: {type: smtp, interval: 2, timeout: 10}"""


def lvsmail_cluster_5(sections: Iterable[Section], date: str) -> str:
    """The roff source of lvsmail-cluster(5)."""
    lines = _header("lvsmail-cluster", "5", "the cluster file's key table", date)
    lines += [".SH NAME", "lvsmail\\-cluster \\- the lvsmail cluster file",
              ".SH SYNOPSIS", "/etc/lvsmail/cluster.yaml",
              ".SH DESCRIPTION", roff_text(
                  "The cluster file is one YAML document that describes the whole cluster: the virtual "
                  "addresses, the services and their real servers with their health checks, and optional "
                  "sections for failover, connection sync, the kernel profile, the real servers' mail stack, "
                  "the registration API, metrics and the availability report. Directors and real servers read "
                  "the same file."),
              ".PP", roff_text(
                  "Unknown keys are errors. Every problem in the file is reported at once, each with the file, "
                  "the line and the key path, and the file is refused as a whole: lvsmail config validate FILE "
                  "exits 2 and a running director keeps its table when a reload finds a bad file. Secrets are "
                  "never in the file, only the paths of root-only files that hold them."),
              ".PP", roff_text(
                  "Key paths below are written as in error messages: services[] is each entry of the services "
                  "list, NAME a name chosen by the administrator."),
              ".SH EXAMPLE", ".nf", ".RS 4", roff_text(EXAMPLE), ".RE", ".fi",
              ".SH KEYS"]
    for section in sections:
        lines += [f".SS {_quote(section.title)}", roff_text(section.doc)]
        for key in section.keys:
            lines += [".TP", f"\\fB{roff_text(key.name)}\\fR", roff_text(key.doc), ".br", roff_text(_key_details(key))]
    lines += [".SH FILES", ".TP", "\\fI/etc/lvsmail/cluster.yaml\\fR",
              roff_text("The cluster file lvsmail reads when -c is not given."),
              ".TP", "\\fI/usr/share/doc/lvsmail/examples/\\fR",
              roff_text("Example cluster files: the seed deployment, a failover pair, dual stack, and the "
                        "ldirectord and keepalived configurations they import from.")]
    lines += _see_also(SEE_ALSO_5)
    return "\n".join(lines) + "\n"


# -- Markdown key reference ---------------------------------------------------------

def _md_cell(text: str) -> str:
    """A Markdown table cell: pipes escaped, on one line."""
    return " ".join(text.split()).replace("|", "\\|")


def key_reference_markdown(sections: Iterable[Section]) -> str:
    """The key reference as Markdown: one table per section."""
    out: list[str] = []
    for section in sections:
        title = "top level" if not section.path else section.title
        out += [f"### {title}", "", section.doc, "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for key in section.keys:
            meaning = key.doc
            if key.types and key.name != "type":
                meaning += f" Check types: {', '.join(key.types)}."
            out.append(f"| `{key.name}` | {_md_cell(key.type)} | {_md_cell(key.default)} | {_md_cell(meaning)} |")
        out.append("")
    return "\n".join(out)


def refresh_markdown(text: str, path: str, sections: Iterable[Section]) -> str:
    """``text`` with the block between the markers replaced by the generated reference."""
    begin = BEGIN_MARK
    if text.count(begin) != 1 or text.count(END_MARK) != 1 or text.index(begin) > text.index(END_MARK):
        raise ValueError(f"{path}: expected one line {begin!r} and, after it, one line {END_MARK!r}")
    head, rest = text.split(begin, 1)
    _old, tail = rest.split(END_MARK, 1)
    return f"{head}{begin}\n\n{key_reference_markdown(sections)}\n{END_MARK}{tail}"


# -- command line --------------------------------------------------------------------

def write_pages(outdir: Path) -> list[Path]:
    """Write lvsmail.8 and lvsmail-cluster.5 into ``outdir`` (created if missing)."""
    from lvsmail.cli import cli  # here: importing the command tree is only needed for the page

    date = page_date()
    outdir.mkdir(parents=True, exist_ok=True)
    pages = {"lvsmail.8": lvsmail_8(cli, date), "lvsmail-cluster.5": lvsmail_cluster_5(SECTIONS, date)}
    written = []
    for name, text in pages.items():
        target = outdir / name
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python3 -m lvsmail.manpage``: exit 0 done, 1 stale (--check), 2 usage error."""
    parser = argparse.ArgumentParser(prog="python3 -m lvsmail.manpage", description=__doc__.split("\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("outdir", nargs="?", type=Path, help="write lvsmail.8 and lvsmail-cluster.5 here")
    what.add_argument("--markdown", metavar="FILE", help="refresh the generated key reference in FILE")
    what.add_argument("--check", metavar="FILE", help="exit 1 if the key reference in FILE is not current")
    args = parser.parse_args(argv)
    if args.outdir is not None:
        for path in write_pages(args.outdir):
            print(path)
        return 0
    name = args.markdown or args.check
    try:
        text = Path(name).read_text(encoding="utf-8")
        fresh = refresh_markdown(text, name, SECTIONS)
    except (OSError, ValueError) as exc:
        print(f"python3 -m lvsmail.manpage: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if fresh != text:
            print(f"{name}: the key reference is stale; run python3 -m lvsmail.manpage --markdown {name}",
                  file=sys.stderr)
            return 1
        return 0
    if fresh != text:
        Path(name).write_text(fresh, encoding="utf-8")
        print(f"{name}: key reference refreshed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
