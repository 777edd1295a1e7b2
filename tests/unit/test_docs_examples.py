"""Every example of README.rst and docs/*.rst runs as written, so the docs cannot drift from the code.

* ``python`` blocks of one document run in order in one fresh interpreter (one namespace, as a
  reader pastes them), in an empty directory, on the embedded filesystem transport; a server URL
  in them is swapped for that store.  A block whose first line is ``# path/to/module.py`` is
  written to that file instead (the guide's ``myapp/workers.py``); ``myapp/mail.py``, the mail
  client the guide leaves to the reader, is the one stand-in provided.
* ``yaml`` blocks are configuration files: they load with :func:`asynctask.config.load_settings`,
  and their transport URL's options are checked where that needs no server.
* ``console`` blocks: ``asynctask`` commands run (on the same kind of empty store), and
  ``asynctask-workers`` command lines must parse; ``pip`` lines are checked for the wheel's name.
* Every example carries its language (``.. code-block:: LANG``), so none escapes these checks.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from asynctask.cli.admin import main as admin_main
from asynctask.cli.workers import build_parser as workers_parser
from asynctask.config import load_settings, parse_set_option
from asynctask.transports import get_transport
from asynctask.transports.base import parse_url

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]
SERVER_URL = re.compile(r"""(["'])(?:redis|rediss|pgsql|postgresql|postgres|amqp|amqps)(?::|://)[^"']*\1""")
#: stand-ins for modules the docs import but leave to the reader
STAND_INS = {
    "myapp/__init__.py": "",
    "myapp/mail.py": '''"""The reader's mail client, as docs/guide.rst uses it."""
SENT = []


class Client:
    def busy(self):
        return False

    def send(self, to):
        SENT.append(to)

    def close(self):
        pass


def connect():
    return Client()
''',
}


@dataclass(frozen=True)
class Block:
    document: Path
    line: int  # 1-based line of the first line of code
    language: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def blocks(document: Path) -> list[Block]:
    """The code blocks of ``document``; a bare ``::`` literal block has the language ``""``."""
    lines = document.read_text(encoding="utf-8").splitlines()
    found = []
    for index, line in enumerate(lines):
        directive = re.fullmatch(r"\s*\.\. code-block::\s*(\S+)\s*", line)
        literal = line.rstrip().endswith("::") and not line.lstrip().startswith("..")
        if not (directive or literal):
            continue
        start = index + 1
        while start < len(lines) and (not lines[start].strip() or lines[start].lstrip().startswith(":")):
            start += 1
        end = start
        while end < len(lines) and (not lines[end].strip() or lines[end].startswith((" ", "\t"))):
            end += 1
        body = lines[start:end]
        indent = min(len(text) - len(text.lstrip()) for text in body if text.strip())
        code = "\n".join(text[indent:] for text in body).strip("\n") + "\n"
        found.append(Block(document, start + 1, directive.group(1) if directive else "", code))
    return found


ALL = [block for document in DOCUMENTS for block in blocks(document)]


def of(language: str) -> list[Block]:
    return [block for block in ALL if block.language == language]


def test_every_example_names_its_language() -> None:
    assert {ROOT / "README.rst", ROOT / "docs" / "guide.rst", ROOT / "docs" / "transports.rst"} <= set(DOCUMENTS)
    assert [b.where for b in ALL if b.language not in ("python", "yaml", "console")] == []
    # the documents whose examples the issue found broken are among those checked
    assert {b.document.name for b in of("python")} >= {"README.rst", "guide.rst", "transports.rst"}


@pytest.fixture
def empty_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty directory as the current one, its own embedded store, no configuration."""
    for name in ("ASYNCTASK_TRANSPORT", "ASYNCTASK_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ASYNCTASK_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


RUNNER = """
import json, sys
namespace = {"__name__": "__main__"}
for where, code in json.load(sys.stdin):
    exec(compile(code, where, "exec"), namespace)
"""


@pytest.mark.parametrize("document", sorted({b.document for b in of("python")}), ids=lambda p: p.name)
def test_python_examples_run(document: Path, empty_project: Path) -> None:
    for relative, text in STAND_INS.items():
        (empty_project / relative).parent.mkdir(parents=True, exist_ok=True)
        (empty_project / relative).write_text(text)
    store = f"filesys:{empty_project / 'store'}"
    session = []
    for block in of("python"):
        if block.document != document:
            continue
        code = SERVER_URL.sub(lambda m: f"{m.group(1)}{store}{m.group(1)}", block.text)
        first = code.splitlines()[0]
        if re.fullmatch(r"# [\w/]+\.py", first):
            target = empty_project / first[2:]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(code)
        else:
            session.append((block.where, code))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(empty_project), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps(session),
        env=env,
        cwd=empty_project,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def check_url_offline(url: str) -> None:
    """Parse ``url`` and, where no server is needed for it, check its options."""
    scheme = parse_url(url).scheme
    if scheme in ("amqp", "amqps"):
        from asynctask.transports.amqp_names import parse_amqp_url

        parse_amqp_url(url)
    elif scheme in ("filesys", "file", "memory", "localmem"):
        get_transport(url).close()


@pytest.mark.parametrize("block", of("yaml"), ids=lambda b: b.where)
def test_yaml_examples_are_valid_configuration(block: Block, empty_project: Path) -> None:
    assert isinstance(yaml.safe_load(block.text), dict), block.where
    path = empty_project / "example.yaml"
    path.write_text(block.text)
    settings = load_settings([str(path)], environ={})
    if settings.transport:
        check_url_offline(settings.transport)


def commands(block: Block) -> list[list[str]]:
    """The ``$`` lines of a console block, split as a shell would, comments and ``[OPTIONAL...]``
    placeholders dropped."""
    found = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            words = shlex.split(line[2:], comments=True)
            found.append([word for word in words if not re.fullmatch(r"\[[A-Z.]+\]", word)])
    return found


def wheel_name() -> str:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    name, version = config["metadata"]["name"], config["metadata"]["version"]
    return f"{re.sub(r'[-_.]+', '_', name)}-{version}-py3-none-any.whl"


@pytest.mark.parametrize("block", of("console"), ids=lambda b: b.where)
def test_console_examples_run(block: Block, empty_project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (empty_project / "tasks.jsonl").write_text('{"to": "c@example.org"}\n{"to": "d@example.org"}\n')
    lines = commands(block)
    assert lines, block.where
    for words in lines:
        program, args = words[0], words[1:]
        if program == "asynctask":
            assert admin_main(args) == 0, (block.where, words, capsys.readouterr())
        elif program == "asynctask-workers":
            parsed = workers_parser().parse_args(args)
            for item in parsed.settings:
                parse_set_option(item)
        elif program == "pip":
            wheels = [word for word in args if ".whl" in word]
            assert all(Path(word.split("[")[0]).name == wheel_name() for word in wheels), (wheels, wheel_name())
        else:
            pytest.fail(f"{block.where}: no rule runs {program!r}: add one to this test")
