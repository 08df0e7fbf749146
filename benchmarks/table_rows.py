"""Row selection for the ablation runner (kept free of absl flags so tests can import it)."""

from __future__ import annotations

from occreid_jax.errors import UserError


def wanted_rows(text: str, rows: dict) -> list[str]:
    """The labels named in `text`, comma-separated; a label may itself hold commas
    ("#1 baseline (ResNet, BNNeck)"), so pieces are joined until they name a row."""
    wanted, piece = [], ""
    for token in text.split(","):
        piece = f"{piece},{token}" if piece else token
        if piece.strip() in rows:
            wanted.append(piece.strip())
            piece = ""
    if piece:
        raise UserError(f"no row {piece.strip()!r} in this table; it has: {'; '.join(rows)}")
    return wanted
