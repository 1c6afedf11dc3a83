"""Fails when a test skipped for a reason CI does not expect (.ci/expected-skips).

A skip that hides a broken install or a missing tool looks like a pass; this turns it into a
failure. Usage: python .ci/check_skips.py JUNIT_XML
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

EXPECTED = Path(__file__).with_name("expected-skips")


def expected_patterns() -> list[re.Pattern]:
    """One regular expression a line; `#` lines say why CI cannot provide what it needs."""
    lines = EXPECTED.read_text().splitlines()
    return [re.compile(line) for line in lines if line.strip() and not line.startswith("#")]


def skips(junit: Path) -> list[tuple[str, str]]:
    """(test, reason) of every skipped test of a pytest JUnit XML report."""
    found = []
    for case in ET.parse(junit).iter("testcase"):
        for skipped in case.iter("skipped"):
            reason = skipped.get("message", "")
            found.append((f"{case.get('classname')}::{case.get('name')}", reason))
    return found


def main(junit: Path) -> int:
    patterns = expected_patterns()
    matched: Counter[str] = Counter()
    unexpected = []
    for test, reason in skips(junit):
        pattern = next((p for p in patterns if p.search(reason)), None)
        if pattern is None:
            unexpected.append((test, reason))
        else:
            matched[pattern.pattern] += 1
    for pattern, count in matched.most_common():
        print(f"expected skip x{count}: {pattern}")
    for test, reason in unexpected:
        print(f"UNEXPECTED SKIP: {test}: {reason}")
    if unexpected:
        print(f"{len(unexpected)} test(s) skipped for a reason not in {EXPECTED}: install what "
              "they need in .ci/run, or add the reason there with why CI cannot have it")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
