"""A recording stand-in for juju, lxc, openstack and modinfo (test double of the CLIs).

Installed on PATH by the spell tests as ``<command>.py`` behind a ``<command>`` wrapper:
it appends its argv to
``$STANDIN_LOG`` (one JSON list per line) and answers from ``$STANDIN_ANSWERS``, a JSON object
mapping a command-line prefix ("juju status") to ``{"stdout": ..., "exit": N, "stderr": ...}``;
the longest matching prefix wins; no match answers nothing with exit 0.
"""

import json
import os
import sys
from pathlib import Path


def main() -> int:
    """Record the call; answer it."""
    name = Path(sys.argv[0]).name.removesuffix(".py")
    argv = [name, *sys.argv[1:]]
    with open(os.environ["STANDIN_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps(argv) + "\n")
    answers = json.loads(Path(os.environ["STANDIN_ANSWERS"]).read_text())
    line = " ".join(argv)
    matches = [prefix for prefix in answers if line == prefix or line.startswith(prefix + " ")]
    if not matches:
        return 0
    answer = answers[max(matches, key=len)]
    sys.stdout.write(answer.get("stdout", ""))
    sys.stderr.write(answer.get("stderr", ""))
    return int(answer.get("exit", 0))


if __name__ == "__main__":
    sys.exit(main())
