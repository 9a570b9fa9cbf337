"""The one check that a pure module stays pure: importing it loads none of the heavy stack."""

import subprocess
import sys


def heavy_modules_loaded(modules: list[str], heavy: tuple[str, ...]) -> list[str]:
    """Which of ``heavy`` a fresh interpreter has in ``sys.modules`` after importing ``modules``."""
    code = f"import sys\nimport {', '.join(modules)}\nprint(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return eval(done.stdout.strip())  # a printed list of names
