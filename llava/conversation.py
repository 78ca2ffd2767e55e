"""Conversation templates: turn a chat history into the exact prompt string a model was trained on.

Names follow LLaVA-NeXT (``conv_templates``, ``default_conversation``, ``Conversation``,
``SeparatorStyle``, ``append_message`` / ``get_prompt``) so code ported from there keeps working.

Templates registered here:

* ``qwen_1_5`` / ``qwen_2`` (alias): ChatML with the system message
  "You are a helpful assistant."::

      <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{msg}<|im_end|>\\n<|im_start|>assistant\\n{msg}<|im_end|>\\n

* ``qwen3``: ChatML as Qwen3's own chat template renders it, in **non-thinking** mode by
  default (``enable_thinking=False``):

  - no system block unless ``system`` is non-empty;
  - the generation prompt is ``<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n`` (an empty
    thought, exactly what ``apply_chat_template(..., enable_thinking=False)`` appends); set
    ``conv.enable_thinking = True`` to end at ``<|im_start|>assistant\\n`` and let the model think;
  - assistant answers after the last user turn are written with their thought block
    (``<think>\\n{thought}\\n</think>\\n\\n{answer}``, empty thought when the message has none),
    so a training target matches what the model sees at inference;
  - assistant answers before the last user turn keep only the answer (Qwen3 drops old thoughts).

* ``plain``: LLaVA pretraining (captioning) format: the messages are concatenated, each
  followed by ``sep`` ("\\n"), no roles, the ``<image>`` placeholder kept where it is.

Add a template with one call: ``register_conv_template("name", Conversation(...))``.
"""

from __future__ import annotations

import dataclasses
from enum import Enum, auto

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_START = "<think>"
THINK_END = "</think>"


class SeparatorStyle(Enum):
    """How turns are joined into a prompt."""

    PLAIN = auto()
    CHATML = auto()


@dataclasses.dataclass
class Conversation:
    """A chat history plus the rules that turn it into a prompt string.

    ``messages`` is a list of ``[role, text]`` pairs (lists, so LLaVA-style code can edit
    ``conv.messages[-1][-1]``); a text of ``None`` in the last turn leaves that turn open, which
    is how a generation prompt is asked for. ``roles`` is ``(user_role, assistant_role)``.
    ``enable_thinking`` is ``None`` for templates without Qwen3-style thoughts.
    """

    system: str
    roles: tuple[str, str]
    messages: list[list[str | None]] = dataclasses.field(default_factory=list)
    sep_style: SeparatorStyle = SeparatorStyle.CHATML
    sep: str = IM_END
    sep2: str | None = None
    stop_str: str | None = None
    version: str = "unknown"
    enable_thinking: bool | None = None
    offset: int = 0

    # ----------------------------------------------------------------- editing
    def append_message(self, role: str, message: str | None) -> None:
        """Add one turn; ``message=None`` marks the turn the model should write next."""
        if message is not None and not isinstance(message, str):
            raise ValueError(f"message for role {role!r} must be a str or None, got {type(message).__name__}")
        self.messages.append([role, message])

    def copy(self) -> Conversation:
        """An independent copy (templates in the registry must never be mutated in place)."""
        return dataclasses.replace(
            self, messages=[list(turn) for turn in self.messages], roles=tuple(self.roles)
        )

    # ----------------------------------------------------------------- rendering
    def get_prompt(self) -> str:
        """The full prompt string for the current messages."""
        self._check_open_turns()
        if self.sep_style == SeparatorStyle.CHATML:
            return self._chatml_prompt()
        if self.sep_style == SeparatorStyle.PLAIN:
            return self._plain_prompt()
        raise ValueError(f"unsupported sep_style: {self.sep_style!r}")

    def to_messages(self) -> list[dict[str, str]]:
        """Hugging Face chat format (``[{"role", "content"}]``) for ``tokenizer.apply_chat_template``.

        An open last turn (``None``) is left out: pass ``add_generation_prompt=True`` instead.
        """
        out = [{"role": "system", "content": self.system}] if self.system else []
        for role, message in self.messages:
            if message is not None:
                out.append({"role": _role_name(role), "content": message})
        return out

    def _check_open_turns(self) -> None:
        for index, (role, message) in enumerate(self.messages[:-1]):
            if message is None:
                raise ValueError(
                    f"message {index} (role {role!r}) is None; only the last turn may be left open"
                )

    def _chatml_prompt(self) -> str:
        prompt = _chatml_block("system", self.system, self.sep) if self.system else ""
        last_user = max((i for i, (role, _) in enumerate(self.messages) if role == self.roles[0]), default=-1)
        for index, (role, message) in enumerate(self.messages):
            if message is None:
                prompt += self._generation_header(role)
                continue
            if self.enable_thinking is not None and role == self.roles[1]:
                message = _qwen3_assistant_text(message, keep_thought=index > last_user)
            prompt += _chatml_block(role, message, self.sep)
        return prompt

    def _generation_header(self, role: str) -> str:
        header = _chatml_header(role) + "\n"
        if self.enable_thinking is False and role == self.roles[1]:
            header += f"{THINK_START}\n\n{THINK_END}\n\n"
        return header

    def _plain_prompt(self) -> str:
        seps = (self.sep, self.sep2 if self.sep2 is not None else self.sep)
        prompt = self.system
        for index, (_, message) in enumerate(self.messages):
            if message is not None:
                prompt += message + seps[index % 2]
        return prompt


