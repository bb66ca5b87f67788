"""Real CT with organ labels, as a package ships it: TotalSegmentator's test files.

TotalSegmentator's source archive (Apache-2.0) carries real CTs under
``tests/reference_files/``: an abdominal slab with its organ labels (``example_ct_sm.nii.gz``
and ``example_seg.nii.gz``, 3 mm voxels, liver = 5), the trunk it was cut from
(``example_ct.nii.gz``, 112 slices) and a DICOM series of 20 slices of 512 x 512
(``example_ct_dicom/``). They are fetched from the package registry into a cache, never
committed; where the registry cannot be reached, `ReferenceUnavailable` says why, and tests
skip with that reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

VERSION = "2.18.0"
LIVER_LABEL = 5
_MEMBER = f"totalsegmentator-{VERSION}/tests/reference_files/"


class ReferenceUnavailable(RuntimeError):
    """The archive could not be fetched or read (no registry, no disk)."""


def default_cache() -> Path:
    """``$REACTKD_CACHE`` or ``~/.cache/reactkd``."""
    return Path(os.environ.get("REACTKD_CACHE") or Path.home() / ".cache" / "reactkd")


def reference_files(cache: Path | None = None, timeout_s: float = 300.0) -> Path:
    """The folder of TotalSegmentator's reference files, fetched once into `cache`.

    Raises:
        ReferenceUnavailable: pip could not download the source archive, or it lacks the files.
    """
    root = (cache or default_cache()) / f"totalsegmentator-{VERSION}"
    folder = root / "reference_files"
    if (folder / "example_seg.nii.gz").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    archive = root / f"totalsegmentator-{VERSION}.tar.gz"
    if not archive.is_file():
        command = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps"]
        command += ["--disable-pip-version-check", "-q", "-d", str(root), f"totalsegmentator=={VERSION}"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ReferenceUnavailable(f"pip download of totalsegmentator=={VERSION} failed: {exc}") from None
        if done.returncode != 0 or not archive.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ReferenceUnavailable(f"pip download of totalsegmentator=={VERSION} failed: {tail[0]}")
    partial = root / "reference_files.partial"
    try:
        with tarfile.open(archive) as tar:
            members = [
                m for m in tar.getmembers() if m.name.startswith(_MEMBER) and (m.isfile() or m.isdir())
            ]
            for member in members:
                member.name = member.name[len(_MEMBER) :]
            tar.extractall(partial, members=[m for m in members if m.name], filter="data")
    except (OSError, tarfile.TarError) as exc:
        raise ReferenceUnavailable(f"{archive.name} could not be read: {exc}") from None
    if not (partial / "example_seg.nii.gz").is_file():
        raise ReferenceUnavailable(f"{archive.name} holds no tests/reference_files/example_seg.nii.gz")
    partial.replace(folder)
    return folder
