"""Secrets out: values under secret names, listed headers and JSON paths replaced before
anything is stored or shown.

Applied by the recorder to every exchange after it is compared (so the comparison still sees
the real values, and the store and every report never do), and again by the reports to what
they show. A secret is a value under a `redact.names` name whatever its case (a JSON key at
any depth, escaped or not; a form, query-string or multipart field; a header so named or whose
name ends in one), a listed header's value, or a value at a `redact.paths` path. Bodies are
read the way the comparison reads them (bounded decoding; JSON with Python's json behind
orjson). Redaction fails closed: a body that may hold a secret but cannot be read (it does
not decode, decodes too large, or looks like JSON or multipart and does not parse) is stored
as a placeholder that says why, never in clear. A body that changes is kept decoded, without
its Content-Encoding header.
"""

from __future__ import annotations

import json
import re
from email.message import Message
from email.utils import collapse_rfc2231_value
from typing import Any
from urllib.parse import parse_qsl, urlencode

from shadowdiff import jsonpath
from shadowdiff.compare import bodies
from shadowdiff.config import Redact
from shadowdiff.model import Divergence, Exchange, Headers, Outcome

MASK = "[redacted]"
_PLACEHOLDER = re.compile(rb"\[redacted(?:: [A-Za-z ]+, [0-9]+ bytes)?\]")
"""MASK, or what stands for a whole body that could not be read: already redacted."""
_LAST_KEY = re.compile(r"(?:\.([A-Za-z_][A-Za-z0-9_]*)|\['((?:[^'\\]|\\.)*)'\])$")
_ESCAPED = re.compile(r"\\(.)", re.DOTALL)
_HIDDEN = (b"\\", b"%", b"\0", "\u0130".encode(), "\u212a".encode())
"""What may spell a secret name without showing it: an escape (JSON `\\u0061`, a quoted
string's backslash, form or RFC 2231 `%61`), a NUL byte (UTF-16 JSON, which Python's json
reads), and the two letters beyond ASCII that `str.lower` turns into ASCII ones."""
_READ = (bodies.JSON, bodies.FORM, bodies.TEXT)
"""The declared kinds of body redaction reads (with multipart, and a body of no type)."""
_MAX_NESTING = 2
"""Multipart bodies nested in multipart parts read at most; deeper is not read (fails closed)."""


def _anywhere(name: str) -> str:
    """The JSON path pattern of a key at any depth."""
    return "$..['" + name.replace("\\", "\\\\").replace("'", "\\'") + "']"