# --------------------------------------------------------------------- helpers
def _role_name(role: str) -> str:
    """``"<|im_start|>user"`` (LLaVA-NeXT style role) -> ``"user"``."""
    return role.removeprefix(IM_START)


def _chatml_header(role: str) -> str:
    return IM_START + _role_name(role)


def _chatml_block(role: str, content: str, sep: str) -> str:
    """One finished ChatML turn. A system text already wrapped LLaVA-NeXT style is accepted as is."""
    if role == "system" and content.startswith(IM_START):
        return content + sep + "\n"
    return f"{_chatml_header(role)}\n{content}{sep}\n"


def split_thought(message: str) -> tuple[str, str]:
    """``(thought, answer)`` of an assistant message, Qwen3 rules (no ``</think>`` -> empty thought)."""
    if THINK_END not in message:
        return "", message
    head, _, answer = message.rpartition(THINK_END)
    thought = head.split(THINK_END)[0].rstrip("\n").split(THINK_START)[-1].lstrip("\n")
    return thought, answer.lstrip("\n")


def _qwen3_assistant_text(message: str, keep_thought: bool) -> str:
    thought, answer = split_thought(message)
    if not keep_thought:
        return answer
    return f"{THINK_START}\n{thought.strip(chr(10))}\n{THINK_END}\n\n{answer}"


# --------------------------------------------------------------------- registry
conv_templates: dict[str, Conversation] = {}


def register_conv_template(name: str, conv: Conversation, override: bool = False) -> Conversation:
    """Make ``conv`` available as ``conv_templates[name]`` (``--version name`` in training)."""
    if not isinstance(conv, Conversation):
        raise ValueError(f"template {name!r} must be a Conversation, got {type(conv).__name__}")
    if name in conv_templates and not override:
        raise ValueError(f"conversation template {name!r} is already registered (pass override=True)")
    conv_templates[name] = conv
    return conv


def get_conv_template(name: str) -> Conversation:
    """A fresh copy of a registered template, with a helpful error for unknown names."""
    if name not in conv_templates:
        raise ValueError(f"unknown conversation template {name!r}; known: {sorted(conv_templates)}")
    return conv_templates[name].copy()


conv_qwen = register_conv_template(
    "qwen_1_5",
    Conversation(
        system="You are a helpful assistant.",
        roles=("user", "assistant"),
        sep_style=SeparatorStyle.CHATML,
        sep=IM_END,
        stop_str=IM_END,
        version="qwen",
    ),
)
register_conv_template("qwen_2", conv_qwen)

conv_qwen3 = register_conv_template(
    "qwen3",
    Conversation(
        system="",
        roles=("user", "assistant"),
        sep_style=SeparatorStyle.CHATML,
        sep=IM_END,
        stop_str=IM_END,
        version="qwen3",
        enable_thinking=False,
    ),
)

conv_llava_plain = register_conv_template(
    "plain",
    Conversation(
        system="",
        roles=("", ""),
        sep_style=SeparatorStyle.PLAIN,
        sep="\n",
        stop_str="\n",
        version="plain",
    ),
)

default_conversation = conv_qwen

__all__ = [
    "Conversation",
    "SeparatorStyle",
    "conv_llava_plain",
    "conv_qwen",
    "conv_qwen3",
    "conv_templates",
    "default_conversation",
    "get_conv_template",
    "register_conv_template",
    "split_thought",
]
