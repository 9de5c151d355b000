"""What the tests hold normlab to, written once: the registered kinds, as specified."""

CANONICAL_KINDS = (
    "none",
    "bn",
    "bn-scalar",
    "ln",
    "rms",
    "gn",
    "in",
    "brn",
    "switch",
    "frozen-bn",
    "sync-bn",
)
