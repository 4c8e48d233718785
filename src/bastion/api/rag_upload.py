"""Multipart uploads for ``POST /v1/collections/{name}/documents``.

Parsed with the standard library's MIME parser. Each ``file`` (or ``files``)
part becomes one or more documents through
:func:`bastion.rag.extract.extract_bytes`; a part that cannot be parsed is
reported as a failure by its file name, and the rest of the upload proceeds.
Optional form fields: ``acl`` (JSON ``{"teams": [...], "keys": [...]}``) and
``text_field`` (the text column of CSV/JSON rows).
"""

from __future__ import annotations

import email
import email.policy
import json
from dataclasses import dataclass, field

from bastion.core.errors import BastionError, InvalidRequest
from bastion.rag.extract import ExtractFailure, SourceDocument, extract_bytes
from bastion.rag.ports import Acl

FILE_FIELDS = ("file", "files", "file[]", "files[]")


@dataclass(slots=True)
class Upload:
    documents: list[SourceDocument] = field(default_factory=list)
    failures: list[ExtractFailure] = field(default_factory=list)
    acl: Acl = field(default_factory=Acl)


def parse_upload(content_type: str, body: bytes) -> Upload:
    """The documents of a ``multipart/form-data`` body."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    msg = email.message_from_bytes(head + body, policy=email.policy.HTTP)
    if not msg.is_multipart():
        raise InvalidRequest("expected a multipart/form-data body with file parts")
    fields: dict[str, str] = {}
    files: list[tuple[str, bytes]] = []
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        if filename is not None or name in FILE_FIELDS:
            files.append((filename or str(name or "upload"), data))
        elif isinstance(name, str):
            fields[name] = data.decode("utf-8", "replace")
    if not files:
        raise InvalidRequest("the upload has no file parts", param="file")
    up = Upload()
    if fields.get("acl"):
        try:
            raw = json.loads(fields["acl"])
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"acl is not valid JSON: {exc.msg}", param="acl") from None
        if not isinstance(raw, dict):
            raise InvalidRequest("acl must be an object with teams and keys", param="acl")
        up.acl = Acl.from_json(raw)
    text_field = fields.get("text_field") or "text"
    for filename, data in files:
        try:
            up.documents.extend(extract_bytes(data, filename, text_field=text_field))
        except BastionError as exc:
            up.failures.append(ExtractFailure(filename, str(exc)))
    return up
