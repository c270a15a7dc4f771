"""Why a candidate was skipped or failed, as a value made where it happens: a ``kind`` from a fixed set
(what metrics and summaries count: a value a peer cannot invent) and the text the log shows (a peer's
status detail included). Nothing reads a kind back out of the text."""
from __future__ import annotations

from dataclasses import dataclass

STATUS_CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
                "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
                "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
REFUSED = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE", "PERMISSION_DENIED", "UNAUTHENTICATED"})

# an eligibility rule said no: the peer is unfit for this selection, not broken
SKIP_KINDS = ("other_genesis", "kv_shapes", "no_task_yet", "out_of_scope", "not_served", "no_match", "no_pairs")
# a call or a payload went wrong; "refused": the peer turned the call away (busy, over a budget, not admitted)
FAILURE_KINDS = ("deadline", "bad_payload", "injection_failed", "refused", "rpc_error", "other")
KINDS = SKIP_KINDS + FAILURE_KINDS
SKIPPED = "skipped:"  # how the text of a skip begins


@dataclass(frozen=True)
class Reason:
    kind: str  # one of KINDS
    text: str  # what the log and the summaries show

    def __str__(self) -> str:
        return self.text

    @property
    def skipped(self) -> bool:
        """An eligibility rule, not a failure: the peer is unfit for this selection."""
        return self.kind in SKIP_KINDS


def skip(kind: str, detail: str) -> Reason:
    assert kind in SKIP_KINDS, kind
    return Reason(kind, f"{SKIPPED} {detail}")


def _step(step: str, text: str) -> str:
    return f"{step} failed: {text}" if step else text


def call_failed(status: str, detail: str, step: str = "") -> Reason:
    """A call that ended with gRPC ``status`` (``step``: what the call was for, e.g. ``match``)."""
    kind = ("refused" if status in REFUSED else "rpc_error") if status in STATUS_CODES else "other"
    return Reason(kind, _step(step, f"{status}: {detail}"))


def bad_payload(detail: object, step: str = "") -> Reason:
    return Reason("bad_payload", _step(step, f"bad payload: {detail}"))


def late(deadline: float, what: str) -> Reason:
    return Reason("deadline", f"no answer within the {deadline}s deadline ({what})")


def injection_failed(detail: object) -> Reason:
    return Reason("injection_failed", f"injection failed: {detail}")
