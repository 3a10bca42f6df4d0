"""Who may compute this cycle: each provider's wrong answers and blacklisting (seed 002, 4.3).

A provider that gives a wrong answer (one that fails the owner's check, disagrees with the
answer accepted, or never comes) is not paid and pays for the computation that replaced it. Its
second wrong answer puts it on the blacklist for the next three cycles, and its count starts
again. Pure: a frozen value with transitions, saved as JSON beside the records it came from."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

BLACKLIST_CYCLES = 3
WRONG_TO_BLACKLIST = 2


@dataclass(frozen=True)
class ProviderBook:
    wrong: dict[str, int] = field(default_factory=dict)  # wrong answers since the last blacklisting
    blacklisted_until: dict[str, int] = field(default_factory=dict)  # last cycle of the ban

    def eligible(self, provider: str, cycle: int) -> bool:
        return self.blacklisted_until.get(provider, -1) < cycle

    def after_wrong(self, provider: str, cycle: int) -> ProviderBook:
        count = self.wrong.get(provider, 0) + 1
        if count >= WRONG_TO_BLACKLIST:
            return replace(self, wrong={**self.wrong, provider: 0},
                           blacklisted_until={**self.blacklisted_until, provider: cycle + BLACKLIST_CYCLES})
        return replace(self, wrong={**self.wrong, provider: count})

    def to_json(self) -> dict:
        return {"wrong": dict(sorted(self.wrong.items())), "blacklisted_until": dict(sorted(self.blacklisted_until.items()))}

    @classmethod
    def from_json(cls, doc: dict) -> ProviderBook:
        return cls({str(k): int(v) for k, v in doc.get("wrong", {}).items()},
                   {str(k): int(v) for k, v in doc.get("blacklisted_until", {}).items()})

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)
