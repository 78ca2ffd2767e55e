"""Stage-2 records: a video's placeholder in a conversation becomes one ``<image>`` line per mosaic of its pack.

Pack and rewrite mode (``cv_reader.stage2``) and the trainer (``llava.train.data``) share these, so a record is
checked and rewritten the same way wherever it is read.
"""

from __future__ import annotations

VIDEO_TOKEN, IMAGE_TOKEN = "<video>", "<image>"
_HUMAN = ("human", "user")


def text_key(turn: object) -> str | None:
    """The key of a turn's text (``value``, or ``content`` in role/content records) when it is a string."""
    if isinstance(turn, dict):
        key = "value" if "value" in turn else "content"
        if isinstance(turn.get(key), str):
            return key
    return None


def placeholder_counts(convs: list) -> tuple[int, int]:
    """``(<video> tags, <image> tags)`` in the text of every turn (any speaker: training counts them all)."""
    texts = [turn[key] for turn in convs if (key := text_key(turn))]
    return sum(t.count(VIDEO_TOKEN) for t in texts), sum(t.count(IMAGE_TOKEN) for t in texts)


def _first_human(convs: list) -> int | None:
    """Index of the first human turn with a string text, or None."""
    for i, turn in enumerate(convs):
        if text_key(turn) and str(turn.get("from", turn.get("role", ""))).lower() in _HUMAN:
            return i
    return None


def check_video_placeholders(convs: list, num_images: int) -> None:
    """Raise ValueError unless ``convs`` holds the placeholders of one video of ``num_images`` mosaics.

    They fit when the turns hold, all together, one ``<video>`` or one ``<image>`` (LLaVA-Video
    style), ``num_images`` ``<image>`` and no ``<video>`` (already one per mosaic), or none (the
    lines then go in front of the first human turn, which must exist). Anything else (two
    ``<video>``, a ``<video>`` and an ``<image>``, another count of ``<image>``) would leave text
    whose placeholders do not match the record's media, so the record is bad.
    """
    videos, images = placeholder_counts(convs)
    if videos + images == 1 or (videos == 0 and images == num_images):
        return
    if videos + images == 0:
        if _first_human(convs) is None:
            raise ValueError("the conversation has no human turn to put the video's placeholders in")
        return
    raise ValueError(
        f"the conversation has {videos} {VIDEO_TOKEN} and {images} {IMAGE_TOKEN} placeholders, but the "
        f"record has one video ({num_images} mosaics): expected one {VIDEO_TOKEN} or {IMAGE_TOKEN}, "
        f"{num_images} {IMAGE_TOKEN}, or none"
    )


def rewrite_conversations(convs: list, num_images: int) -> list:
    """The video's placeholder becomes ``num_images`` ``<image>`` lines (a new list; ``convs`` is unchanged).

    The placeholder is the conversation's one ``<video>`` or lone ``<image>``, in whichever turn it
    is; turns without one get the lines in front of the first human turn; ``num_images``
    ``<image>`` are left as they are. Other placeholder counts raise ValueError
    (:func:`check_video_placeholders`).
    """
    check_video_placeholders(convs, num_images)
    videos, images = placeholder_counts(convs)
    out = [dict(turn) if isinstance(turn, dict) else turn for turn in convs]
    tokens = "\n".join([IMAGE_TOKEN] * int(num_images))
    if videos + images == 1:
        tag = VIDEO_TOKEN if videos else IMAGE_TOKEN
        turn = next(t for t in out if (key := text_key(t)) and tag in t[key])
        key = text_key(turn)
        turn[key] = turn[key].replace(tag, tokens, 1)
    elif videos + images == 0:
        turn = out[_first_human(out)]
        key = text_key(turn)
        turn[key] = tokens + "\n" + turn[key]
    return out


__all__ = ["IMAGE_TOKEN", "VIDEO_TOKEN", "check_video_placeholders", "placeholder_counts", "rewrite_conversations",
           "text_key"]
