"""The Dockerfiles under images/, checked as text (no Docker engine runs here).

Every COPY source exists and is sent by the build context's allow-list, every base image
is pinned, the entrypoints are real ``qeval`` commands, the images run as a non-root user,
and the versions they pin agree with pyproject.toml, the Makefile and the operator.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from qeval.k8s.settings import OperatorSettings
from qeval.plan import Stage
from tests.conftest import ROOT

IMAGES = ROOT / "images"
NAMES = ("operator", "quantizer", "evaluator")
QEVAL = Path(sys.executable).parent / "qeval"
# Which pyproject extras each image installs (what its `pip install ".[...]"` line names).
EXTRAS = {"operator": {"operator"}, "quantizer": {"quantize", "operator"}}
EXTRAS["evaluator"] = {"evaluate", "serving", "similarity", "operator"}


@dataclass
class Dockerfile:
    """The instructions of one Dockerfile, continuation lines joined, ARG defaults applied."""

    path: Path
    instructions: list[tuple[str, str]] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> Dockerfile:
        df = cls(path)
        logical = ""
        for line in path.read_text().splitlines():
            if not logical and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.rstrip().endswith("\\"):
                logical += line.rstrip()[:-1] + " "
                continue
            logical += line
            keyword, _, rest = logical.strip().partition(" ")
            df.instructions.append((keyword.upper(), rest.strip()))
            if keyword.upper() == "ARG" and "=" in rest:
                name, _, default = rest.strip().partition("=")
                df.args[name] = default
            logical = ""
        return df

    def all(self, keyword: str) -> list[str]:
        return [rest for k, rest in self.instructions if k == keyword]

    def expand(self, text: str) -> str:
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: self.args[m[1] or m[2]], text)

    def stages(self) -> list[tuple[str, str | None]]:
        """(base image, stage name) per FROM."""
        out = []
        for rest in self.all("FROM"):
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            out.append((self.expand(words[0]), name))
        return out

    def exec_form(self, keyword: str) -> list[str]:
        (rest,) = self.all(keyword)[-1:] or [""]
        value = json.loads(rest) if rest else []
        assert isinstance(value, list), f"{self.path}: {keyword} must be in exec (JSON) form"
        return value


def dockerfile(name: str) -> Dockerfile:
    return Dockerfile.read(IMAGES / name / "Dockerfile")


def ignore_patterns(name: str) -> list[str]:
    path = IMAGES / name / "Dockerfile.dockerignore"
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def sent_to_the_build(path: str, patterns: list[str]) -> bool:
    """Whether the build context keeps ``path`` (dockerignore semantics: last match wins)."""
    keep = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes):
            keep = negate
    return keep


def copy_sources(df: Dockerfile) -> list[str]:
    """Sources of every COPY from the build context (not ``--from`` another stage)."""
    sources = []
    for rest in df.all("COPY"):
        words = shlex.split(rest)
        flags = [w for w in words if w.startswith("--")]
        if any(f.startswith("--from") for f in flags):
            continue
        paths = [w for w in words if not w.startswith("--")]
        sources += paths[:-1]
    return sources


def pins(name: str) -> dict[str, str]:
    """name -> exact version from the image's constraints.txt."""
    out = {}
    for line in (IMAGES / name / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{name}: {line} is not an exact pin"
            out[canonicalize_name(req.name)] = spec.version
    return out


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirements(extras: set[str]) -> list[Requirement]:
    project = pyproject()["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in sorted(extras):
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


# --- the build context ---------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_copy_source_exists_and_is_in_the_build_context(name: str) -> None:
    df, patterns = dockerfile(name), ignore_patterns(name)
    sources = copy_sources(df)
    assert sources, f"{name}: copies nothing from the repository"
    for source in sources:
        assert (ROOT / source).exists(), f"images/{name}/Dockerfile: COPY {source}: no such path"
        assert sent_to_the_build(source, patterns), (
            f"images/{name}/Dockerfile: COPY {source} is excluded by Dockerfile.dockerignore"
        )
    # The allow-list keeps the local virtualenv and runs out of the context.
    for heavy in (".venv", "qeval-runs", ".git"):
        assert not sent_to_the_build(heavy, patterns), f"{name}: {heavy} would be sent"
    assert not sent_to_the_build("operator/qeval/__pycache__/cli.pyc", patterns)


def test_the_build_context_pattern_matcher_follows_dockerignore_rules() -> None:
    patterns = ["*", "!operator", "**/__pycache__"]
    assert sent_to_the_build("operator/qeval/cli.py", patterns)
    assert not sent_to_the_build("operator/qeval/__pycache__/x.pyc", patterns)
    assert not sent_to_the_build("README.md", patterns)


# --- base images -----------------------------------------------------------------------------


def pinned(image: str) -> bool:
    """A digest, or a tag naming an exact release (major.minor.patch), never a moving one."""
    if re.search(r"@sha256:[0-9a-f]{64}$", image):
        return True
    _, _, tag = image.rpartition(":")
    return "/" not in tag and re.match(r"v?\d+\.\d+\.\d+", tag) is not None


@pytest.mark.parametrize("name", NAMES)
def test_base_images_are_pinned(name: str) -> None:
    df = dockerfile(name)
    stage_names = {stage for _, stage in df.stages() if stage}
    for image, _ in df.stages():
        if image in stage_names:
            continue
        assert pinned(image), f"images/{name}/Dockerfile: FROM {image} is not pinned"


def test_the_pin_check_refuses_moving_tags() -> None:
    assert not pinned("python:3.11-slim-bookworm")
    assert not pinned("vllm/vllm-openai:latest")
    assert not pinned("vllm/vllm-openai")
    assert pinned("vllm/vllm-openai:v0.33.0")
    assert pinned("python:3.11-slim@sha256:" + "a" * 64)


def test_the_evaluator_is_vllms_official_image_at_the_version_it_pins() -> None:
    ((base, _),) = dockerfile("evaluator").stages()
    repository, _, tag = base.partition("@")[0].rpartition(":")
    assert repository == "vllm/vllm-openai"
    assert tag == "v" + pins("evaluator")["vllm"]
    # What vLLM 0.33.0's wheel pins (TESTING.md): kept, never replaced by the install.
    assert pins("evaluator")["torch"] == "2.14.0"
    assert pins("evaluator")["compressed-tensors"] == "0.17.0"


def test_the_quantizer_and_the_operator_share_one_python_base() -> None:
    (op_build, _), (op_final, _) = dockerfile("operator").stages()
    (q_build, _), (q_final, _) = dockerfile("quantizer").stages()
    assert op_build == op_final == q_build == q_final  # the venv's python is the base's


# --- users and entrypoints ---------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_images_run_as_a_non_root_numeric_user(name: str) -> None:
    users = dockerfile(name).all("USER")
    assert users, f"{name}: no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    # Numeric, so the kubelet can enforce runAsNonRoot; the chart runs as this uid.
    assert uid.isdigit() and int(uid) != 0, f"{name}: USER {users[-1]}"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    if name == "operator":
        import yaml

        values = yaml.safe_load((ROOT / "charts/qeval-operator/values.yaml").read_text())
        assert values["podSecurityContext"]["runAsUser"] == int(uid)


@pytest.mark.parametrize("name", NAMES)
def test_entrypoints_are_real_qeval_commands(name: str) -> None:
    df = dockerfile(name)
    argv = df.exec_form("ENTRYPOINT") + df.exec_form("CMD")
    assert argv[0] == "qeval", f"{name}: ENTRYPOINT {argv}"
    args = argv[1:] if "--help" in argv else [*argv[1:], "--help"]
    done = subprocess.run([str(QEVAL), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{name}: `{shlex.join(argv)}`: {done.stderr}"


def test_stage_commands_are_served_by_the_image_the_operator_picks() -> None:
    """The Jobs' commands (``qeval <kind> ...``) run in the image ``build_job`` picks, and
    a model server's (``qeval serve``, which becomes ``vllm serve``) in the evaluator."""
    settings = OperatorSettings()
    for kind in (
        "quantize",
        "evaluate",
        "benchmark",
        "similarity",
        "aggregate",
        "demo-model",
        "serve",
    ):
        stage = Stage(name=f"{kind}-x", kind=kind, input={})
        argv = stage.argv("env:QEVAL_STAGE_INPUT", "/out/result.json")
        assert argv[:2] == ["qeval", kind]
        done = subprocess.run([str(QEVAL), kind, "--help"], capture_output=True, timeout=60)
        assert done.returncode == 0, f"qeval {kind} --help"
        image = "quantizer" if kind == "quantize" else "evaluator"
        default = settings.quantizer_image if kind == "quantize" else settings.evaluator_image
        assert default.rsplit(":", 1)[0].endswith(f"/{image}")
        df = dockerfile(image)
        # `qeval` is on the image's PATH: the venv's bin, or the base Python's (evaluator).
        path = " ".join(df.all("ENV"))
        assert "/opt/qeval/bin" in path or image == "evaluator"


# --- versions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_pinned_versions_meet_pyproject(name: str) -> None:
    pinned_versions = pins(name)
    for req in requirements(EXTRAS[name]):
        version = pinned_versions.get(canonicalize_name(req.name))
        if version is None:
            # Only the evaluator leaves some to its base (what vLLM already ships).
            assert name == "evaluator", f"images/{name}/constraints.txt does not pin {req.name}"
            continue
        assert req.specifier.contains(version, prereleases=True), (
            f"images/{name}/constraints.txt: {req.name}=={version} is outside "
            f"pyproject.toml's {req}"
        )


def test_each_image_installs_the_extras_the_tests_assume() -> None:
    for name, extras in EXTRAS.items():
        text = " ".join(dockerfile(name).all("RUN"))
        found = re.findall(r'\[([a-z,]+)\]"', text)
        assert found, f"{name}: no `pip install .[extras]`"
        assert set(found[-1].split(",")) == extras, f"{name}: installs [{found[-1]}]"


def test_torch_matches_the_makefile_and_the_pyproject_versions_match_the_chart() -> None:
    makefile = (ROOT / "Makefile").read_text()
    torch = re.search(r"^TORCH := torch==(\S+)", makefile, re.M)
    assert torch and pins("quantizer")["torch"] == torch[1]
    import yaml

    chart = yaml.safe_load((ROOT / "charts/qeval-operator/Chart.yaml").read_text())
    version = pyproject()["project"]["version"]
    assert chart["appVersion"] == version
    settings = OperatorSettings()
    assert settings.quantizer_image.endswith(f":{version}")
    assert settings.evaluator_image.endswith(f":{version}")
