"""`python -m llmlib.report build RESULTS` (make report) and `python -m llmlib.report compare A B [OUT]`
(make compare): rebuild the reports of a results folder, or compare two."""

from __future__ import annotations

import sys

from llmlib.errors import HarnessError

USAGE = ("usage: python -m llmlib.report build RESULTS\n"
         "       python -m llmlib.report compare A B [OUT]")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if len(args) == 2 and args[0] == "build":
            from llmlib.report.html import build

            for page in build(args[1]):
                print(page)
            return 0
        if len(args) in (3, 4) and args[0] == "compare":
            from llmlib.report.compare import write_comparison

            text, out = write_comparison(args[1], args[2], args[3] if len(args) == 4 else None)
            print(text)
            print(f"\nwritten: {out}/compare.txt, compare.csv, compare.html")
            return 0
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
