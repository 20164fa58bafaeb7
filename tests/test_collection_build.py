"""`ansible-galaxy collection build` ships the content, not the tests or the lab."""

import subprocess
import tarfile
from pathlib import Path

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
