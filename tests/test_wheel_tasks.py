"""The installed package alone serves its lmms-eval tasks (llava/eval/tasks: tiny_ov, flash_events).

A wheel is built from this checkout's sources (``pip wheel --no-deps``) and installed into a fresh
virtual environment outside the checkout; from a working directory outside the checkout, lmms-eval's
TaskManager finds the tasks in that environment's site-packages, lists their docs and renders media
through the tasks' utils (``!function utils.doc_to_visual``), as ``lmms_eval --include_path`` does.

Why: the tasks' media generators once lived in ``playground/``, which only a checkout has, so an
installed package failed on its own tasks. What makes the check honest: the fresh environment is
made by ``python -m venv`` from the base interpreter (which has no project), and reuses the heavy
packages (torch, transformers, lmms-eval) through a ``.pth`` line naming a folder of links to the
development environment's site-packages, **except** this project's entries (its editable finder,
``.pth`` and dist-info); that line is in place before the wheel is installed, so pip sees no
project installed. ``llava`` and ``cv_reader`` can therefore only come from the wheel, which the
child process checks (their ``__file__``, and no ``sys.path`` entry inside the checkout).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from task_helpers import import_by_path

REPO = Path(__file__).resolve().parents[1]
#: What the build reads: the project file, its readme and the two packages (pyproject.toml's find rules).
SOURCES = ("pyproject.toml", "README.md", "llava", "Compressed_Video_Reader/cv_reader")
#: Entries of the development site-packages that belong to this project (lowercase prefixes): hidden.
#: The editable install is a .pth file, a finder module and the dist-info; a plain install, the packages.
PROJECT_ENTRIES = ("llava", "cv_reader", "__editable__")

CHECK = r"""
import json, sys
from pathlib import Path

repo, site = Path(sys.argv[1]), Path(sys.argv[2])
import cv_reader, llava
report = {"llava": llava.__file__, "cv_reader": cv_reader.__file__,
          "checkout_on_path": [p for p in sys.path if p and Path(p).resolve().is_relative_to(repo)]}
from lmms_eval.tasks import TaskManager, get_task_dict

tasks_dir = Path(llava.__file__).parent / "eval" / "tasks"
manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
report["yaml"] = {name: manager.task_index[name]["yaml_path"] for name in
                  ("tiny_ov_image_mc", "tiny_ov_video_mc", "flash_events_colour")}
docs, tasks = {}, {}
for group in ("tiny_ov", "flash_events"):
    ((_, subtasks),) = get_task_dict([group], manager).items()
    for name, task in subtasks.items():
        docs[name] = [doc["id"] for doc in task.test_docs()]
        tasks[name] = task
report["docs"] = docs
first = {name: tasks[name].test_docs()[0] for name in ("tiny_ov_image_mc", "tiny_ov_video_mc",
                                                        "flash_events_colour")}
(image,) = tasks["tiny_ov_image_mc"].doc_to_visual(first["tiny_ov_image_mc"])
report["image"] = [image.mode, list(image.size)]
report["videos"] = {name: tasks[name].doc_to_visual(first[name])[0]
                    for name in ("tiny_ov_video_mc", "flash_events_colour")}
report["modules"] = sorted({m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)
                            and m.__name__.split(".")[0] in ("llava", "cv_reader")})
