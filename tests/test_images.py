"""The Dockerfiles under images/, checked as text (no Docker engine runs here).

Every COPY source exists and is sent by the build context's allow-list, every base image
is pinned, the entrypoints are real ``qeval`` commands, the images run as a non-root user,
the images that run torch on CUDA carry a C compiler for Triton, and the versions they pin
agree with pyproject.toml, lm-eval's extras, the Makefile and the operator. The tests marked
``network`` resolve each image's pip install against PyPI as a dry run.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from qeval.api.common import Scheduling
from qeval.k8s.manifests import image as stage_image
from qeval.k8s.settings import OperatorSettings
from qeval.plan import Stage
from tests.conftest import ROOT

IMAGES = ROOT / "images"
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")  # as each Dockerfile.dockerignore
NAMES = ("operator", "quantizer", "evaluator", "client")
QEVAL = Path(sys.executable).parent / "qeval"
# Which pyproject extras each image installs (what its `pip install ".[...]"` line names).
EXTRAS = {"operator": {"operator"}, "quantizer": {"quantize", "operator"}}
EXTRAS["evaluator"] = {"evaluate", "serving", "similarity", "operator"}
EXTRAS["client"] = {"evaluate", "serving", "similarity", "operator"}


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

    def final_stage(self) -> list[tuple[str, str]]:
        """The instructions after the last FROM: what the image that runs is made of."""
        starts = [i for i, (k, _) in enumerate(self.instructions) if k == "FROM"]
        return self.instructions[starts[-1] + 1 :]

    def exec_form(self, keyword: str) -> list[str]:
        (rest,) = self.all(keyword)[-1:] or [""]
        value = json.loads(rest) if rest else []
        assert isinstance(value, list), f"{self.path}: {keyword} must be in exec (JSON) form"
        return value


def commands(run: str) -> list[list[str]]:
    """The words of each shell command in a RUN line (split at &&, ||, ; and |, not in quotes)."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    out: list[list[str]] = [[]]
    for word in lexer:
        if word in ("&&", "||", ";", "|"):
            out.append([])
        else:
            out[-1].append(word)
    return [words for words in out if words]


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


def test_the_python_images_share_one_python_base() -> None:
    bases = {
        image
        for name in ("operator", "quantizer", "client")
        for image, _ in dockerfile(name).stages()
    }
    assert len(bases) == 1, bases  # each venv's python is its base's, built and run alike


# --- a C compiler for Triton -------------------------------------------------------------------

# CUDA PyTorch brings Triton, which compiles a small C launcher (a Python extension: C
# compiler, libc headers) the first time it runs a kernel, and raises "Failed to find C
# compiler" without one. No base image's compiler is taken on trust: vLLM's Dockerfile
# (docker/Dockerfile, read in its recent releases) builds the runtime stage of
# vllm/vllm-openai FROM nvidia/cuda:<version>-base-ubuntu<version> with apt's
# --no-install-recommends and no gcc in its package list (its gcc is in the build stages),
# so the evaluator installs one like the quantizer does.
COMPILERS = {"gcc", "clang", "build-essential"}
C_HEADERS = {"libc6-dev", "build-essential"}  # gcc only recommends libc6-dev


def apt_installs(instructions: list[tuple[str, str]]) -> list[tuple[set[str], str]]:
    """(Debian packages named, the whole RUN) per ``apt-get install`` in these instructions."""
    out = []
    for keyword, rest in instructions:
        if keyword != "RUN":
            continue
        for words in commands(rest):
            if words[:2] in (["apt-get", "install"], ["apt", "install"]):
                packages = {w.split("=")[0] for w in words[2:] if not w.startswith("-")}
                out.append((packages, rest))
    return out


def has_a_c_compiler(df: Dockerfile) -> bool:
    """Whether the final stage installs a C compiler and the C library's headers."""
    packages = set().union(*(p for p, _ in apt_installs(df.final_stage())))
    return bool(packages & COMPILERS) and bool(packages & C_HEADERS)


def installs_cpu_torch(df: Dockerfile) -> bool:
    """torch installed from PyTorch's CPU index (not PyPI's Linux wheel, the CUDA build)."""
    for run in df.all("RUN"):
        words = shlex.split(df.expand(run))
        if "torch" in words and "--index-url" in words:
            return words[words.index("--index-url") + 1].rstrip("/").endswith("/cpu")
    return False


def runs_torch_on_cuda(name: str) -> bool:
    df = dockerfile(name)
    if any(image.startswith("vllm/vllm-openai") for image, _ in df.stages()):
        return True  # vLLM's image is a CUDA build by construction
    return "torch" in pins(name) and not installs_cpu_torch(df)


def test_the_images_that_run_torch_on_cuda_are_the_quantizer_and_the_evaluator() -> None:
    assert {name for name in NAMES if runs_torch_on_cuda(name)} == {"quantizer", "evaluator"}
    assert installs_cpu_torch(dockerfile("client"))  # the client's torch is the CPU build


