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

import http.client
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from himari_ray.types import UserInputError, redact, scrub, shorten, valid_id

DEFAULT_URL = "https://console.vast.ai"
KEY_FILES = ("~/.config/vastai/vast_api_key", "~/.vast_api_key")


class VastError(RuntimeError):
    """The Vast API refused or failed a request; the message is one line and holds no API key."""


def load_api_key() -> str:
    """The user's Vast API key, or one line saying where to put it. Surrounding whitespace (the newline an
    editor or `echo` adds) and a UTF-8 byte-order mark (Notepad's) are stripped; a key with whitespace or
    control characters inside is refused, since it would end in an HTTP library's traceback that quotes the
    header, key and all. No message quotes it."""
    key = os.environ.get("VAST_API_KEY", "").strip()
    if key:
        return _checked_key(key, "VAST_API_KEY")
    empty = None
    for name in KEY_FILES:
        path = Path(name).expanduser()
        if path.is_file():
            try:
                with path.open("rb") as f:
                    raw = f.read(MAX_KEY_BYTES + 1)
            except OSError as exc:
                raise UserInputError(f"{path}: cannot read the Vast.ai API key ({exc.strerror})") from None
            if len(raw) > MAX_KEY_BYTES:
                raise UserInputError(f"{path}: not a Vast.ai API key (more than {MAX_KEY_BYTES} bytes)")
            try:
                text = raw.removeprefix(b"\xef\xbb\xbf").decode("ascii")
            except UnicodeDecodeError:
                raise UserInputError(f"{path}: not a Vast.ai API key (not plain text)") from None
            key = text.strip()
            if key:
                return _checked_key(key, str(path))
            empty = empty or path
    if empty is not None:  # the file vastai reads is there but holds nothing: say which one
        raise UserInputError(
            f"{empty}: empty, no Vast.ai API key in it; set VAST_API_KEY or run `vastai set api-key ...`"
        )
    raise UserInputError(
        "no Vast.ai API key: set VAST_API_KEY or run `vastai set api-key ...` (writes ~/.config/vastai/vast_api_key)"
    )


#: Seconds one request may wait for Vast's answer.
TIMEOUT_S = 30.0
#: Vast keys are 64 hex characters; a file much longer than any key is not one (and is not read whole).
MAX_KEY_BYTES = 4096
#: The most bytes of one API answer we read: an offer search of 64 offers is tens of kB.
MAX_ANSWER_BYTES = 32 * 2**20


def _checked_key(key: str, source: str) -> str:
    if any(c.isspace() or not c.isprintable() for c in key):
        raise UserInputError(f"{source}: the Vast.ai API key has whitespace or control characters inside it")
    if len(key) > 512:
        raise UserInputError(f"{source}: not a Vast.ai API key ({len(key)} characters)")
    return key


def _html_title(text: str) -> str | None:
    """What an HTML page (a proxy's or a maintenance page) says, for a message: its title or first heading."""
    if not re.match(r"\s*<(!doctype|html|head|body)", text, re.IGNORECASE):
        return None
    m = re.search(r"<(title|h1)[^>]*>(.*?)</\1>", text, re.IGNORECASE | re.DOTALL)
    words = re.sub(r"<[^>]+>", " ", m.group(2) if m else re.sub(r"(?is)<(script|style).*?</\1>", "", text))
    return shorten(" ".join(words.split()) or "blank", 60)


