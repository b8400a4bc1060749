"""What a translation found: each finding names its position in the source pipeline and says what it costs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import DefinitionError


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the translation could not carry over as it was.

    ``path`` is the position in the source pipeline (``processors[2].set.if``); ``lossy`` is true when the
    translated pipeline would behave differently (a processor or condition left out), false for a mere note
    (a tag kept under another name).
    """

    path: str
    reason: str
    lossy: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "reason": self.reason, "lossy": self.lossy}


@dataclass(slots=True)
class Translation:
    """A translated definition (or several, for a search pipeline) and the findings on the way."""

    source: str
    definitions: list[dict[str, Any]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def note(self, path: str, reason: str, *, lossy: bool = True) -> None:
        self.findings.append(Finding(path, reason, lossy))

    @property
    def lossy(self) -> list[Finding]:
        return [f for f in self.findings if f.lossy]

    def require_lossless(self, accept_losses: bool, how_to_accept: str) -> None:
        """Refuse (400, naming every position) when the translation would change behaviour, unless accepted."""
        if self.lossy and not accept_losses:
            problems = [(f.path, f.reason) for f in self.lossy]
            problems.append(("", f"nothing was stored; to go on without these: {how_to_accept}"))
            raise DefinitionError(problems, subject=f"{self.source} import")

    def report(self) -> list[dict[str, Any]]:
        return [f.to_dict() for f in self.findings]

    def processor(self, processor: Any, path: str) -> tuple[str, dict[str, Any]]:
        """``{"type": {options}}`` split into type and options (400 naming ``path`` when it is not that)."""
        if not isinstance(processor, dict) or len(processor) != 1:
            raise DefinitionError([(path, "a processor is an object with one key, its type")], subject=self.source)
        ((kind, options),) = processor.items()
        if not isinstance(options, dict):
            raise DefinitionError([(f"{path}.{kind}", "processor options are an object")], subject=self.source)
        return kind, options

    def stage_head(
        self, kind: str, options: dict[str, Any], position: int, here: str, names: set[str]
    ) -> dict[str, Any]:
        """A stage's name, description and failure policy from a processor's ``tag``, ``description`` and
        ``ignore_failure``. The name is the tag (untagged: ``{kind}-{position}``), made unique in ``names``."""
        tag = options.get("tag")
        name = tag if isinstance(tag, str) and 0 < len(tag) <= 128 else f"{kind}-{position}"
        if tag is not None and name != tag:
            self.note(f"{here}.tag", f"tag {tag!r} cannot be a stage name; the stage is named [{name}]", lossy=False)
        if name in names:
            renamed = f"{name}-{position}"
            self.note(f"{here}.tag", f"tag [{name}] is used twice; this stage is named [{renamed}]", lossy=False)
            name = renamed
        names.add(name)
        stage: dict[str, Any] = {"name": name}
        if isinstance(options.get("description"), str):
            stage["description"] = options["description"]
        if options.get("ignore_failure") is True:
            stage["on_failure"] = "continue"
        return stage