print("REPORT " + json.dumps(report))
"""


def _run(argv, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300,
                            check=False, **kwargs)
    assert result.returncode == 0, f"{argv}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _is_project_entry(name: str) -> bool:
    """``llava*`` covers the dist-info (``llava_ov_encoder-0.1.0.dist-info``) as well."""
    return name.lower().startswith(PROJECT_ENTRIES)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(python of the fresh environment, its site-packages, a working directory outside the checkout)``."""
    base = tmp_path_factory.mktemp("wheel")
    assert not base.resolve().is_relative_to(REPO)
    # The build reads a copy of the sources, so it writes nothing (build/, *.egg-info) into the checkout.
    src = base / "src"
    for name in SOURCES:
        source, target = REPO / name, src / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
            shutil.copytree(source, target, ignore=ignore)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    dist = base / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", dist, src])
    (wheel,) = dist.glob("llava_ov_encoder-*.whl")

    # A fresh environment from the base interpreter; the development packages minus this project.
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(_run([python, "-c", purelib]).stdout.strip())
    links = base / "dev-site-packages"
    links.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        # .pth files are left out too: a folder named by a .pth line is not scanned for them anyway.
        if not (_is_project_entry(entry.name) or entry.suffix == ".pth"):
            (links / entry.name).symlink_to(entry)
    (site / "dev_packages.pth").write_text(f"{links}\n", encoding="utf-8")
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--no-compile", "-q", wheel])
    work = base / "work"
    work.mkdir()
    return python, site, work


def test_installed_wheel_lists_the_tasks_docs_and_renders_their_media(installed, tmp_path):
    python, site, work = installed
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               LMMS_EVAL_DATASETS_CACHE=str(tmp_path / "datasets"), TINY_OV_MEDIA=str(tmp_path / "tiny_ov"),
               FLASH_EVENTS_MEDIA=str(tmp_path / "flash_events"))
    result = _run([python, "-c", CHECK, REPO, site], cwd=work, env=env)
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    report = json.loads(line[len("REPORT "):])

    # The project's modules came from the wheel only.
    assert Path(report["llava"]) == site / "llava" / "__init__.py"
    assert Path(report["cv_reader"]) == site / "cv_reader" / "__init__.py"
    assert report["checkout_on_path"] == []
    assert report["modules"] and all(Path(path).is_relative_to(site) for path in report["modules"])
    for name, yaml_path in report["yaml"].items():
        assert Path(yaml_path).is_relative_to(site / "llava" / "eval" / "tasks"), name

    # The docs are the tasks' data.jsonl, split by task.
    expected = {}
    for folder in ("tiny_ov", "flash_events"):
        for line in (REPO / "llava" / "eval" / "tasks" / folder / "data.jsonl").read_text().splitlines():
            doc = json.loads(line)
            task = doc["task"] if folder == "tiny_ov" else f"flash_events_{doc['task']}"
            expected.setdefault(task, []).append(doc["id"])
    assert report["docs"] == expected and len(report["docs"]) == 5

    # Media rendered into the caches, the same bytes this checkout renders for the same docs.
    assert report["image"] == ["RGB", [64, 64]]
    checkout = _render_in_checkout(tmp_path / "checkout-media")
    for name, path in report["videos"].items():
        path = Path(path)
        assert path.is_file() and path.parent.parent == tmp_path, name
        mine = checkout[name]
        assert path.name == mine.name, name  # the cache key hashes the generator's sources: they match
        assert path.read_bytes() == mine.read_bytes(), name


def _render_in_checkout(media: Path) -> dict[str, Path]:
    """The first video doc of each task rendered by this checkout's task utils (by path, as lmms-eval)."""
    out = {}
    with pytest.MonkeyPatch.context() as patch:
        for folder, variable, task, kind in (
            ("tiny_ov", "TINY_OV_MEDIA", "tiny_ov_video_mc", "tiny_ov_video_mc"),
            ("flash_events", "FLASH_EVENTS_MEDIA", "flash_events_colour", "colour"),
        ):
            patch.setenv(variable, str(media / folder))
            path = REPO / "llava" / "eval" / "tasks" / folder / "utils.py"
            utils = import_by_path(path, f"_wheel_test_{folder}_utils")
            lines = (path.parent / "data.jsonl").read_text().splitlines()
            doc = next(d for d in map(json.loads, lines) if d["task"] == kind)
            (video,) = utils.doc_to_visual(doc)
            out[task] = Path(video)
    return out
