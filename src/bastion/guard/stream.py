"""Output scanning on streams: release text only after its window was scanned.

:class:`StreamGuard` holds streamed text back until at least ``window``
characters are pending (cut at a word boundary), scans them together with
the last ``overlap`` characters already released (so an entity or phrase
split across two windows is still seen), and releases the window: unchanged,
redacted, or not at all (a block raises
:class:`~bastion.core.errors.ContentBlocked`, which ends the stream with an
SSE error event). :meth:`StreamGuard.flush` scans and releases the rest when
the stream ends. The client sees text at most one window later than the
upstream produced it.
"""

from __future__ import annotations

from dataclasses import replace

from bastion.guard.base import Finding, ScanContext
from bastion.guard.pipeline import Pipeline, Redactions, apply_redactions


class StreamGuard:
    def __init__(
        self,
        pipeline: Pipeline,
        ctx: ScanContext,
        red: Redactions | None = None,
        *,
        window: int = 256,
        overlap: int = 64,
        restore: bool = False,
    ) -> None:
        self.pipeline = pipeline
        self.ctx = ctx
        self.red = red or Redactions()
        self.window = window
        self.overlap = overlap
        self.restore = restore
        self._pending = ""
        self._released_tail = ""

    def feed(self, text: str) -> str:
        """Add streamed text; returns what may be sent now (possibly empty)."""
        self._pending += text
        if len(self._pending) < self.window:
            return ""
        # cut at the last whitespace, so a word (an address, a key) is never split;
        # text without any is held up to four windows, then cut anyway
        cut = max(self._pending.rfind(" "), self._pending.rfind("\n"))
        if cut <= 0:
            if len(self._pending) < 4 * self.window:
                return ""
            cut = len(self._pending)
        part, self._pending = self._pending[:cut], self._pending[cut:]
        return self._release(part)

    def flush(self) -> str:
        """Scan and release whatever is still held (at the end of the stream)."""
        part, self._pending = self._pending, ""
        return self._release(part) if part else ""

    def _release(self, part: str) -> str:
        prefix = self._released_tail
        verdict = self.pipeline.scan(prefix + part, "output", self.ctx, None)
        shift = len(prefix)
        redact: list[Finding] = []
        for f, action in verdict.findings:
            if f.end <= shift:
                continue  # about text already released (and scanned then)
            if action == "block":
                verdict.raise_if_blocked("streamed output")
            if action == "redact":
                start = max(0, f.start - shift)
                redact.append(replace(f, start=start, end=f.end - shift))
        out = apply_redactions(part, redact, self.red) if redact else part
        self._released_tail = (prefix + part)[-self.overlap :]
        return self.red.restore(out) if self.restore else out