class VastClient:
    """The four Vast endpoints himari-ray uses. Every failure is a `VastError`: one line naming the method and
    the endpoint's path (never its query string: an offer filter, long once URL-encoded, would crowd out
    the reason), the reason, and never the key."""

    def __init__(self, api_key: str, base_url: str | None = None, timeout: float | None = None):
        self._key = api_key
        self.base_url = (base_url or os.environ.get("VAST_URL") or DEFAULT_URL).rstrip("/")
        parts = urllib.parse.urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            source = "VAST_URL" if base_url is None else "the Vast URL"
            raise UserInputError(f"{source} {redact(self.base_url)!r}: expected an http:// or https:// URL")
        self.timeout = TIMEOUT_S if timeout is None else timeout

    def _scrub(self, text: str) -> str:
        return scrub(text, self._key)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        where = f"{method} {path.split('?', 1)[0]}"
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
                payload = resp.read(MAX_ANSWER_BYTES + 1)
                if resp.length and len(payload) <= MAX_ANSWER_BYTES:  # fewer bytes than Content-Length said
                    raise http.client.IncompleteRead(payload, resp.length)
        except ValueError as exc:  # http.client refuses a header value it cannot send, quoting it: scrub it
            raise VastError(self._scrub(f"{where}: cannot send the request ({exc})")) from None
        except urllib.error.HTTPError as exc:
            raise VastError(self._scrub(f"{where}: HTTP {exc.code}: {_error_detail(exc)}")) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise VastError(self._scrub(f"{where}: cannot reach {self.base_url} ({self._reason(exc)})")) from None
        if len(payload) > MAX_ANSWER_BYTES:
            raise VastError(f"{where}: the answer is larger than {MAX_ANSWER_BYTES // 2**20} MiB")
        if not payload:
            return {}
        text = payload.decode("utf-8", errors="replace")
        try:
            answer = json.loads(text, parse_constant=_no_constant)
        except (json.JSONDecodeError, ValueError, RecursionError):
            title = _html_title(text)
            what = f"an HTML page ({title})" if title else "not JSON"
            raise VastError(self._scrub(f"{where}: the answer is {what}")) from None
        if not isinstance(answer, dict):
            raise VastError(f"{where}: the answer is a JSON {type(answer).__name__}, not an object")
        return answer

    def _reason(self, exc: BaseException) -> str:
        """Why a request got no answer, in words: "Connection refused", "Name or service not known"..."""
        reason = getattr(exc, "reason", exc) if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, TimeoutError):  # socket.timeout is TimeoutError
            return f"no answer within {self.timeout:g} s"
        if isinstance(reason, http.client.IncompleteRead):
            return "the connection closed mid-answer"
        if isinstance(reason, http.client.RemoteDisconnected):
            return "the server closed the connection without answering"
        if isinstance(reason, OSError) and reason.strerror:
            return reason.strerror
        return shorten(str(reason) or type(reason).__name__)

    def search_offers(self, query: dict[str, Any]) -> list[Any]:
        """The offers Vast returned, as it returned them: `offers.usable_offers` checks each one."""
        q = urllib.parse.quote(json.dumps(query, separators=(",", ":")))
        offers = self._call("GET", f"/bundles/?q={q}").get("offers", [])
        if not isinstance(offers, list):
            raise VastError(f"GET /bundles/: the answer's offers are a JSON {type(offers).__name__}, not a list")
        return offers

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
            raise VastError(self._scrub(f"PUT /asks/{offer_id}/: creation refused ({shorten(str(msg))})"))
        iid = valid_id(answer["new_contract"])
        if iid is None:  # something may have been created: the caller's destroy_all finds it by its label
            raise VastError(f"PUT /asks/{offer_id}/: the answer's new_contract is not an instance id")
        return iid

    def instances(self) -> list[dict[str, Any]]:
        """Our instances; each has a valid integer `id` (a listing with one that has none is refused whole:
        an instance we cannot name is one we could neither watch nor destroy)."""
        listed = self._call("GET", "/instances/?owner=me").get("instances", [])
        if not isinstance(listed, list):
            raise VastError(f"GET /instances/: the answer's instances are a JSON {type(listed).__name__}, not a list")
        out = []
        for n, inst in enumerate(listed):
            iid = valid_id(inst.get("id")) if isinstance(inst, dict) else None
            if iid is None:
                raise VastError(f"GET /instances/: entry {n} of the answer has no valid instance id")
            out.append({**inst, "id": iid})
        return out

    def destroy(self, instance_id: int) -> None:
        try:
            self._call("DELETE", f"/instances/{int(instance_id)}/")
        except VastError as exc:
            if "HTTP 404" not in str(exc):  # already gone: nothing bills
                raise


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """The first line of what an HTTP error answer says: Vast's `msg`, an HTML page's title, or the reason."""
    try:
        detail = exc.read(64 * 1024).decode(errors="replace")
    except (OSError, http.client.HTTPException):
        detail = ""
    try:
        parsed = json.loads(detail)
        if isinstance(parsed, dict):
            detail = str(parsed.get("msg") or parsed.get("error") or parsed)
    except (json.JSONDecodeError, RecursionError):
        if (title := _html_title(detail)) is not None:
            detail = f"an HTML page ({title})"
    first = detail.strip().splitlines()[0] if detail.strip() else str(exc.reason or "no reason given")
    return shorten(first, 200)