class Redactor:
    """Masks secrets under one `Redact` config: headers, bodies, query strings, divergences."""

    def __init__(self, cfg: Redact) -> None:
        # Keys are matched lower-cased (`str.lower`), patterns lower-cased alike.
        names = sorted({name.lower() for name in cfg.names})
        self.names = frozenset(name.encode() for name in names)
        self.header_names = frozenset(h.lower().encode("latin-1") for h in cfg.headers)
        self.patterns = tuple(_anywhere(n) for n in names) + tuple(p.lower() for p in cfg.paths)
        # A body is parsed only if it may contain one of the keys the patterns end in.
        ends = [_LAST_KEY.search(p) for p in self.patterns]
        keys = {_ESCAPED.sub(r"\1", m.group(1) or m.group(2)).encode() for m in ends if m}
        self.needles: tuple[bytes, ...] | None = (
            tuple(sorted(k for k in keys if not any(o in k for o in keys if o != k)))
            if all(ends)
            else None  # a pattern that ends in no key name: every body is parsed
        )
        self.json_escape = _escapes_of(self.needles or ())

    def may_hold(self, data: bytes, in_json: bool = False) -> bool:
        """Whether `data` can hold a secret key at all: a key the patterns end in appears in it
        whatever its case, or something _HIDDEN that could spell one. In JSON (`in_json`), a
        backslash counts only as the \\uXXXX of a character of a key (`json_escape`), so the
        `\\u00e9` and `\\n` of everyday bodies cost no parse."""
        if self.needles is None:
            return True
        low = data.lower()
        if in_json and self.json_escape is not None:
            escaped = b"\\u" in low and self.json_escape.search(low) is not None
            hidden = escaped or any(sign in low for sign in _HIDDEN[2:])
        else:
            hidden = any(sign in low for sign in _HIDDEN)
        return hidden or any(needle in low for needle in self.needles)

    def secret_header(self, name: bytes) -> bool:
        """A listed header, or one named by a secret name or ending in one after `-` or `_`
        (`X-Api-Key`, `X-Auth-Token`)."""
        low = name.lower()
        return low in self.header_names or any(
            low[i:] in self.names for i in range(len(low)) if i == 0 or low[i - 1] in b"-_"
        )

    def headers(self, headers: Headers) -> Headers:
        return [
            (name, MASK.encode() if self.secret_header(name) else value) for name, value in headers
        ]

    def json(self, doc: Any) -> Any:
        return jsonpath.mask(doc, self.patterns, MASK, str.lower)[0] if self.patterns else doc

    def body(self, headers: Headers, data: bytes) -> tuple[Headers, bytes]:
        """Headers and body with secrets masked; a masked body is stored decoded. JSON (by its
        type, or by its first bytes whatever its type), form and multipart bodies are read;
        a body of another declared type (binary, HTML, XML) is not even decoded."""
        return self._body(headers, data, 0)

    def _body(self, headers: Headers, data: bytes, depth: int) -> tuple[Headers, bytes]:
        if not data or not self.patterns or _PLACEHOLDER.fullmatch(data):
            return headers, data
        content_type = bodies.header_value(headers, b"content-type")
        mime = bodies.mime(content_type)
        multipart = mime.startswith("multipart/")
        read = multipart or not mime or bodies.kind_of(mime, b"") in _READ
        if not read and not bodies.looks_json(data):
            return headers, data  # binary, HTML, XML: not even decoded
        parsed = bodies.read(headers, data)
        if parsed.failure == bodies.TOO_LARGE:
            return self._replaced(headers, data, "body too large to read")
        if parsed.failure:
            return self._replaced(headers, data, "body that does not decode")
        text = parsed.data
        if multipart:
            if not self.may_hold(text):
                return headers, data
            masked = self._multipart(content_type, text, depth)
            if masked is None:
                return self._replaced(headers, data, "multipart body that does not parse")
            return self._stored(headers, data, masked)
        looks = parsed.kind == bodies.JSON or bodies.looks_json(text)
        if looks and self.may_hold(text, in_json=True):
            doc, ok = bodies.parse_json(text)
            if ok:
                masked_doc, changed = jsonpath.mask(doc, self.patterns, MASK, str.lower)
                return self._stored(headers, data, _dumps(masked_doc) if changed else None)
            if parsed.kind != bodies.FORM:  # a form body may start with `[` and still be one
                return self._replaced(headers, data, "JSON that does not parse")
        if parsed.kind == bodies.FORM:
            form = text.decode("utf-8", "replace")
            masked_form = self.query(form)
            return self._stored(
                headers, data, masked_form.encode() if masked_form != form else None
            )
        return headers, data

    def _multipart(self, content_type: str, data: bytes, depth: int) -> bytes | None:
        """The body with the parts named like a secret masked and the others redacted as bodies
        of their own type; None when it does not parse as multipart."""
        boundary = _param(content_type, "boundary")
        if not boundary or depth >= _MAX_NESTING:
            return None
        delimiter = b"--" + boundary.encode("latin-1", "replace")
        chunks = data.split(delimiter)
        if len(chunks) < 2:
            return None
        out = [self._outside(chunks[0])]
        for at, chunk in enumerate(chunks[1:], 1):
            if chunk.startswith(b"--"):  # the close delimiter: what follows is no part
                out.append(b"--" + self._outside(delimiter.join(chunks[at:])[2:]))
                return delimiter.join(out)
            head, sep, content = chunk.partition(b"\r\n\r\n")
            if not sep:
                head, sep, content = chunk.partition(b"\n\n")
            if not sep:
                return None
            ending = (
                b"\r\n" if content.endswith(b"\r\n") else b"\n" if content.endswith(b"\n") else b""
            )
            content = content[: len(content) - len(ending)]
            part_headers = [
                (name.strip(), value.strip())
                for line in head.splitlines()
                for name, colon, value in [line.partition(b":")]
                if colon
            ]
            disposition = bodies.header_value(part_headers, b"content-disposition")
            field = _param(disposition, "name") if disposition else None
            if field is not None and jsonpath.covered(
                jsonpath.format_path([field.lower()]), self.patterns
            ):
                content = MASK.encode()
            else:
                content = self._body(part_headers, content, depth + 1)[1]
            out.append(head + sep + content + ending)
        return None  # no close delimiter: cut short

    def _outside(self, data: bytes) -> bytes:
        """A multipart preamble or epilogue: no field, but never a place to keep a secret."""
        return b"\r\n" + MASK.encode() + b"\r\n" if data.strip() and self.may_hold(data) else data

    def _replaced(self, headers: Headers, data: bytes, why: str) -> tuple[Headers, bytes]:
        """The whole body replaced by a placeholder saying why it could not be read."""
        return self._stored(headers, data, f"{MASK[:-1]}: {why}, {len(data)} bytes]".encode())

    @staticmethod
    def _stored(headers: Headers, data: bytes, masked: bytes | None) -> tuple[Headers, bytes]:
        """The body as sent when nothing changed, else `masked`, stored decoded."""
        if masked is None or masked == data:
            return headers, data
        skip = (b"content-encoding", b"content-length")
        return [(n, v) for n, v in headers if n.lower() not in skip], masked

    def query(self, text: str) -> str:
        """A query string or form body with the values of secret keys masked."""
        pairs = parse_qsl(text, keep_blank_values=True)
        form: dict[str, list[str]] = {}
        for key, value in pairs:
            form.setdefault(key, []).append(value)
        masked, changed = jsonpath.mask(form, self.patterns, MASK, str.lower)
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
        """A divergence whose values sit at a secret path or header, or a text excerpt of a
        body that may show a secret, shows no values."""
        secret = (
            (
                d.path.startswith("header:")
                and self.secret_header(d.path[7:].encode("latin-1", "replace"))
            )
            or (d.path.startswith("body:$") and jsonpath.covered(d.path[5:].lower(), self.patterns))
            or (
                d.path == "body"
                and d.kind == "changed"
                and any(self.may_hold(v.encode("utf-8", "replace")) for v in (d.left, d.right))
            )
        )
        path = d.path
        if (
            path.startswith("body:")
            and "['" in path
            and any(self.may_hold(t.encode("utf-8", "replace")) for t in (path, d.left, d.right))
        ):
            # A quoted key is text from a body read as another kind (JSON or multipart read
            # as a form, say): the key and its values may carry a secret, so all of it goes.
            path, secret = "body:" + MASK, True
        return Divergence(path, d.kind, MASK, MASK, d.rule) if secret else d

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


