"""Runs `python3 -m unittest` in a package directory and turns the outcome into ResultsYAML."""

import os
import re
import subprocess
import sys


def run(package_dir, artifactsdir, item):
    proc = subprocess.run(
        [sys.executable, "-m", "unittest", "discover", "-s", "tests", "-t", ".", "-v"],
        cwd=package_dir,
        capture_output=True,
        text=True,
    )
    log_name = "unittest-%s.log" % item
    with open(os.path.join(artifactsdir, log_name), "w") as log:
        log.write(proc.stderr)
    # Show the tail of the log live, as a person running the tests would see it.
    sys.stdout.write(proc.stderr[-2000:])

    ran = re.search(r"^Ran (\d+) tests?", proc.stderr, re.M)
    failed = re.search(r"failures=(\d+)", proc.stderr)
    errors = re.search(r"errors=(\d+)", proc.stderr)
    outcome = "PASSED" if proc.returncode == 0 else "FAILED"
    return (
        "results:\n"
        "  - item: %s\n"
        "    type: python_package\n"
        "    outcome: %s\n"
        "    note: %s\n"
        "    artifact: %s\n"
        "    tests_run: %s\n"
        "    failures: %s\n"
        "    errors: %s\n"
        % (
            item,
            outcome,
            "%s tests, exit status %d" % (ran.group(1) if ran else "0", proc.returncode),
            os.path.join(artifactsdir, log_name),
            ran.group(1) if ran else 0,
            failed.group(1) if failed else 0,
            errors.group(1) if errors else 0,
        )
    )
