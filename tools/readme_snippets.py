#!/usr/bin/env python3
"""Keeps the README's code in step with the demos, so the README never shows code that does not
compile. A README line `<!-- snippet: demos/queue.cpp#queue_workers -->` is followed by a
```cpp block that must equal the lines between `//[queue_workers` and `//]` in that demo
(de-indented). `--check` fails when one differs; `--write` rewrites the blocks.
"""
import pathlib
import re
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent
MARK = re.compile(r"<!-- snippet: (\S+)#(\S+) -->")


def region(path, tag):
    lines = (ROOT / path).read_text().splitlines()
    start = next((i for i, l in enumerate(lines) if l.strip() == f"//[{tag}"), None)
    if start is None:
        raise SystemExit(f"{path}: no //[{tag} marker")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].strip() == "//]"), None)
    if end is None:
        raise SystemExit(f"{path}: //[{tag} is not closed by //]")
    return textwrap.dedent("\n".join(lines[start + 1:end])).strip("\n")


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "--check"
    readme = ROOT / "README.md"
    lines = readme.read_text().splitlines()
    out, bad, i, count = [], [], 0, 0
    while i < len(lines):
        out.append(lines[i])
        m = MARK.search(lines[i])
        if m:
            count += 1
            want = region(m.group(1), m.group(2))
            if i + 1 >= len(lines) or not lines[i + 1].startswith("```"):
                raise SystemExit(f"README.md:{i + 1}: a snippet marker must be followed by a code block")
            j = i + 2
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            have = "\n".join(lines[i + 2:j])
            if have != want:
                bad.append(f"{m.group(1)}#{m.group(2)}")
            out.append("```cpp")
            out.extend(want.splitlines())
            out.append("```")
            i = j + 1
            continue
        i += 1
    if mode == "--write":
        readme.write_text("\n".join(out) + "\n")
        print(f"README.md: {count} snippets written")
    elif bad:
        print("README.md snippets differ from the demos: " + ", ".join(bad))
        print("run tools/readme_snippets.py --write")
        return 1
    else:
        print(f"README.md: {count} snippets match the demos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
