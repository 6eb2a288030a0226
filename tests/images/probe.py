"""Run inside a built image: `python3 probe.py MODULE...` imports each module and prints, as JSON,
the modules that failed to import and every installed distribution with its requirement strings.

Standard library only: it runs on the image's Python, beside nothing of the test suite.
"""

import importlib
import importlib.metadata
import json
import sys
import traceback


def main(modules: list[str]) -> None:
    failed = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001  (reported, whatever it is)
            failed[name] = traceback.format_exc(limit=-3)
    installed = {d.metadata["Name"]: d.requires or [] for d in importlib.metadata.distributions()}
    print(json.dumps({"failed": failed, "installed": installed}))


if __name__ == "__main__":
    main(sys.argv[1:])