@pytest.mark.parametrize("name", [n for n in NAMES if runs_torch_on_cuda(n)])
def test_images_that_run_torch_on_cuda_have_a_c_compiler_in_their_final_stage(name: str) -> None:
    df = dockerfile(name)
    assert has_a_c_compiler(df), (
        f"images/{name}/Dockerfile: torch runs on CUDA there, and Triton needs a C compiler "
        "and libc headers in the final stage: apt-get install --no-install-recommends gcc "
        "libc6-dev"
    )
    for packages, run in apt_installs(df.final_stage()):
        assert "--no-install-recommends" in run, f"{name}: apt-get install {sorted(packages)}"
        assert "rm -rf /var/lib/apt/lists" in run, f"{name}: apt lists left in the layer"


def test_the_compiler_check_counts_only_the_final_stage(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"

    def check(text: str) -> bool:
        path.write_text(text)
        return has_a_c_compiler(Dockerfile.read(path))

    install = "RUN apt-get update && apt-get install -y --no-install-recommends {}\n"
    assert check("FROM a AS build\n" + install.format("gcc libc6-dev") + "FROM a\n") is False
    assert check("FROM a\n" + install.format("gcc")) is False  # no stdlib.h without libc6-dev
    assert check("FROM a\n" + install.format("python3-dev")) is False
    assert check("FROM a AS build\nFROM a\n" + install.format("gcc=4:12.2.0-3 libc6-dev"))
    assert check("FROM a\n" + install.format("build-essential"))


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
    """The Jobs' commands (``qeval <kind> ...``) run in the image the operator picks: GPU
    work and model servers (``qeval serve`` becomes ``vllm serve``) in the evaluator, the
    stages without GPUs in the client, quantize in the quantizer."""
    settings = OperatorSettings()
    version = pyproject()["project"]["version"]
    by_reference = {f"ghcr.io/qeval/{name}:{version}": name for name in NAMES}
    gpu = Scheduling(gpus=1)
    expected = [
        ("quantize", gpu, "quantizer"),
        ("evaluate", gpu, "evaluator"),
        ("serve", gpu, "evaluator"),
        ("evaluate", None, "client"),
        ("benchmark", None, "client"),
        ("similarity", None, "client"),
        ("aggregate", None, "client"),
        ("demo-model", None, "client"),
    ]
    for kind, scheduling, name in expected:
        stage = Stage(name=f"{kind}-x", kind=kind, input={}, scheduling=scheduling)
        argv = stage.argv("env:QEVAL_STAGE_INPUT", "/out/result.json")
        assert argv[:2] == ["qeval", kind]
        done = subprocess.run([str(QEVAL), kind, "--help"], capture_output=True, timeout=60)
        assert done.returncode == 0, f"qeval {kind} --help"
        picked = stage_image(stage, settings)
        assert by_reference.get(picked) == name, f"{kind}: {picked}"
        df = dockerfile(name)
        # `qeval` is on the image's PATH: the venv's bin, or the base Python's (evaluator).
        path = " ".join(df.all("ENV"))
        assert "/opt/qeval/bin" in path or name == "evaluator"
        # A stage given GPUs lands where torch runs on CUDA; one without them never pulls
        # the CUDA images.
        assert runs_torch_on_cuda(name) == (scheduling is not None)


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
    assert torch and pins("quantizer")["torch"] == pins("client")["torch"] == torch[1]
    import yaml

    chart = yaml.safe_load((ROOT / "charts/qeval-operator/Chart.yaml").read_text())
    version = pyproject()["project"]["version"]
    assert chart["appVersion"] == version
    settings = OperatorSettings()
    for reference in (settings.quantizer_image, settings.evaluator_image, settings.client_image):
        assert reference.endswith(f":{version}"), reference


def test_the_makefile_builds_every_image() -> None:
    makefile = (ROOT / "Makefile").read_text()
    loop = re.search(r"^\s*for image in ([\w ]+); do", makefile, re.M)
    assert loop and set(loop[1].split()) == set(NAMES) == {p.name for p in IMAGES.iterdir()}


def lm_eval_extras() -> set[str]:
    """lm-eval's extras that pyproject's ``evaluate`` extra names."""
    (req,) = [r for r in requirements({"evaluate"}) if canonicalize_name(r.name) == "lm-eval"]
    return set(req.extras)


def extra_requirements(distribution: str, extras: set[str]) -> list[Requirement]:
    """What ``distribution``'s installed metadata requires for these extras only."""
    out = []
    for text in importlib.metadata.requires(distribution) or []:
        req = Requirement(text)
        if req.marker and any(req.marker.evaluate({"extra": extra}) for extra in extras):
            out.append(req)
    return out


def test_evaluate_names_the_lm_eval_extras_the_suites_and_backends_need() -> None:
    # api: local-completions (vllm-server); hf: accelerate (backend hf); ifeval:
    # leaderboard_ifeval; math: leaderboard_math_hard (tests/test_suite_tasks.py loads them).
    assert {"api", "hf", "ifeval", "math"} <= lm_eval_extras()


@pytest.mark.parametrize("name", [n for n in NAMES if "evaluate" in EXTRAS[n]])
def test_every_requirement_of_lm_evals_extras_is_pinned(name: str) -> None:
    pinned = pins(name)
    assert importlib.metadata.version("lm-eval") == pinned["lm-eval"]  # the metadata read here
    reqs = extra_requirements("lm-eval", lm_eval_extras())
    assert {canonicalize_name(r.name) for r in reqs} >= {"langdetect", "math-verify", "accelerate"}
    for req in reqs:
        version = pinned.get(canonicalize_name(req.name))
        assert version, f"images/{name}/constraints.txt does not pin {req.name} ({req})"
        assert req.specifier.contains(version, prereleases=True), f"{name}: {req} vs {version}"


# --- resolution against PyPI (network) ----------------------------------------------------------

# Options of `pip install` that take a value (the rest of the words are requirements).
PIP_VALUE_OPTIONS = {"-c", "--constraint", "-i", "--index-url", "--extra-index-url"}


def pip_installs(df: Dockerfile) -> list[list[str]]:
    """The words after ``pip install``, per pip install the Dockerfile runs."""
    out = []
    for run in df.all("RUN"):
        for words in commands(df.expand(run)):
            for i, word in enumerate(words[:-1]):
                if word.endswith("pip") and words[i + 1] == "install":
                    out.append(words[i + 2 :])
    return out


def image_requirements(name: str, source: Path) -> list[str]:
    """What the image's pip installs amount to, with the package's path replaced by
    ``source`` (a copy of what its COPY lines send) and the base image's vLLM added."""
    reqs = [f"vllm=={pins(name)['vllm']}"] if name == "evaluator" else []
    for args in pip_installs(dockerfile(name)):
        assert "--constraint" in args or "-c" in args, f"{name}: pip install {args} unconstrained"
        skip = False
        for word in args:
            if skip or word.startswith("-"):
                skip = word in PIP_VALUE_OPTIONS and not skip
                continue
            reqs.append(re.sub(r"^[./][^\[]*", str(source), word) if word[0] in "./" else word)
    return reqs


def test_the_pip_install_parser_reads_each_install(tmp_path: Path) -> None:
    reqs = image_requirements("client", tmp_path)
    assert reqs == ["torch", f"{tmp_path}[evaluate,serving,similarity,operator]"]
    assert image_requirements("evaluator", tmp_path)[0] == "vllm==0.33.0"


@pytest.mark.network
@pytest.mark.parametrize("name", NAMES)
def test_each_images_pip_install_resolves_on_pypi_to_its_pins(name: str, tmp_path: Path) -> None:
    """``pip install --dry-run --report`` of what the Dockerfile installs, under its
    constraints, against PyPI: it must resolve, and every pin must be what it installs.

    Only metadata is fetched (PyPI's PEP 658 files, or HTTP range requests into each wheel
    with fast-deps where an index lacks them; measured here: the evaluator's 262 packages
    in about 75 s and ~0.1 GB instead of ~5 GB of wheels). The client's torch comes from
    PyTorch's CPU index, which CI cannot reach: PyPI's torch of the same version (the CUDA
    build: the same requirements plus nvidia-* wheels the client never gets) stands in.
    The evaluator resolves beside vllm==0.33.0 as its base has it, on this Python (its
    base's is 3.12: markers for 3.12 are not evaluated). Offline this fails, never skips.
    """
    source = tmp_path / "src"
    shutil.copytree(ROOT / "operator", source / "operator", ignore=IGNORE)
    for part in ("pyproject.toml", "README.md"):  # with operator/: what the COPY lines send
        shutil.copy(ROOT / part, source / part)
    report = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
        "--use-feature=fast-deps", "--report", str(report), "--cache-dir", str(tmp_path / "cache"),
        "--constraint", str(IMAGES / name / "constraints.txt"),
        *image_requirements(name, source),
    ]  # fmt: skip
    # PyPI only: not a machine's local wheel directory (PIP_FIND_LINKS).
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_FIND_LINKS", "PIP_NO_INDEX")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, f"images/{name}: pip cannot resolve:\n{done.stderr[-4000:]}"
    installed = {
        canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    wrong = {
        pkg: (version, installed.get(pkg))
        for pkg, version in pins(name).items()
        if installed.get(pkg) != version
    }
    assert not wrong, (
        f"images/{name}/constraints.txt: pinned vs resolved (None: not installed): {wrong}"
    )
    assert installed["qeval"] == pyproject()["project"]["version"]
