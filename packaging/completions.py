"""Shell completion for `guestfail`, generated from its argparse parser
(guestfail.cli.commands.build_parser) with shtab.

    .venv/bin/python packaging/completions.py [OUTDIR]

writes OUTDIR/guestfail (bash) and OUTDIR/_guestfail (zsh); OUTDIR is
packaging/completions/ by default, where the generated files are kept in
git and installed from by both packages:

    Debian:  /usr/share/bash-completion/completions/guestfail
             /usr/share/zsh/vendor-completions/_guestfail
    Fedora:  /usr/share/bash-completion/completions/guestfail
             /usr/share/zsh/site-functions/_guestfail

They are generated here, not at package build time, because Debian 12's
shtab (python3-shtab 1.5.5) writes broken scripts: its bash script offers
only the first of a positional's choices (`guestfail <TAB>` gives "run"
alone) and its zsh script names the option arrays of hyphenated commands
(check-config, prepare-unplug) differently where it defines and where it uses
them.  The test venv pins the shtab that generates them
(pyproject.toml [test]); tests/integration/test_completion.py fails when the
kept files differ from what the parser gives now (run the command above),
and runs the bash script in a real bash.

Besides commands and options: --config completes file names, PAIR the
masters guestfail built (their ifalias begins with "guestfail:"), a member
of `switch` standby or primary.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import shtab

from guestfail.cli.commands import build_parser

# guestfail's masters: links whose ifalias carries guestfail's marker
PREAMBLE = {
    "bash": r"""
_guestfail_masters() {
  local d a
  for d in /sys/class/net/*; do
    read -r a 2>/dev/null < "$d/ifalias" || continue
    [[ $a == guestfail:* && ${d##*/} == "$1"* ]] && printf '%s\n' "${d##*/}"
  done
}
""",
    "zsh": r"""
_guestfail_masters() {
  local d a
  local -a masters
  for d in /sys/class/net/*(N); do
    a=$(<$d/ifalias) 2>/dev/null || continue
    [[ $a == guestfail:* ]] && masters+=(${d:t})
  done
  compadd -a masters
}
""",
}
MASTERS = {"bash": "_guestfail_masters", "zsh": "_guestfail_masters"}


def annotated_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    for action in _walk(parser):
        if "--config" in action.option_strings:
            action.complete = shtab.FILE  # type: ignore[attr-defined]
        elif action.dest in ("pair", "pairs", "primary") and not action.option_strings:
            action.complete = MASTERS  # type: ignore[attr-defined]
        elif action.dest == "member" and not action.option_strings:
            action.choices = ["standby", "primary"]
    return parser


def _walk(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    out = []
    for action in parser._actions:
        out.append(action)
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict(action.choices).values():
                out += _walk(sub)
    return out


def generate(shell: str) -> str:
    preamble = PREAMBLE[shell]
    return shtab.complete(annotated_parser(), shell=shell, preamble=preamble)


def main() -> int:
    if len(sys.argv) > 2:
        print("usage: completions.py [OUTDIR]", file=sys.stderr)
        return 2
    out = Path(sys.argv[1]) if len(sys.argv) == 2 else Path(__file__).resolve().parent / "completions"
    out.mkdir(parents=True, exist_ok=True)
    (out / "guestfail").write_text(generate("bash"))
    (out / "_guestfail").write_text(generate("zsh"))
    print(out / "guestfail")
    print(out / "_guestfail")
    return 0


if __name__ == "__main__":
    sys.exit(main())
