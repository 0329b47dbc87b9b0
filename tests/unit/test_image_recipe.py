"""The image's two recipes agree: the Dockerfile (for container engines, and the
Tiltfile that builds it) and ``make image`` (``image/build.py``) install the same
package list and runtime lock into the same layout, for the same user, environment
and entry point, under the name the Deployment runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from image import build

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()
TILTFILE = (REPO / "Tiltfile").read_text()


def _instructions(text: str) -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), " ".join(line.split(None, 1)[1].split()))
            for line in joined.splitlines() if line.strip()]


def _final_stage() -> list[tuple[str, str]]:
    steps = _instructions(DOCKERFILE)
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


# --- the Dockerfile and make image ----------------------------------------------------


def test_the_dockerfile_pins_a_debian_base_of_the_same_release_by_digest() -> None:
    (arg,) = [value for op, value in _instructions(DOCKERFILE) if op == "ARG"]
    assert re.fullmatch(rf"BASE=debian:{build.SUITE}-slim@sha256:[0-9a-f]{{64}}", arg), arg
    froms = [value for op, value in _instructions(DOCKERFILE) if op == "FROM"]
    assert froms == ["${BASE} AS build", "${BASE}"]


def test_both_install_the_one_package_list_and_the_runtime_lock() -> None:
    steps = _instructions(DOCKERFILE)
    copies = [value for op, value in steps if op == "COPY"]
    assert copies.count("image/debian-packages /tmp/debian-packages") == 2  # both stages
    package_installs = [value for op, value in steps if op == "RUN" and "xargs apt-get install" in value]
    assert len(package_installs) == 2
    for value in package_installs:
        assert "sed -e 's/#.*//' /tmp/debian-packages | xargs apt-get install -y " \
               "--no-install-recommends" in value
    # The list is read the same way by make image: names, with comments dropped.
    listed = [re.sub(r"#.*", "", line).strip() for line in build.PACKAGE_LIST.read_text().splitlines()]
    assert [name for name in listed if name] == build.roots()

    (pip,) = [value for op, value in steps if op == "RUN" and "requirements-runtime.lock" in value]
    assert "--no-deps --require-hashes --only-binary=:all: -r requirements-runtime.lock" in pip
    assert build.RUNTIME_LOCK.name == "requirements-runtime.lock"
    assert "requirements.lock" not in DOCKERFILE.replace("requirements-runtime.lock", "")


def test_both_images_have_the_same_layout_user_environment_and_entry_point() -> None:
    final = _final_stage()
    (copy,) = [value for op, value in final if op == "COPY" and "--from=build" in value]
    assert copy == f"--from=build {build.PREFIX} {build.PREFIX}"
    assert f"python3 -m venv --without-pip {build.PREFIX}" in DOCKERFILE
    (user,) = [value for op, value in final if op == "USER"]
    assert user == f"{build.UID}:{build.UID}"
    run = " ".join(value for op, value in final if op == "RUN")
    assert f"useradd --uid {build.UID} --gid {build.UID}" in run
    assert f"groupadd --gid {build.UID} {build.USER}" in run
    (entrypoint,) = [value for op, value in final if op == "ENTRYPOINT"]
    assert json.loads(entrypoint) == build.ENTRYPOINT
    (env,) = [value for op, value in final if op == "ENV"]
    assert dict(pair.split("=", 1) for pair in env.split()) == build.ENV
    (label,) = [value for op, value in final if op == "LABEL"]
    labels = dict(re.findall(r'(\S+)="([^"]*)"', label))
    assert labels == build.LABELS


def test_the_image_is_what_the_deployment_runs() -> None:
    deployment = next(d for d in yaml.safe_load_all((REPO / "manifests/deployment.yaml").read_text())
                      if d and d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == build.TAG
    assert f"docker build -t {build.TAG} ." in DOCKERFILE


def _copied() -> set[str]:
    """What the Dockerfile copies from the build context."""
    return {source for op, value in _instructions(DOCKERFILE) if op == "COPY"
            and not value.startswith("--from") for source in value.split()[:-1]}


def test_the_build_context_is_what_the_dockerfile_copies() -> None:
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    assert {line[1:] for line in lines if line.startswith("!")} == _copied()


# --- the Tiltfile -----------------------------------------------------------------------


def test_the_tiltfile_builds_the_dockerfile_with_every_file_it_copies() -> None:
    match = re.search(r"docker_build\('([^']+)', '\.', dockerfile='Dockerfile',\s*only=\[([^\]]*)\]",
                      TILTFILE)
    assert match, "docker_build of the Dockerfile"
    assert match.group(1) == build.TAG
    only = set(re.findall(r"'([^']+)'", match.group(2)))
    assert only == _copied()


def test_the_tiltfile_applies_the_manifests_and_the_readmes_token_step() -> None:
    assert "k8s_yaml(kustomize('manifests'))" in TILTFILE
    token = TILTFILE.split("local_resource(", 1)[1].split("resource_deps", 1)[0]
    command = "".join(re.findall(r"'([^']*)'", token))
    readme = " ".join(re.sub(r"\\\n", " ", (REPO / "README.md").read_text()).split())
    create = re.search(r"kubectl -n firebreak-system create secret generic \S+ --from-literal=\S+ \S+ "
                       r"\S+ \S+ \| base64\)\"", command)
    assert create, command
    assert create.group(0) in readme


