"""Why a candidate was not scored, as one of a fixed set of kinds: the log keeps each reason's full text
(a peer's status detail included); metrics and summaries need a value a peer cannot invent."""
from __future__ import annotations

STATUS_CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
                "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
                "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")

# (text a reason starts with or contains, its kind); the first that fits wins
_PATTERNS = (
    ("skipped: genesis ", "other_genesis"),
    ("skipped: KV shapes ", "kv_shapes"),
    ("skipped: no finished task yet", "no_task_yet"),
    ("skipped: modality ", "out_of_scope"),
    ("skipped: does not serve", "not_served"),
    ("skipped: learned no task with this label set", "no_match"),
    ("skipped: ", "no_pairs"),  # the only other skip: no items to pair with the peer (freqkd)
    ("no answer within the ", "deadline"),
    ("bad payload: ", "bad_payload"),
    ("injection failed: ", "injection_failed"),
)
REFUSED = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE", "PERMISSION_DENIED", "UNAUTHENTICATED"})

KINDS = (*dict.fromkeys(kind for _, kind in _PATTERNS), "refused", "rpc_error", "other")


def skip_kind(reason: str | None) -> str:
    """The kind of a candidate's ``error`` text (``KINDS``): a peer that turned the call away (``refused``:
    busy, over a budget, not admitted), another failed call (``rpc_error``), or an eligibility rule."""
    text = reason if isinstance(reason, str) else ""
    for prefix, kind in _PATTERNS:
        if text.startswith(prefix):
            return kind
    # "<STATUS>: detail", possibly after "match failed: " / "task fetch failed: " / "<extra> failed: "
    head = text.split(" failed: ", 1)[-1] if " failed: " in text else text
    status = head.split(":", 1)[0]
    if status == "bad payload":
        return "bad_payload"
    if status in STATUS_CODES:
        return "refused" if status in REFUSED else "rpc_error"
    return "other"
