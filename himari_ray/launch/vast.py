"""Vast.ai's REST API, called directly with the standard library.

Why not the `vastai` SDK: it pins `cryptography` and `pillow` to exact versions (it would fight the rest of
an ML environment, so it could only ever be an optional extra), prints and formats for a terminal rather
than returning errors we can turn into one line, and wraps the same five endpoints we need:

    GET    /api/v0/bundles/?q=<json>        search offers
    PUT    /api/v0/asks/<offer id>/         create an instance from an offer
    GET    /api/v0/instances/               list our instances
    DELETE /api/v0/instances/<id>/          destroy one

Calling them with `urllib` adds no dependency at all, and the tests drive exactly these requests against a
local fake. The base URL is `VAST_URL` (as the `vastai` CLI reads it), default https://console.vast.ai.

The API key comes from `VAST_API_KEY`, else vastai's own key files (`~/.config/vastai/vast_api_key`,
`~/.vast_api_key`). It travels only in the `Authorization` header (never in a URL, which proxies and logs
keep) and every message we raise is scrubbed of it.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from himari_ray.types import UserInputError, scrub

DEFAULT_URL = "https://console.vast.ai"
KEY_FILES = ("~/.config/vastai/vast_api_key", "~/.vast_api_key")


class VastError(RuntimeError):
    """The Vast API refused or failed a request; the message is one line and holds no API key."""


def load_api_key() -> str:
    """The user's Vast API key, or one line saying where to put it. Surrounding whitespace (the newline an
    editor or `echo` adds) is stripped; a key with whitespace or control characters inside is refused, since
    it would end in an HTTP library's traceback that quotes the header, key and all. No message quotes it."""
    key = os.environ.get("VAST_API_KEY", "").strip()
    if key:
        return _checked_key(key, "VAST_API_KEY")
    for name in KEY_FILES:
        path = Path(name).expanduser()
        if path.is_file():
            try:
                text = path.read_bytes()[:MAX_KEY_BYTES].decode("ascii")
            except UnicodeDecodeError:
                raise UserInputError(f"{path}: not a Vast.ai API key (not plain text)") from None
            except OSError as exc:
                raise UserInputError(f"{path}: cannot read the Vast.ai API key ({exc.strerror})") from None
            key = text.strip()
            if key:
                return _checked_key(key, str(path))
    raise UserInputError(
        "no Vast.ai API key: set VAST_API_KEY or run `vastai set api-key ...` (writes ~/.config/vastai/vast_api_key)"
    )


#: Vast keys are 64 hex characters; a file much longer than any key is not one (and is not read whole).
MAX_KEY_BYTES = 4096


def _checked_key(key: str, source: str) -> str:
    if any(c.isspace() or not c.isprintable() for c in key):
        raise UserInputError(f"{source}: the Vast.ai API key has whitespace or control characters inside it")
    if len(key) > 512:
        raise UserInputError(f"{source}: not a Vast.ai API key ({len(key)} characters)")
    return key


class VastClient:
    """The four Vast endpoints himari-ray uses."""

    def __init__(self, api_key: str, base_url: str | None = None, timeout: float = 30.0):
        self._key = api_key
        self.base_url = (base_url or os.environ.get("VAST_URL") or DEFAULT_URL).rstrip("/")
        self.timeout = timeout

    def _scrub(self, text: str) -> str:
        return scrub(text, self._key)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"{self.base_url}/api/v0{path}",
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self._key}",
                "Accept": "application/json",
                **({"Content-Type": "application/json"} if data is not None else {}),
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = resp.read()
        except ValueError as exc:  # http.client refuses a header value it cannot send, quoting it: scrub it
            raise VastError(self._scrub(f"{method} {path.split('?', 1)[0]}: cannot send the request ({exc})")) from None
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            try:
                parsed = json.loads(detail)
                detail = str(parsed.get("msg") or parsed.get("error") or parsed)
            except (json.JSONDecodeError, AttributeError):
                pass
            first = detail.strip().splitlines()[0] if detail.strip() else exc.reason
            where = path.split("?", 1)[0]  # the query string (an offer filter) would crowd out the status
            raise VastError(self._scrub(f"{method} {where}: HTTP {exc.code}: {first}")) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise VastError(self._scrub(f"{method} {path}: cannot reach {self.base_url} ({reason})")) from None
        try:
            return json.loads(payload) if payload else {}
        except json.JSONDecodeError:
            raise VastError(f"{method} {path}: the answer is not JSON") from None

    def search_offers(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        q = urllib.parse.quote(json.dumps(query, separators=(",", ":")))
        return list(self._call("GET", f"/bundles/?q={q}").get("offers", []))

    def create_instance(
        self, offer_id: int, image: str, disk_gb: float, onstart: str, label: str, env: dict[str, str]
    ) -> int:
        """Rent offer `offer_id`; returns the new instance's id."""
        body = {
            "client_id": "me",
            "image": image,
            "disk": disk_gb,
            "onstart": onstart,
            "runtype": "ssh",  # SSH only: no Jupyter, no open web port
            "label": label,
            "env": env,
        }
        answer = self._call("PUT", f"/asks/{int(offer_id)}/", body)
        if not answer.get("success") or "new_contract" not in answer:
            msg = answer.get("msg") or answer.get("error") or "no instance id in the answer"
            raise VastError(self._scrub(f"PUT /asks/{offer_id}/: creation refused ({msg})"))
        return int(answer["new_contract"])

    def instances(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/instances/?owner=me").get("instances", []))

    def destroy(self, instance_id: int) -> None:
        try:
            self._call("DELETE", f"/instances/{int(instance_id)}/")
        except VastError as exc:
            if "HTTP 404" not in str(exc):  # already gone: nothing bills
                raise
