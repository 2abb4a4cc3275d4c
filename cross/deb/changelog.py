#!/usr/bin/env python3
"""Debian changelog from CHANGELOG.md (Keep a Changelog): one entry per
released version, newest first, its bullets' first sentences as items, and
the current version's entry from [Unreleased] when it is not released yet.

    changelog.py CHANGELOG.md UPSTREAM_VERSION PACKAGE_VERSION > changelog.Debian
"""
import re
import sys
import textwrap
from datetime import datetime, timezone
from email.utils import format_datetime

MAINTAINER = "RTDS maintainers <rtds@example.invalid>"


def sections(text):
    """(version, date or None, [bullet texts]) for each `## [..]` heading."""
    out = []
    for block in re.split(r"^## ", text, flags=re.M)[1:]:
        head, _, body = block.partition("\n")
        m = re.match(r"\[([^\]]+)\](?:\s*-\s*(\d{4}-\d{2}-\d{2}))?", head)
        if not m:
            continue
        bullets = []
        for item in re.split(r"^- ", body, flags=re.M)[1:]:
            item = re.split(r"\n\s*\n|\n### ", item)[0]
            item = " ".join(item.split())
            item = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", item)  # links to their text
            item = item.replace("**", "").replace("`", "")
            first = re.split(r"(?<=\.)\s", item)[0]
            if len(first) > 240:
                first = first[:240].rsplit(" ", 1)[0] + " …"
            bullets.append(first)
        out.append((m.group(1), m.group(2), bullets))
    return out


def main():
    path, version, package = sys.argv[1], sys.argv[2], sys.argv[3]
    text = open(path, encoding="utf-8").read()
    entries = []
    for name, date, bullets in sections(text):
        if name == "Unreleased":
            if any(n == version for n, _, _ in sections(text)):
                continue
            name, when = version, datetime.now(timezone.utc)
        else:
            when = datetime.strptime(date, "%Y-%m-%d").replace(hour=12, tzinfo=timezone.utc)
        items = bullets or ["No changes listed."]
        # Each version as packaged: revision 1 of it.
        lines = [f"rtds ({package if name == version else name + '-1'}) unstable; urgency=medium", ""]
        for b in items:
            lines += textwrap.wrap(b, 76, initial_indent="  * ", subsequent_indent="    ")
        lines += ["", f" -- {MAINTAINER}  {format_datetime(when)}", ""]
        entries.append("\n".join(lines))
    sys.stdout.write("\n".join(entries))


if __name__ == "__main__":
    main()
