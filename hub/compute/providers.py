"""The providers file: which compute providers a data owner may use, and what they cost.

    {"providers": [{"name": "p1", "address": "10.0.0.5:7800", "public_key": "p1/provider.pub.pem",
                    "tls_ca": "p1/tls/ca.pem", "fee": 1.0}, ...],
     "data_centre_cost": 3.0, "timeout_s": 30}

Paths are relative to the file. A provider without `tls_ca` must say `"insecure": true`
(local development only)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gridtrace.jsonfile import read_json, write_durably
from hub.compute.book import ProviderBook
from hub.compute.outsource import Outsourcer, ProviderEndpoint
from protos.signing import KeyFileError, load_public_key


class ProvidersFileError(ValueError):
    """A providers or book file that cannot be used; the message names the file and entry."""


@dataclass(frozen=True)
class ProvidersFile:
    providers: tuple[ProviderEndpoint, ...]
    data_centre_cost: float
    timeout_s: float


def load_providers(path: Path) -> ProvidersFile:
    path = Path(path)
    doc = read_json(path, ProvidersFileError)
    entries = doc.get("providers") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ProvidersFileError(f"{path}: needs a non-empty list \"providers\"")
    out = []
    for i, e in enumerate(entries):
        at = f"{path}: providers[{i}]"
        if not isinstance(e, dict) or not all(isinstance(e.get(k), str) for k in ("name", "address", "public_key")):
            raise ProvidersFileError(f"{at}: needs \"name\", \"address\" and \"public_key\" (strings)")
        try:
            key = load_public_key(path.parent / e["public_key"])
            ca = (path.parent / e["tls_ca"]).read_bytes() if "tls_ca" in e else None
        except (KeyFileError, OSError) as exc:
            raise ProvidersFileError(f"{at} ({e['name']}): {exc}") from exc
        if ca is None and e.get("insecure") is not True:
            raise ProvidersFileError(f"{at} ({e['name']}): no \"tls_ca\"; plaintext needs \"insecure\": true")
        fee = e.get("fee", 1.0)
        if isinstance(fee, bool) or not isinstance(fee, (int, float)) or fee < 0:
            raise ProvidersFileError(f"{at} ({e['name']}): fee must be a number >= 0")
        out.append(ProviderEndpoint(e["name"], e["address"], key, float(fee), ca))
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise ProvidersFileError(f"{path}: provider names repeat: {names}")
    return ProvidersFile(tuple(out), float(doc.get("data_centre_cost", 3.0)), float(doc.get("timeout_s", 30.0)))


def load_book(path: Path) -> ProviderBook:
    path = Path(path)
    if not path.exists():
        return ProviderBook()
    try:
        return ProviderBook.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, AttributeError) as exc:
        raise ProvidersFileError(f"{path}: not a provider book: {exc}") from exc


def save_book(path: Path, book: ProviderBook) -> None:
    """Durably: a blacklisting must survive a crash right after it."""
    write_durably(path, book.dumps() + "\n")


def outsourcer_from_files(providers: Path, book: Path | None) -> Outsourcer:
    """An outsourcer for the providers file, with the book kept at `book` (None: a fresh book)."""
    pf = load_providers(providers)
    return Outsourcer(pf.providers, load_book(book) if book else None, timeout_s=pf.timeout_s,
                      data_centre_cost=pf.data_centre_cost)
