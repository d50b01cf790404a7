"""Secrets out: header values and JSON body paths replaced before anything is stored or shown.

Applied by the recorder to every exchange after it is compared (so the comparison still sees
the real values, and the store and every report never do), and again by the reports to what
they show. A body that changes is kept decoded, without its Content-Encoding header.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

from shadowdiff import jsonpath
from shadowdiff.compare import bodies
from shadowdiff.config import Redact
from shadowdiff.model import Divergence, Exchange, Headers, Outcome

MASK = "[redacted]"
_LAST_KEY = re.compile(r"(?:\.([A-Za-z_][A-Za-z0-9_]*)|\['((?:[^'\\]|\\.)*)'\])$")


class Redactor:
    def __init__(self, cfg: Redact) -> None:
        self.header_names = frozenset(h.lower().encode("latin-1") for h in cfg.headers)
        self.paths = tuple(cfg.paths)
        # A body is parsed only if it contains one of the keys the patterns end in.
        needles = [_LAST_KEY.search(p) for p in self.paths]
        self.needles: tuple[bytes, ...] | None = (
            tuple(f'"{m.group(1) or m.group(2)}"'.encode() for m in needles if m)
            if all(needles)
            else None
        )

    def headers(self, headers: Headers) -> Headers:
        return [
            (name, MASK.encode() if name.lower() in self.header_names else value)
            for name, value in headers
        ]

    def json(self, doc: Any) -> Any:
        return jsonpath.mask(doc, self.paths, MASK)[0] if self.paths else doc

    def body(self, headers: Headers, data: bytes) -> tuple[Headers, bytes]:
        """Headers and body with secrets masked; a masked body is stored decoded. JSON (also
        served as text) and form bodies are masked by path, like the comparison reads them."""
        if not self.paths or not data:
            return headers, data
        parsed = bodies.read(headers, data)
        if self.needles is not None and not any(n.strip(b'"') in parsed.data for n in self.needles):
            return headers, data
        if parsed.kind == bodies.FORM:
            masked = self.query(parsed.data.decode("utf-8", "replace"))
            return self._stored(
                headers, masked.encode(), masked != parsed.data.decode("utf-8", "replace")
            )
        if parsed.kind not in (bodies.JSON, bodies.TEXT):
            return headers, data
        try:
            doc = orjson.loads(parsed.data)
        except orjson.JSONDecodeError:
            return headers, data
        masked_doc, changed = jsonpath.mask(doc, self.paths, MASK)
        try:
            return self._stored(headers, orjson.dumps(masked_doc), changed)
        except orjson.JSONEncodeError:  # deeper than orjson writes: hide the whole body
            return self._stored(headers, MASK.encode(), True)

    @staticmethod
    def _stored(headers: Headers, data: bytes, changed: bool) -> tuple[Headers, bytes]:
        if not changed:
            return headers, data
        skip = (b"content-encoding", b"content-length")
        return [(n, v) for n, v in headers if n.lower() not in skip], data

    def query(self, text: str) -> str:
        """A query string or form body with the values of secret keys masked."""
        pairs = parse_qsl(text, keep_blank_values=True)
        form: dict[str, list[str]] = {}
        for key, value in pairs:
            form.setdefault(key, []).append(value)
        masked, changed = jsonpath.mask(form, self.paths, MASK)
        if not changed:
            return text
        return urlencode(
            [
                (k, v)
                for k, values in masked.items()
                for v in (values if isinstance(values, list) else [values])
            ]
        )

    def path(self, path: str) -> str:
        bare, sep, query = path.partition("?")
        return bare + sep + self.query(query) if query else path

    def outcome(self, outcome: Outcome | None) -> Outcome | None:
        if outcome is None or outcome.error:
            return outcome
        headers, data = self.body(outcome.headers, outcome.body)
        return Outcome(outcome.status, self.headers(headers), data, outcome.latency, outcome.error)

    def divergence(self, d: Divergence) -> Divergence:
        """A divergence whose values sit at a secret path or header shows no values."""
        secret = (d.path.startswith("header:") and d.path[7:].encode() in self.header_names) or (
            d.path.startswith("body:$") and jsonpath.covered(d.path[5:], self.paths)
        )
        return Divergence(d.path, d.kind, MASK, MASK, d.rule) if secret else d

    def exchange(self, x: Exchange) -> None:
        """Masks an exchange in place, after its comparison, its divergences included."""
        x.shadow_diffs = [self.divergence(d) for d in x.shadow_diffs]
        x.secondary_diffs = [self.divergence(d) for d in x.secondary_diffs]
        request = x.request
        headers, data = self.body(request.headers, request.body)
        request.headers, request.body = self.headers(headers), data
        request.path = self.path(request.path)
        x.primary = self.outcome(x.primary) or x.primary
        x.shadow = self.outcome(x.shadow) or x.shadow
        x.secondary = self.outcome(x.secondary)