def _param(value: str, name: str) -> str | None:
    """A parameter of a header value (`boundary`, a Content-Disposition `name`), unquoted,
    RFC 2231 forms included, by the standard library's header parser."""
    message = Message()
    message["content-type"] = value
    found = message.get_param(name, header="content-type")
    if found is None:
        return None
    return collapse_rfc2231_value(found)


def _escapes_of(needles: tuple[bytes, ...]) -> re.Pattern[bytes] | None:
    """The JSON \\uXXXX escapes that could spell a character of one of `needles` once keys
    are lower-cased (its upper case too, and the Kelvin sign for `k`); None when a needle has
    a character JSON may escape otherwise (`"`, `\\`, `/`, controls) or one beyond ASCII,
    whose every spelling is not listed here."""
    text = b"".join(needles).decode()
    if not (text.isascii() and text.isprintable()) or any(c in text for c in '"\\/'):
        return None
    chars = {x for c in text for x in (c, c.upper())} | ({"\u212a"} if "k" in text else set())
    codes = b"|".join(f"{ord(c):04x}".encode() for c in sorted(chars))
    return re.compile(rb"\\u(?:" + codes + rb")")  # searched in the lower-cased body


def _dumps(doc: Any) -> bytes:
    """Python's json writes back everything it reads (NaN, Infinity, big integers; orjson
    refuses them or writes null); a lone surrogate becomes its JSON escape."""
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8", "backslashreplace"
    )
