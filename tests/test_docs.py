"""The README and docs/ stay true to the code they describe.

Every check names its independent truth and, when it fails, says exactly what to write instead:
  (a) README.md is at most 250 lines and opens with the two set-up commands, the test one being
      what .ci/run runs;
  (b) every relative link and picture of README.md and docs/*.md exists (and a #heading anchor
      into a page names a heading of that page; a #L10-L20 anchor into a file lies inside it);
  (c) every code reference resolves: `tinydiff/x.py`-style paths exist, `td.a.b` and
      `tinydiff.a.b` names are reachable by getattr from the package, `file.py:name` is defined
      in that file (ast), and each function of the equation table is defined in the file its row
      links to;
  (d) every line span of the README's reading table is the real span (ast) of the function or
      class it names;
  (e) no file of README.md, docs/, tinydiff/, examples/ speaks of an issue number;
  (f) every `python examples/NAME.py --flag` shown (also bench/ scripts and
      `python -m tinydiff.scorer`) uses a flag that the script's --help lists;
  (g) a comment of the code that names a README section (README "Speed") finds it in README.md,
      and one that names a docs page (docs/speed.md) finds that page.
"""
import ast
import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import tinydiff as td

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README] + DOCS
README_MAX_LINES = 250
SETUP_COMMANDS = ['pip install -e ".[examples]"', "python examples/toy2d.py",
                  'pip install -e ".[test]"', "python -m pytest"]
READING_HEADING = "Read the code in this order"

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"(?<!`)`((?:[^`\n]|\n(?!\s*\n))+)`(?!`)")        # may wrap, not span a paragraph


def rel(path) -> str:
    return Path(path).resolve().relative_to(ROOT).as_posix()


def read(path) -> str:
    return Path(path).read_text(encoding="utf-8")


def line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def prose(text: str) -> str:
    """The text with fenced blocks and inline code blanked (same length, so positions keep their lines)."""
    blank = lambda m: re.sub(r"[^\n]", " ", m.group(0))                       # noqa: E731
    return INLINE_CODE.sub(blank, FENCE.sub(blank, text))


def code_pieces(text: str):
    """(line, code) for every inline code span and every line of every fenced block."""
    for m in FENCE.finditer(text):
        start = line_of(text, m.start())
        for i, line in enumerate(m.group(0).split("\n")[1:-1]):
            yield start + 1 + i, line
    outside = FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    for m in INLINE_CODE.finditer(outside):
        yield line_of(text, m.start()), m.group(1).replace("\n", " ")


# ---------------------------------------------------------------------------------------------
# (a) the README's first screen

def test_readme_is_short_and_opens_with_the_two_setup_commands():
    text = read(README)
    n = len(text.splitlines())
    assert n <= README_MAX_LINES, (f"README.md has {n} lines, at most {README_MAX_LINES}: move a section "
                                   f"to a page of docs/ and link it")
    first = FENCE.search(text)
    assert first is not None, "README.md has no fenced block: it must open with the set-up commands"
    opens_at = line_of(text, first.start())
    assert opens_at <= 12, f"README.md's set-up commands start at line {opens_at}; put them in the first 12 lines"
    commands = []
    for line in first.group(0).split("\n")[1:-1]:
        line = line.split("#", 1)[0].strip()
        commands += [c.strip() for c in line.split("&&") if c.strip()]
    assert commands == SETUP_COMMANDS, (f"README.md's first block runs {commands}; it must be the two set-up "
                                        f"commands: {SETUP_COMMANDS[0]} && {SETUP_COMMANDS[1]}, then "
                                        f"{SETUP_COMMANDS[2]} && {SETUP_COMMANDS[3]}")


def test_the_readme_test_command_is_what_ci_runs():
    ci = [line.strip() for line in read(ROOT / ".ci" / "run").splitlines()
          if line.strip() and not line.strip().startswith("#")]
    assert SETUP_COMMANDS[3] in ci, f".ci/run does not run `{SETUP_COMMANDS[3]}`, the README's test command: {ci}"
    setup = read(ROOT / "setup.cfg")
    for extra in ("examples", "test"):
        assert re.search(rf"^\s*{extra}\s*=", setup, re.M), f"setup.cfg has no extra [{extra}] for README's pip install"


