"""`ansible-galaxy collection build` ships the content, not the tests or the lab,
and the built collection installs and runs where only its dependencies are."""

import os
import subprocess
import tarfile
from pathlib import Path

import ansible_collections
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOT_SHIPPED = (
    "molecule/",
    "tests/",
    "files/lab-image/",
    "inventories/lab/",
    "scripts/",
    ".ci/",
    ".config/",
    "service/tests/",
    "playbooks/lab-",
)


def test_build_excludes_tests_molecule_and_lab(tmp_path):
    subprocess.run(
        ["ansible-galaxy", "collection", "build", "--output-path", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (tarball,) = tmp_path.glob("paycore-platform-*.tar.gz")
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
    assert "galaxy.yml" not in names  # replaced by MANIFEST.json
    assert "MANIFEST.json" in names
    assert any(name.startswith("roles/common/") for name in names)
    shipped_by_mistake = [n for n in names if n.startswith(NOT_SHIPPED)]
    assert not shipped_by_mistake, shipped_by_mistake


def test_the_built_collection_installs_and_its_site_playbook_parses(tmp_path):
    """Installed as a user would (its dependencies resolved offline against the
    collections the pinned `ansible` package ships), from an empty directory,
    without this repository's ansible.cfg or roles path."""
    subprocess.run(
        ["ansible-galaxy", "collection", "build", "--output-path", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (tarball,) = tmp_path.glob("paycore-platform-*.tar.gz")
    shipped = Path(ansible_collections.__path__[0]).parent
    installed = tmp_path / "collections"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["ANSIBLE_COLLECTIONS_PATH"] = f"{installed}:{shipped}"
    install = subprocess.run(
        ["ansible-galaxy", "collection", "install", "--offline", "-p", installed, tarball],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    syntax = subprocess.run(
        [
            "ansible-playbook",
            "paycore.platform.site",
            "--syntax-check",
            "-i",
            str(ROOT / "inventories" / "example" / "hosts.yml"),
        ],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr
    assert "paycore/platform/playbooks/site.yml" in syntax.stdout


def test_galaxy_dependencies_are_the_requirements():
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())["dependencies"]
    requirements = yaml.safe_load((ROOT / "requirements.yml").read_text())["collections"]
    assert galaxy == {c["name"]: c["version"] for c in requirements}
