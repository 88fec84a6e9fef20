"""Packaging for Dataflow (issue 11 point 9, issue 8 point 9), checked offline as far as it can be.

* The ``gcp`` extra resolves together with the pinned TensorFlow (``pip install --dry-run``; needs the package
  index, skipped with the reason when it cannot be reached within 5 s).
* Beam's own stager, with the options docs/dataflow.md gives (``--setup_file ./pyproject.toml``), builds the
  package that Dataflow workers install; the staged sdist builds a wheel holding every package the workers import,
  and those packages import from that wheel alone.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.request
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER_PACKAGES = ("affectstream", "beam_jobs", "tfrecords_schema", "trainer")
# What a Dataflow worker imports to run the conversion (its DoFns and the adapters they call).
WORKER_MODULES = ("beam_jobs.convert", "beam_jobs.pipeline.transforms", "beam_jobs.sources", "tfrecords_schema.locks",
                  "tfrecords_schema.transaction")
# The flags docs/dataflow.md gives for route (a); the stager reads only the setup ones.
DATAFLOW_FLAGS = ["--runner", "DataflowRunner", "--project", "MY_PROJECT", "--region", "europe-west1",
                  "--temp_location", "gs://MY_BUCKET/tmp", "--staging_location", "gs://MY_BUCKET/staging",
                  "--setup_file", "./pyproject.toml"]


def load_pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pip vendors the same parser.
        from pip._vendor import tomli as tomllib
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def index_unreachable_reason(timeout_s: float = 5.0) -> str | None:
    """None when the package index answers within ``timeout_s``, else why not (the skip reason)."""
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/").rstrip("/")
    try:
        with urllib.request.urlopen(f"{index}/pip/", timeout=timeout_s) as response:
            response.read(1)
    except OSError as e:
        return f"package index {index} not reachable within {timeout_s:.0f} s ({type(e).__name__}: {e})"
    return None


def pin_of(requirements: list[str], name: str) -> str:
    """The version spec that ``requirements`` give ``name`` (e.g. ``"==2.17.1"``)."""
    for req in requirements:
        m = re.match(rf"^{re.escape(name)}\s*([=<>!~][^;\s]*)", req)
        if m:
            return m.group(1)
    raise AssertionError(f"{name} is not in {requirements}")


def requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_gcp_extra_resolves_with_the_pinned_tensorflow(tmp_path):
    reason = index_unreachable_reason()
    if reason:
        pytest.skip(reason)
    project = load_pyproject()["project"]
    gcp = project["optional-dependencies"]["gcp"]
    # The project's metadata only (pyproject.toml + README.md): what `pip install -e ".[gcp]"` resolves.
    copy = tmp_path / "project"
    copy.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), copy / name)
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report",
         str(report), f"{copy}[gcp]"],
        capture_output=True, text=True, timeout=900, check=False,
    )
    assert done.returncode == 0, f"`pip install .[gcp]` does not resolve:\n{(done.stdout + done.stderr)[-4000:]}"
    chosen = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
              for i in json.loads(report.read_text())["install"]}
    assert "==" + chosen["tensorflow"] == pin_of(project["dependencies"], "tensorflow")
    assert chosen["apache-beam"].startswith(pin_of(project["dependencies"], "apache-beam").strip("=*"))
    assert int(chosen["protobuf"].split(".")[0]) < 5  # TensorFlow 2.17's bound: the conflict of issue 11.
    missing = [r for r in gcp if requirement_name(r) not in chosen]
    assert not missing, f"gcp requirements not in the resolved set: {missing}"
    # What DataflowRunner and gs:// I/O import (apache_beam/runners/dataflow, apache_beam/io/gcp/gcsio.py).
    for needed in ("google-cloud-storage", "google-cloud-dataflow-client", "google-apitools", "google-auth"):
        assert needed in chosen, f"{needed} missing from the gcp extra's resolution"


SUPPORTED_PYTHONS = ("3.10", "3.11", "3.12")  # README "Python versions"; `make` picks the newest that runs.


@pytest.mark.parametrize("python", SUPPORTED_PYTHONS)
def test_requirements_and_test_extra_resolve_on_every_supported_python(python):
    """`make env` installs the dependencies and the test extra on each supported Python: scikit-image 0.26 requires
    3.11, so a single pin made `make env` (and hence `make demo`) fail on 3.10. Wheels only: pip's --python-version
    cannot build an sdist for another interpreter."""
    reason = index_unreachable_reason()
    if reason:
        pytest.skip(reason)
    from packaging.requirements import Requirement

    project = load_pyproject()["project"]
    assert Requirement(f"x{project['requires-python']}").specifier.contains(f"{python}.0")
    marker_env = {"python_version": python, "python_full_version": f"{python}.0", "extra": "test"}
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    # Markers evaluated for the target Python here: pip would evaluate them for the one running it.
    wanted = [str(r).split(";")[0].strip() for r in reqs if r.marker is None or r.marker.evaluate(marker_env)]
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--only-binary=:all:",
         "--python-version", python, *wanted],
        capture_output=True, text=True, timeout=900, check=False,
    )
    said = (done.stdout + done.stderr)[-4000:]
    assert done.returncode == 0, f"Python {python}: the requirements do not resolve:\n{said}"


def _build_module_missing_reason() -> str | None:
    try:
        import build  # noqa: F401
        import setuptools
    except ImportError as e:
        return f"Beam's --setup_file path runs `python -m build --no-isolation`: {e} (install the test extra)"
    if int(setuptools.__version__.split(".")[0]) < 68:
        return f"setuptools {setuptools.__version__} < 68, the build-system requirement (install the test extra)"
    return None


def test_dataflow_stager_builds_a_package_holding_every_worker_package(tmp_path, monkeypatch):
    reason = _build_module_missing_reason()
    if reason:
        pytest.skip(reason)
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.stager import Stager

    class FolderStager(Stager):
        """The two methods every Stager implements; copies into a local folder as Dataflow's copies to GCS."""

        def stage_artifact(self, local_path_to_artifact, artifact_name, sha256):
            shutil.copyfile(local_path_to_artifact, artifact_name)

        def commit_manifest(self):
            return "local-manifest"

    staging = tmp_path / "staging"
    staging.mkdir()
    monkeypatch.chdir(REPO)  # As the guide runs it: from the repository root, --setup_file ./pyproject.toml.
    _, staged = FolderStager().create_and_stage_job_resources(
        PipelineOptions(DATAFLOW_FLAGS), temp_dir=str(tmp_path / "stager-tmp"), staging_location=str(staging))
    assert "workflow.tar.gz" in staged, staged
    sdist = staging / "workflow.tar.gz"
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: no path outside the target.
            tar.extractall(tmp_path / "sdist", filter="data")
        else:
            tar.extractall(tmp_path / "sdist")
    for package in WORKER_PACKAGES:
        assert any(n.endswith(f"/{package}/__init__.py") for n in names), f"{package} not in the staged sdist"

    # A worker runs `pip install workflow.tar.gz`: the sdist must build a wheel with every package in it.
    (root,) = (tmp_path / "sdist").iterdir()
    wheels = tmp_path / "wheels"
    done = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(wheels),
                           str(root)], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        in_wheel = set(z.namelist())
    for package in WORKER_PACKAGES:
        assert f"{package}/__init__.py" in in_wheel, f"{package} not in {wheel.name}"
    assert "beam_jobs/sources/__init__.py" in in_wheel  # Subpackages too, not only the top level.

    # The worker packages import from the unpacked wheel alone (not from this checkout).
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    probe = ("import importlib, json, sys; "
             f"mods = [importlib.import_module(m) for m in {WORKER_MODULES!r}]; "
             "print(json.dumps([m.__file__ for m in mods]))")
    env = {**os.environ, "PYTHONPATH": str(site), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=str(tmp_path), env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    files = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(f.startswith(str(site)) for f in files), files
