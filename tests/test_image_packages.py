"""Environments' apt and pip lists are package requirements, nothing else: checked before
any build (no Docker needed), a bad entry named in the error."""

from __future__ import annotations

from typing import Any

import pytest

from core.specs import EnvironmentSpec
from sandboxes.images import ImageBuildError, check_packages, ensure_environment_image

GOOD_APT = ["jq", "libssl-dev", "g++", "python3.11", "libc6:amd64", "curl=7.88.1-10+deb12u5"]
GOOD_PIP = [
    "six",
    "six==1.16.0",
    "requests>=2,<3",
    "uvicorn[standard]~=0.30",
    "zope.interface",
    "foo_bar-baz!=1.0.*",
]
BAD_APT = [
    "-o=APT::Get::AllowUnauthenticated=1",
    "--allow-unauthenticated",
    "jq; rm -rf /",
    "jq rm",
    "jq\n",
    "$(id)",
    "../evil.deb",
    "http://x/evil.deb",
    "JQ",
    "",
]
BAD_PIP = [
    "--index-url=http://evil/simple",
    "-e.",
    "-r requirements.txt",
    "six @ https://evil/six.whl",
    "https://evil/six.whl",
    "git+https://evil/repo",
    "./local/path",
    "six; python_version<'3'",
    "six==1.0 --hash=sha256:x",
    "six\n",
    "six`id`",
    "",
]


def test_plain_requirements_pass() -> None:
    check_packages(EnvironmentSpec(apt=GOOD_APT, pip=GOOD_PIP))


@pytest.mark.parametrize("entry", BAD_APT)
def test_an_apt_entry_that_is_not_a_package_name_is_refused(entry: str) -> None:
    with pytest.raises(ImageBuildError, match=r"^apt: .* is not a Debian package name") as info:
        check_packages(EnvironmentSpec(apt=["jq", entry]))
    assert info.value.package == entry and repr(entry) in str(info.value)


@pytest.mark.parametrize("entry", BAD_PIP)
def test_a_pip_entry_that_is_not_a_plain_requirement_is_refused(entry: str) -> None:
    with pytest.raises(ImageBuildError, match=r"^pip: .* is not a plain requirement") as info:
        check_packages(EnvironmentSpec(pip=["six", entry]))
    assert info.value.package == entry and repr(entry) in str(info.value)


def test_the_check_runs_before_any_image_work() -> None:
    """No engine is asked anything: a bad entry fails even with no Docker at all."""
    with pytest.raises(ImageBuildError, match="--index-url"):
        ensure_environment_image(EnvironmentSpec(pip=["--index-url=http://evil/simple"]), cli=None)


def test_pip_config_cert_is_read_as_pip_reads_it(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sandboxes.images import pip_config_cert

    first, second = tmp_path / "xdg" / "pip", tmp_path / "home" / "pip"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    (first / "pip.conf").write_text("[global]\ncert = /from/xdg\ntimeout = 5\n")
    monkeypatch.delenv("PIP_CONFIG_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "xdg"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr("sys.prefix", str(tmp_path / "prefix"))
    monkeypatch.setattr("sandboxes.images.SYSTEM_PIP_CONF", tmp_path / "etc-pip.conf")
    assert pip_config_cert() == "/from/xdg"
    (second / "pip.conf").write_text("[install]\ncert = /not/global\n")
    assert pip_config_cert() == "/from/xdg"  # only the global section counts
    (second / "pip.conf").write_text("[global]\ncert = /from/user\n")
    assert pip_config_cert() == "/from/user"  # the user's file comes later: it wins
    named = tmp_path / "named.conf"
    named.write_text("[global]\nindex-url = x\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(named))
    assert pip_config_cert() is None  # PIP_CONFIG_FILE alone
