"""Model repositories on disk: which models exist, and which of their versions to serve."""

from __future__ import annotations

from pathlib import Path

from pyserve.protocol import pb


def find_models(repositories: list[Path]) -> dict[str, list[Path]]:
    """Model name -> the directories that hold it, one per repository it appears in."""
    found: dict[str, list[Path]] = {}
    for repository in repositories:
        for entry in sorted(Path(repository).iterdir()):
            if entry.is_dir() and not entry.name.startswith("."):
                found.setdefault(entry.name, []).append(entry)
    return found


def version_dirs(model_dir: Path) -> dict[int, Path]:
    """Numeric version directories; other names and names with a leading zero are ignored."""
    versions = {}
    for entry in model_dir.iterdir():
        if entry.is_dir() and entry.name.isdigit() and not entry.name.startswith("0"):
            versions[int(entry.name)] = entry
    return versions


def select_versions(policy: pb.ModelVersionPolicy, available: list[int]) -> list[int]:
    """The versions a ModelVersionPolicy asks to serve, ascending."""
    ordered = sorted(available)
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return ordered
    if choice == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in ordered if v in wanted]
    count = policy.latest.num_versions if choice == "latest" else 1
    return ordered[-max(count, 1):] if ordered else []
