"""``grainvl <command>``: the command-line entry point (also ``python -m grainvl``).

Every command has ``--help`` and is configured by one typed dataclass: ``--config FILE.yaml`` and
``--set a.b=c`` on every command, its other flags are shortcuts for fields (grainvl.commands). Bad
input ends with one line on stderr naming the file, the record and the reason, and exit status 2;
so does an output that cannot be written (``error: PATH: reason``: permission denied, a file where a
folder goes, no space left on device, a folder in use by another run), and any other ``OSError``.
Nothing is half-written (files are written atomically). ``GRAINVL_DEBUG=1`` re-raises configuration and
file-system errors with their traceback; an unexpected exception always keeps its traceback (a bug to see).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from grainvl import __version__
from grainvl.commands import register_all
from grainvl.errors import EXIT_BAD_INPUT, DataError, describe_os_error


# ---------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grainvl",
        description="grainvl: multi-grained vision-language models and efficient language models, "
        "offline and measured.",
    )
    parser.add_argument("--version", action="version", version=f"grainvl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    register_all(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ValueError, OSError) as e:
        if os.environ.get("GRAINVL_DEBUG"):
            raise
        # Configuration mistakes (bad option values, missing files) and file-system faults (a read-only or full
        # disk, a folder where a file goes) get one line naming the path, not a traceback.
        print(f"error: {describe_os_error(e) if isinstance(e, OSError) else e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
