"""Skills: folders of instructions and scripts an agent loads at session start.

A skill is a folder holding ``SKILL.md`` and any scripts or data it needs. ``SKILL.md`` starts
with YAML front matter giving ``name`` and ``description``::

    ---
    name: repo-summary
    description: Get a quick map of an unfamiliar repository before changing it.
    ---

or, without front matter, a ``# name`` title line and a first paragraph taken as the
description. At session start the skill's files are copied into the workspace under
``.skills/<name>/`` and a short section naming each skill is appended to the instructions;
the agent reads ``SKILL.md`` when it needs the details (so unused skills cost few tokens).

Skills are looked up by folder name in ``search_dirs`` (``FleetSettings.skill_dirs``), then
in the package's own library ``harness/skill_library``: the first match wins, so a folder of
yours can replace a built-in skill of the same name.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from core.errors import InputError
from sandboxes.base import Sandbox

SKILLS_DIR = ".skills"
"""Where skills land in the workspace."""
LIBRARY_DIR = Path(__file__).parent / "skill_library"
SKIP_NAMES = {"__pycache__", ".git", ".DS_Store"}
MAX_SKILL_BYTES = 5_000_000


class SkillError(InputError):
    """A skill is missing or malformed."""


@dataclass(frozen=True)
class Skill:
    name: str
    description: str
    path: Path

    @property
    def files(self) -> dict[str, bytes]:
        """The skill's files, by path relative to the skill folder."""
        return {rel: (self.path / rel).read_bytes() for rel in self._relative_paths()}

    @property
    def workspace_dir(self) -> str:
        return f"{SKILLS_DIR}/{self.name}"

    def _relative_paths(self) -> list[str]:
        paths = []
        for folder, dirs, names in os.walk(self.path):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_NAMES)
            for name in sorted(names):
                if name in SKIP_NAMES or name.endswith(".pyc"):
                    continue
                full = Path(folder, name)
                if full.is_file():
                    paths.append(full.relative_to(self.path).as_posix())
        return paths


def parse_skill_md(text: str, folder_name: str) -> tuple[str, str]:
    """``(name, description)`` from a SKILL.md's front matter, else its title and first
    paragraph."""
    if text.startswith("---"):
        end = text.find("\n---", 3)
        if end == -1:
            raise SkillError(f"skill {folder_name}: SKILL.md front matter has no closing ---")
        try:
            meta = yaml.safe_load(text[3:end]) or {}
        except yaml.YAMLError as exc:
            raise SkillError(f"skill {folder_name}: bad SKILL.md front matter: {exc}") from None
        if not isinstance(meta, dict):
            raise SkillError(f"skill {folder_name}: SKILL.md front matter is not a mapping")
        name = str(meta.get("name") or folder_name).strip()
        description = " ".join(str(meta.get("description") or "").split())
        if not description:
            raise SkillError(f"skill {folder_name}: SKILL.md front matter has no description")
        return name, description
    name, paragraph = folder_name, []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# ") and not paragraph and name == folder_name:
            name = stripped[2:].strip() or folder_name
        elif stripped and not stripped.startswith("#"):
            paragraph.append(stripped)
        elif paragraph:
            break
    if not paragraph:
        raise SkillError(f"skill {folder_name}: SKILL.md gives no description")
    return name, " ".join(paragraph)


def load_skill(folder: Path) -> Skill:
    skill_md = folder / "SKILL.md"
    if not skill_md.is_file():
        raise SkillError(f"skill folder {folder} has no SKILL.md")
    name, description = parse_skill_md(skill_md.read_text(errors="replace"), folder.name)
    if name != folder.name:
        raise SkillError(f"skill folder {folder.name!r} names itself {name!r}; make them agree")
    skill = Skill(name=name, description=description, path=folder)
    size = sum((folder / rel).stat().st_size for rel in skill._relative_paths())
    if size > MAX_SKILL_BYTES:
        raise SkillError(f"skill {name} is {size} bytes; the limit is {MAX_SKILL_BYTES}")
    return skill


def load_skills(names: list[str], search_dirs: Sequence[str | Path] | None = None) -> list[Skill]:
    """The skills called ``names``, found by folder name in ``search_dirs`` and then in the
    package's skill library. Raises SkillError naming any skill not found."""
    dirs = [Path(d).expanduser() for d in search_dirs or ()] + [LIBRARY_DIR]
    skills, missing = [], []
    for name in names:
        if not name or "/" in name or name in {".", ".."}:
            raise SkillError(f"bad skill name {name!r}")
        folder = next((d / name for d in dirs if (d / name / "SKILL.md").is_file()), None)
        if folder is None:
            missing.append(name)
        else:
            skills.append(load_skill(folder))
    if missing:
        where = ", ".join(str(d) for d in dirs) or "(no skill folders)"
        raise SkillError(f"skills not found: {', '.join(missing)} (looked in {where})")
    return skills


def skills_archive(skills: list[Skill]) -> bytes:
    """A tar of the skills for ``Sandbox.restore``, under ``.skills/<name>/``, keeping the
    executable bit of scripts."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for skill in skills:
            for rel, data in skill.files.items():
                info = tarfile.TarInfo(f"{skill.workspace_dir}/{rel}")
                info.size = len(data)
                executable = os.access(skill.path / rel, os.X_OK)
                info.mode = 0o755 if executable else 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def install_skills(sandbox: Sandbox, skills: list[Skill]) -> None:
    """Copy the skills into the sandbox's workspace (``.skills/<name>/``)."""
    if skills:
        await sandbox.restore(skills_archive(skills))


def skills_instructions(skills: list[Skill]) -> str:
    """The section appended to an agent's instructions: each skill, what it is for, where
    its files are. Empty when there are no skills."""
    if not skills:
        return ""
    lines = [
        "## Skills",
        f"Skills are folders of instructions and scripts in the workspace under {SKILLS_DIR}/. "
        "When a skill fits the task, read its SKILL.md first, then use its scripts.",
    ]
    for skill in skills:
        lines.append(f"- {skill.name}: {skill.description} (files: {skill.workspace_dir}/)")
    return "\n".join(lines)


def with_skills(instructions: str, skills: list[Skill]) -> str:
    """``instructions`` with the skills section appended."""
    section = skills_instructions(skills)
    return f"{instructions.rstrip()}\n\n{section}" if section else instructions