# ---------------------------------------------------------------------------------------------
# (b) links and pictures

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMG_SRC = re.compile(r"<img\b[^>]*\bsrc=\"([^\"]+)\"", re.I)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, inline markup and punctuation dropped, spaces -> '-'."""
    heading = re.sub(r"`([^`]*)`", r"\1", heading.strip().lower())
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def anchors(path: Path) -> set:
    text = FENCE.sub("", read(path))
    seen, out = {}, set()
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M):
        s = slug(heading)
        out.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return out


def links(path: Path):
    """(line, target) for every link and picture of a page, outside code."""
    text = read(path)
    plain = prose(text)
    for m in LINK.finditer(plain):
        yield line_of(text, m.start()), m.group(1)
    for m in IMG_SRC.finditer(plain):
        yield line_of(text, m.start()), m.group(1)


def link_problem(page: Path, target: str):
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):                     # http:, https:, mailto:
        return None
    path_part, _, anchor = target.partition("#")
    dest = (page.parent / path_part).resolve() if path_part else page
    try:
        shown = rel(dest)
    except ValueError:
        return f"{target} points outside the repository"
    if not dest.exists():
        return f"{target}: {shown} does not exist{suggest_file(Path(path_part).name)}"
    if not anchor:
        return None
    if dest.suffix == ".md":
        if anchor not in anchors(dest):
            return f"{target}: {shown} has no heading with anchor #{anchor} (its anchors: {sorted(anchors(dest))})"
    else:
        m = re.fullmatch(r"L(\d+)(?:-L(\d+))?", anchor)
        n = len(read(dest).splitlines())
        if not m or int(m.group(2) or m.group(1)) > n:
            return f"{target}: #{anchor} is not a line span inside {shown} ({n} lines)"
    return None


def suggest_file(name: str) -> str:
    if not name:
        return ""
    found = sorted(rel(p) for p in ROOT.rglob(name) if ".git" not in p.parts)
    return f" (a file of that name: {', '.join(found)})" if found else ""


def test_every_link_and_picture_exists():
    problems = [f"{rel(page)}:{line}: {problem}"
                for page in PAGES for line, target in links(page)
                if (problem := link_problem(page, target))]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_docs_pages_exist_and_each_is_linked_from_the_course_index():
    promised = ["README", "forward-process", "training", "sampling", "bound-and-variances", "score", "toy2d",
                "mnist", "vae-and-latent", "two-attributes", "editing", "engine", "equations", "speed",
                "reliability"]
    missing = [p for p in promised if not (ROOT / "docs" / f"{p}.md").exists()]
    assert not missing, f"docs pages promised to the code's comments are missing: {missing}"
    index = ROOT / "docs" / "README.md"
    linked = {(index.parent / t.partition("#")[0]).resolve() for _, t in links(index) if t.partition("#")[0]}
    unlinked = [rel(p) for p in DOCS if p != index and p.resolve() not in linked]
    assert not unlinked, f"docs/README.md (the course index) does not link: {unlinked}"


# ---------------------------------------------------------------------------------------------
# (c) code references

PATH_REF = re.compile(r"(?<![\w./-])((?:tinydiff|examples|bench|tests|docs|\.ci)/[\w./-]*[\w/])")
FILE_NAME_REF = re.compile(r"(?<![\w./-])((?:tinydiff|examples|bench|tests)/[\w/.-]+\.py):([A-Za-z_][\w.]*)")
TD_REF = re.compile(r"(?<![\w.])(td|tinydiff)((?:\.[A-Za-z_]\w*)+)")


def resolve(dotted: str):
    """td.a.b.c by getattr from the package (importing a submodule when an attribute is one)."""
    obj, done = td, "tinydiff"
    for part in dotted.split("."):
        if not part:
            continue
        try:
            obj = getattr(obj, part)
        except AttributeError:
            try:
                obj = importlib.import_module(f"{done}.{part}")
            except ImportError:
                raise AttributeError(f"{done}.{part}") from None
        done = f"{done}.{part}"
    return obj


def public_index():
    """name -> ['td.sub.name', ...] for every public name defined in a tinydiff module or class."""
    index = {}
    for info in pkgutil.walk_packages(td.__path__, "tinydiff."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            where = "td." + info.name.split(".", 1)[1] + "." + name
            index.setdefault(name, []).append(where)
            if inspect.isclass(obj):
                for attr in vars(obj):
                    if not attr.startswith("_"):
                        index.setdefault(attr, []).append(f"{where}.{attr}")
    return index


def suggest_name(dotted: str, index) -> str:
    found = index.get(dotted.rsplit(".", 1)[-1], [])
    return f" (defined as {', '.join(sorted(found)[:4])})" if found else " (no public name of that name in tinydiff)"


def defined_in(path: Path, qualname: str):
    """The ast node of ``Class.method`` or ``function`` (or a top-level assignment) in a file, or None."""
    body = ast.parse(read(path)).body
    node = None
    for part in qualname.split("."):
        node = next((n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     and n.name == part), None)
        if node is None:
            node = next((n for n in body if isinstance(n, (ast.Assign, ast.AnnAssign)) and part in
                         [t.id for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                          if isinstance(t, ast.Name)]), None)
        if node is None:
            return None
        body = getattr(node, "body", [])
    return node


def where_defined(qualname: str) -> str:
    """Every file of the repository that defines ``qualname`` (for a failure message)."""
    hits = []
    for path in sorted(list((ROOT / "tinydiff").rglob("*.py")) + list((ROOT / "examples").glob("*.py"))):
        try:
            if defined_in(path, qualname) is not None:
                hits.append(rel(path))
        except SyntaxError:
            continue
    return f" (defined in {', '.join(hits)})" if hits else " (defined nowhere in tinydiff/ or examples/)"


def code_reference_problems(page: Path, index):
    problems = []
    for line, code in code_pieces(read(page)):
        where = f"{rel(page)}:{line}"
        for m in FILE_NAME_REF.finditer(code):
            path = ROOT / m.group(1)
            if path.exists() and defined_in(path, m.group(2)) is None:
                problems.append(f"{where}: `{m.group(0)}`: {m.group(1)} defines no {m.group(2)}"
                                f"{where_defined(m.group(2))}")
        for m in PATH_REF.finditer(code):
            target = m.group(1).rstrip("/")
            if not (ROOT / target).exists():
                problems.append(f"{where}: `{m.group(1)}` does not exist{suggest_file(Path(target).name)}")
        for m in TD_REF.finditer(code):
            dotted = m.group(2)[1:]
            if m.group(1) == "tinydiff" and code[m.end():m.end() + 1] == "/":
                continue
            try:
                resolve(dotted)
            except AttributeError:
                problems.append(f"{where}: `{m.group(1)}.{dotted}` is not reachable from `import tinydiff as td`"
                                f"{suggest_name(dotted, index)}")
    return problems


def test_every_code_reference_resolves():
    index = public_index()
    problems = [p for page in PAGES for p in code_reference_problems(page, index)]
    assert not problems, "stale code references:\n" + "\n".join(problems)


def table_rows(text: str, heading_pattern: str | None = None):
    """(line, [cells]) of every table row (not the header or the rule), under a heading if given."""
    lines = text.split("\n")
    inside = heading_pattern is None
    header_seen = False
    for i, line in enumerate(lines, 1):
        if heading_pattern is not None and line.startswith("#"):
            inside = re.search(heading_pattern, line) is not None
        if not inside or not line.startswith("|"):
            header_seen = False if not line.startswith("|") else header_seen
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
        if all(re.fullmatch(r":?-+:?", c) for c in cells if c):
            header_seen = True
            continue
        if header_seen:
            yield i, cells


def equation_rows():
    path = ROOT / "docs" / "equations.md"
    text = read(path)
    section = text.split("## Names in other codebases")[0]
    return [(line, cells) for line, cells in table_rows(section)]


def test_the_equation_table_is_long_and_each_function_is_defined_where_its_row_links():
    """docs/equations.md: each row's functions (`td.X.y`, or `examples/x.py:name`) are defined in the file
    the row links to, so the reader lands on the code in one hop."""
    rows = equation_rows()
    assert len(rows) >= 60, f"docs/equations.md has {len(rows)} equation rows; the seeds alone need more"
    problems = []
    for line, cells in rows:
        row = " | ".join(cells)
        linked = {(ROOT / "docs" / t.partition("#")[0]).resolve() for t in re.findall(r"\]\(([^)]+)\)", row)}
        names = [f"{a}{b}" for a, b in TD_REF.findall(cells[-1])] + FILE_NAME_REF.findall(cells[-1])
        if not names and not re.search(r"\]\(\.\./examples/\w+\.py#L\d+-L\d+\)", cells[-1]):
            problems.append(f"docs/equations.md:{line}: the row names no function (`td.a.b` or `file.py:name`), "
                            f"nor links the lines of a lesson's cell ([basics.py](../examples/basics.py#L10-L20))")
        for name in names:
            if isinstance(name, tuple):                                       # examples/x.py:function
                continue                                                      # (checked by the reference test)
            try:
                obj = inspect.unwrap(resolve(name.split(".", 1)[1]))
            except AttributeError:
                continue                                                      # reported by the reference test
            if isinstance(obj, property):
                obj = obj.fget
            if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj)):
                continue
            source = Path(inspect.getsourcefile(obj)).resolve()
            if source not in linked:
                problems.append(f"docs/equations.md:{line}: `{name}` is defined in {rel(source)}, but its row "
                                f"links {sorted(rel(p) for p in linked)}: link ../{rel(source)}")
    assert not problems, "\n".join(problems)


def test_every_reference_of_the_code_to_a_docs_page_names_a_page():
    """Comments and docstrings point at docs/<page>.md; each page they name must exist."""
    problems = []
    for path in sorted(list((ROOT / "tinydiff").rglob("*.py")) + list((ROOT / "examples").glob("*.py"))):
        for m in re.finditer(r"docs/([\w-]+\.md)(#[\w-]+)?", read(path)):
            page = ROOT / "docs" / m.group(1)
            if not page.exists():
                problems.append(f"{rel(path)}: docs/{m.group(1)} does not exist")
            elif m.group(2) and m.group(2)[1:] not in anchors(page):
                problems.append(f"{rel(path)}: docs/{m.group(1)} has no heading {m.group(2)}")
    assert not problems, "\n".join(problems)


def headings(path: Path):
    """(title, anchor) of every heading of a page, and of every bold paragraph lead ('**Why v.**')."""
    text = FENCE.sub("", read(path))
    out = [(h, slug(h)) for h in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M)]
    out += [(b.rstrip("."), None) for b in re.findall(r"^\*\*([^*]+)\*\*", text, re.M)]
    return out


def test_every_readme_section_the_code_names_is_in_the_readme():
    """A comment that says README "Speed" must find that section in README.md; sections that live in
    docs/ are named by their page (docs/speed.md), and the failure says which page to write."""
    problems = []
    readme_titles = [h.lower() for h, _ in headings(README)]
    files = sorted(list((ROOT / "tinydiff").rglob("*.py")) + list((ROOT / "examples").glob("*.py"))
                   + list((ROOT / "bench").glob("*.py")))
    for path in files:
        text = read(path)
        for m in re.finditer(r"README(?:'s)?:?\s*[\"']([^\"'\n]+)[\"']", text):
            title = m.group(1).strip().lower()
            if any(h.startswith(title) for h in readme_titles):
                continue
            pages = sorted((i > 0, f"docs/{page.name}" + (f"#{a}" if a and i > 0 else ""))
                           for page in DOCS for i, (h, a) in enumerate(headings(page))
                           if h.lower().startswith(title))                 # a page's title first
            pages = [name for _, name in pages]
            problems.append(f"{rel(path)}:{line_of(text, m.start())}: {m.group(0)!r} is not a section of README.md"
                            + (f"; write {pages[0]}" if pages else ""))
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# (d) the README's reading table

SPAN = re.compile(r"(\d+)\s*[–-]\s*(\d+)")


def reading_rows():
    text = read(README)
    assert READING_HEADING in text, f"README.md has no section '{READING_HEADING}'"
    rows = list(table_rows(text, re.escape(READING_HEADING)))
    assert len(rows) >= 8, f"README.md's reading table has {len(rows)} rows; it should walk the whole path"
    return rows


def test_every_line_span_of_the_reading_table_is_the_real_span():
    problems = []
    for line, cells in reading_rows():
        paths = PATH_REF.findall(cells[1])
        names = INLINE_CODE.findall(cells[2])
        whole = not names and "whole file" in cells[2]
        spans = SPAN.findall(cells[-1])
        if len(paths) < 1 or (len(names) != 1 and not whole) or len(spans) != 1:
            problems.append(f"README.md:{line}: a reading row is | # | `file` | `name` (or: the whole file) | "
                            f"what to look for | [first–last](file#Lfirst-Llast) |, got {cells}")
            continue
        path = ROOT / paths[0]
        if not path.exists():
            problems.append(f"README.md:{line}: {paths[0]} does not exist{suggest_file(path.name)}")
            continue
        if whole:
            first, last, name = 1, len(read(path).splitlines()), "the whole file"
        else:
            name = names[0]
            node = defined_in(path, name)
            if node is None:
                problems.append(f"README.md:{line}: {paths[0]} defines no `{name}`{where_defined(name)}")
                continue
            first, last = node.lineno, node.end_lineno
        right = f"[{first}–{last}]({paths[0]}#L{first}-L{last})"
        anchor = re.search(r"#L(\d+)-L(\d+)", cells[-1])
        if tuple(map(int, spans[0])) != (first, last) or not anchor or \
                tuple(map(int, anchor.groups())) != (first, last) or f"]({paths[0]}#" not in cells[-1]:
            problems.append(f"README.md:{line}: `{name}` spans lines {first}–{last} of {paths[0]}; "
                            f"the lines cell should read {right}")
    assert not problems, "the reading table is out of date:\n" + "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# (e) no issue numbers

ISSUE = re.compile(r"\bissues?\s*(?:#|no\.?\s*|number\s*)?\d+|\bissues?\s+#?\d+\s*(?:and|,)\s*#?\d+", re.I)


def test_no_file_speaks_of_an_issue_number():
    files = PAGES + sorted((ROOT / "tinydiff").rglob("*.py")) + sorted((ROOT / "examples").glob("*.py"))
    hits = [f"{rel(path)}:{line_of(read(path), m.start())}: '{m.group(0)}'"
            for path in files for m in ISSUE.finditer(read(path))]
    assert not hits, ("say what the thing is, not which issue made it:\n" + "\n".join(hits))


# ---------------------------------------------------------------------------------------------
# (f) the flags of every command shown

COMMAND = re.compile(r"\bpython3?\s+(?:(examples/\w+\.py|bench/\w+\.py)|-m\s+(tinydiff\.\w+))((?:\s+[^\s#|;&)]+)*)")


def commands():
    """{script: {flag: [where, ...]}} for every command shown in README.md and docs/."""
    found = {}
    for page in PAGES:
        text = re.sub(r"\\\n\s*", " ", read(page))                             # join continued lines
        for line, code in code_pieces(text):
            for m in COMMAND.finditer(code):
                script = m.group(1) or m.group(2)
                flags = found.setdefault(script, {})
                for flag in re.findall(r"(?<![\w-])(--[A-Za-z][\w-]*)", m.group(3)):
                    flags.setdefault(flag, []).append(f"{rel(page)}:{line}")
    return found


def help_text(script: str) -> str:
    argv = [sys.executable, "-m", script] if not script.endswith(".py") else [sys.executable, str(ROOT / script)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    result = subprocess.run(argv + ["--help"], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    return result.stdout if result.returncode == 0 else ""


def source_of(script: str) -> str:
    if script.endswith(".py"):
        return read(ROOT / script) if (ROOT / script).exists() else ""
    return read(ROOT / (script.replace(".", "/") + ".py"))


def test_every_flag_shown_in_a_command_is_one_the_script_has():
    found = commands()
    assert "examples/toy2d.py" in found and "examples/mnist.py" in found
    scripts = sorted(s for s in found if not s.endswith(".py") or (ROOT / s).exists())
    with ThreadPoolExecutor(max_workers=4) as pool:
        helps = dict(zip(scripts, pool.map(help_text, scripts)))
    problems = []
    for script in scripts:
        text, source = helps[script], source_of(script)
        for flag, where in sorted(found[script].items()):
            if re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text):
                continue
            setting = flag[2:].replace("-", "_")
            if not text and re.search(rf"""["']{re.escape(flag)}["']""", source):
                continue                                                      # --help failed: read the source
            if re.search(rf"^{setting}\s*[:=]|^\s*[\"']{setting}[\"']\s*:", source, re.M | re.I):
                continue                                                      # a setting at the top of the lesson
            problems.append(f"{script} has no flag {flag} (shown at {', '.join(where)})"
                            + ("" if text else f"; `{script} --help` failed"))
    assert not problems, "commands in the docs use flags the scripts do not have:\n" + "\n".join(problems)
