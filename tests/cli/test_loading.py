"""``MODULE:CLASS`` on the command line: a module, or a path to a .py file; errors say what was expected."""

from __future__ import annotations

import sys

import pytest

from trioschedule import Worker
from trioschedule.cli._loading import load_object


def test_an_importable_module():
    assert load_object("trioschedule:Worker") is Worker


def test_a_path_to_a_file_and_its_directory_becomes_importable(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    (tmp_path / "helper_for_cli_loading.py").write_text("VALUE = 42\n")
    (tmp_path / "jobs_for_cli_loading.py").write_text("from helper_for_cli_loading import VALUE\nclass Jobs:\n    x = VALUE\n")
    jobs = load_object(f"{tmp_path / 'jobs_for_cli_loading.py'}:Jobs")
    assert jobs.x == 42 and jobs.__module__ == "jobs_for_cli_loading"


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [("trioschedule", "expected MODULE:CLASS"), ("trioschedule:", "expected MODULE:CLASS"),
     (":Worker", "expected MODULE:CLASS"), ("trioschedule:NoSuchThing", "has no attribute 'NoSuchThing'"),
     ("no_such_dir/tasks.py:W", "no such file: no_such_dir/tasks.py")],
)  # fmt: skip
def test_what_was_wrong_and_what_was_expected(spec, complaint):
    with pytest.raises(ValueError, match=complaint):
        load_object(spec)
