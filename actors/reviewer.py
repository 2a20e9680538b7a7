"""The reviewer: a second agent reads the diff and approves it or sends it back."""

from __future__ import annotations

from dataclasses import dataclass

from harness.tools import BUILTINS, Tool, ToolBox, ToolContext, ToolOutput, tool

REVIEW_INSTRUCTIONS = (
    "You review another agent's change. Read the diff and the files, run checks if useful, "
    "then call approve (with a short comment) or request_changes (saying what to fix)."
)


@dataclass
class Verdict:
    approved: bool | None = None
    comments: str = ""


def reviewer_toolbox(verdict: Verdict) -> ToolBox:
    """Read-and-run tools plus the two verdict tools, which fill ``verdict``."""

    @tool
    async def approve(ctx: ToolContext, comment: str = "") -> ToolOutput:
        """Accept the change."""
        verdict.approved, verdict.comments = True, comment
        return ToolOutput(text="approved", final=True, data={"summary": comment})

    @tool
    async def request_changes(ctx: ToolContext, comments: str) -> ToolOutput:
        """Send the change back with what must be fixed."""
        verdict.approved, verdict.comments = False, comments
        return ToolOutput(text="changes requested", final=True, data={"summary": comments})

    registry: dict[str, Tool] = {
        "shell": BUILTINS["shell"],
        "read_file": BUILTINS["read_file"],
        "approve": approve,
        "request_changes": request_changes,
        "finish": approve,  # finishing without a verdict counts as approval
    }
    return ToolBox(list(registry), registry)


def reviewer_prompt(task_prompt: str, diff: str) -> str:
    return (
        f"## The task\n{task_prompt}\n\n## The change (diff of the workspace)\n"
        f"```diff\n{diff or '(no changes)'}\n```"
    )
