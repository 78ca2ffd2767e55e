"""Conversation templates: turn a chat history into the exact prompt string a model was trained on.

Names follow LLaVA-NeXT (``conv_templates``, ``default_conversation``, ``Conversation``,
``SeparatorStyle``, ``append_message`` / ``get_prompt``) so code ported from there keeps working.

There is exactly one renderer, ``Conversation.segments()``. Everything that needs the prompt
text goes through it, so training labels, inference prompts and the Hugging Face chat template
cannot drift apart:

* ``get_prompt()`` is the concatenation of the segments (inference, LLaVA-NeXT style);
* ``llava.processing.prompts`` tokenises the segments one by one and supervises the flagged ones
  (training labels), or tokenises an open conversation the same way (``tokenize_prompt``);
* ``chat_template()`` writes the same rules as a Jinja template, so
  ``tokenizer.apply_chat_template(conv.to_messages(), add_generation_prompt=...)`` gives
  ``get_prompt()`` (tests render every registered template both ways).

A segment is ``(text, supervised)``. Supervised text is exactly what the model must learn to
write: each assistant reply and the separator that closes it (``<|im_end|>`` for ChatML, so it
learns to stop; ``sep`` for ``plain``). Everything else -- the system block, user turns, role
headers, the newline after ``<|im_end|>``, the generation header of an open last turn -- is
context and stays unsupervised.

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

  Supervision of the thought block: in non-thinking mode an *empty* thought
  (``<think>\\n\\n</think>\\n\\n``) is the very text the generation header hands the model at
  inference, so it belongs to the unsupervised header and only ``answer<|im_end|>`` is
  supervised; the tokens of an inference prompt are then a prefix of the training tokens. A
  non-empty thought, or any thought when ``enable_thinking`` is True (the model opens the block
  itself there), is written by the model and is supervised together with the answer.

* ``plain``: LLaVA pretraining (captioning) format: the messages are concatenated, each
  followed by ``sep`` ("\\n"), no roles, the ``<image>`` placeholder kept where it is. Its two
  roles are both ``""``, so the speaker is told by position (even = user, odd = assistant).

LLaVA-NeXT writes ChatML templates pre-wrapped (``system="<|im_start|>system\\n..."``,
``roles=("<|im_start|>user", "<|im_start|>assistant")``); that form is accepted and unwrapped
in one place (``segments()`` / ``to_messages()``), giving the same prompt as the bare form.

Add a template with one call: ``register_conv_template("name", Conversation(...))``.
"""

from __future__ import annotations

import dataclasses
import json
from enum import Enum, auto

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_START = "<think>"
THINK_END = "</think>"
EMPTY_THOUGHT = f"{THINK_START}\n\n{THINK_END}\n\n"
_SYSTEM_HEADER = f"{IM_START}system\n"

Segment = tuple[str, bool]


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

    ``default_system`` is the system message of the template this conversation was copied
    from (``copy()`` records it; ``None`` means "its own ``system``"). A chat template built
    from that template inserts it when the messages carry no system message, so
    ``to_messages()`` needs it to keep an emptied system prompt empty.
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
    default_system: str | None = None

    # ----------------------------------------------------------------- editing
    def append_message(self, role: str, message: str | None) -> None:
        """Add one turn; ``message=None`` marks the turn the model should write next."""
        if message is not None and not isinstance(message, str):
            raise ValueError(f"message for role {role!r} must be a str or None, got {type(message).__name__}")
        self.messages.append([role, message])

    def copy(self) -> Conversation:
        """An independent copy (templates in the registry must never be mutated in place).

        The copy records the system message it started with as ``default_system`` (unless one
        is recorded already), so editing ``copy.system`` later still renders right through
        the original template's chat template.
        """
        return dataclasses.replace(
            self,
            messages=[list(turn) for turn in self.messages],
            roles=tuple(self.roles),
            default_system=self.system if self.default_system is None else self.default_system,
        )

    # ----------------------------------------------------------------- rendering
    def segments(self) -> list[Segment]:
        """The prompt as ``(text, supervised)`` pieces; the single renderer of this module.

        Adjacent pieces with the same flag are merged and empty ones dropped, so token
        boundaries fall only where supervision changes: tokenising the pieces one by one (as
        ``llava.processing.prompts`` does) gives the same ids for a prompt whether it is a training
        sample or the open prefix of one.
        """
        self._check_open_turns()
        if self.sep_style == SeparatorStyle.CHATML:
            pieces = self._chatml_segments()
        elif self.sep_style == SeparatorStyle.PLAIN:
            pieces = self._plain_segments()
        else:
            raise ValueError(f"unsupported sep_style: {self.sep_style!r}")
        merged: list[Segment] = []
        for text, supervised in pieces:
            if not text:
                continue
            if merged and merged[-1][1] == supervised:
                merged[-1] = (merged[-1][0] + text, supervised)
            else:
                merged.append((text, supervised))
        return merged

    def get_prompt(self) -> str:
        """The full prompt string for the current messages."""
        return "".join(text for text, _ in self.segments())

    def stop_string(self) -> str:
        """The text that ends an assistant answer: ``stop_str`` when set (LLaVA-NeXT's field), else the
        separator that closes a reply (``sep`` for ChatML; ``sep2``, or ``sep``, for ``plain``), which is
        what training supervises as the end of every answer. Generation stops here in every entry point
        (``llava.inference.generation.StopRule``)."""
        if self.stop_str:
            return self.stop_str
        if self.sep_style == SeparatorStyle.PLAIN and self.sep2 is not None:
            return self.sep2
        return self.sep

    def to_messages(self) -> list[dict[str, str]]:
        """Hugging Face chat format (``[{"role", "content"}]``) for ``tokenizer.apply_chat_template``.

        Roles are ``system`` / ``user`` / ``assistant`` and the system text is unwrapped, also
        for LLaVA-NeXT's pre-wrapped form. An empty system prompt is sent as an empty system
        message when the template has a default one (else the chat template would insert the
        default), and left out otherwise. An open last turn (``None``) is left out: pass
        ``add_generation_prompt=True`` instead.
        """
        system = self._system_text()
        default = self.system if self.default_system is None else self.default_system
        out = [{"role": "system", "content": system}] if system or self._unwrap_system(default) else []
        for index, (role, message) in enumerate(self.messages):
            if message is not None:
                speaker = self._speaker(index, role)
                name = ("user", "assistant")[speaker] if speaker is not None else _role_name(role)
                out.append({"role": name, "content": message})
        return out

    def chat_template(self) -> str:
        """A Jinja chat template (Hugging Face ``tokenizer.chat_template``) with this template's rules.

        ``apply_chat_template(conv.to_messages(), tokenize=False, add_generation_prompt=...)``
        renders exactly ``conv.get_prompt()``. With no system message the template inserts
        this conversation's ``system`` (if non-empty); for Qwen3-style templates an
        ``enable_thinking`` variable defaults to ``self.enable_thinking``, and Hugging Face's
        ``reasoning_content`` field is read as the thought. Supervised text is wrapped in
        ``{% generation %}`` so ``return_assistant_tokens_mask=True`` marks what the labels do.
        """
        settings = {
            "default_system": self._system_text(),
            "sep": self.sep,
            "sep2": self.sep if self.sep2 is None else self.sep2,
            "headers": {"user": _chatml_header(self.roles[0]), "assistant": _chatml_header(self.roles[1])},
            "thoughts": self.enable_thinking is not None,
            "default_thinking": bool(self.enable_thinking),
        }
        if self.sep_style == SeparatorStyle.CHATML:
            body = _CHATML_JINJA
        elif self.sep_style == SeparatorStyle.PLAIN:
            body = _PLAIN_JINJA
        else:
            raise ValueError(f"unsupported sep_style: {self.sep_style!r}")
        preamble = [
            f"{{%- set {name} = {json.dumps(value, ensure_ascii=False)} %}}"
            for name, value in settings.items()
        ]
        return "\n".join([*preamble, _COMMON_JINJA, body])

    # ----------------------------------------------------------------- internals
    def _check_open_turns(self) -> None:
        for index, (role, message) in enumerate(self.messages[:-1]):
            if message is None:
                raise ValueError(
                    f"message {index} (role {role!r}) is None; only the last turn may be left open"
                )

    def _speaker(self, index: int, role: str) -> int | None:
        """0 for the user, 1 for the assistant, None for another role.

        Templates whose two roles are the same string (``plain``: both ``""``) tell the speakers
        apart by position, as LLaVA's pretraining data alternates human / gpt.
        """
        if self.roles[0] == self.roles[1]:
            return index % 2 if role == self.roles[0] else None
        if role in self.roles:
            return self.roles.index(role)
        return None

    def _system_text(self) -> str:
        return self._unwrap_system(self.system)

    def _unwrap_system(self, system: str) -> str:
        """Bare system text; LLaVA-NeXT's ``"<|im_start|>system\\n..."`` (ChatML only) loses its header."""
        if self.sep_style != SeparatorStyle.CHATML or not system.startswith(IM_START):
            return system
        if not system.startswith(_SYSTEM_HEADER):
            raise ValueError(
                f"system starts with {IM_START!r} but not with {_SYSTEM_HEADER!r}: {system[:40]!r}; "
                "pass the bare system text (or LLaVA-NeXT's '<|im_start|>system\\n' + text)"
            )
        return system[len(_SYSTEM_HEADER) :]

    def _chatml_segments(self) -> list[Segment]:
        system = self._system_text()
        pieces = [(f"{_SYSTEM_HEADER}{system}{self.sep}\n", False)] if system else []
        speakers = [self._speaker(index, role) for index, (role, _) in enumerate(self.messages)]
        last_user = max((index for index, speaker in enumerate(speakers) if speaker == 0), default=-1)
        for index, (role, message) in enumerate(self.messages):
            header = _chatml_header(role) + "\n"
            is_assistant = speakers[index] == 1
            if message is None:
                if is_assistant and self.enable_thinking is False:
                    header += EMPTY_THOUGHT
                pieces.append((header, False))
            elif not is_assistant:
                pieces.append((header + message + self.sep + "\n", False))
            else:
                context, reply = self._assistant_reply(message, keep_thought=index > last_user)
                pieces += [(header + context, False), (reply + self.sep, True), ("\n", False)]
        return pieces

    def _assistant_reply(self, message: str, keep_thought: bool) -> tuple[str, str]:
        """``(header_suffix, reply)`` of a finished assistant turn: the reply is what is supervised."""
        if self.enable_thinking is None:
            return "", message
        thought, answer = split_thought(message)
        if not keep_thought:
            return "", answer
        if not thought and self.enable_thinking is False:
            return EMPTY_THOUGHT, answer  # what the generation header already gives at inference
        return "", f"{THINK_START}\n{thought}\n{THINK_END}\n\n{answer}"

    def _plain_segments(self) -> list[Segment]:
        seps = (self.sep, self.sep if self.sep2 is None else self.sep2)
        pieces = [(self.system, False)]
        for index, (role, message) in enumerate(self.messages):
            if message is not None:
                pieces.append((message + seps[index % 2], self._speaker(index, role) == 1))
        return pieces


# --------------------------------------------------------------------- helpers
def _role_name(role: str) -> str:
    """``"<|im_start|>user"`` (LLaVA-NeXT style role) -> ``"user"``."""
    return role.removeprefix(IM_START)


def _chatml_header(role: str) -> str:
    return IM_START + _role_name(role)


def split_thought(message: str) -> tuple[str, str]:
    """``(thought, answer)`` of an assistant message, Qwen3 rules (no ``</think>`` -> empty thought)."""
    if THINK_END not in message:
        return "", message
    head, _, answer = message.rpartition(THINK_END)
    thought = head.split(THINK_END)[0].rstrip("\n").split(THINK_START)[-1].lstrip("\n")
    return thought, answer.lstrip("\n")


# --------------------------------------------------------------------- chat templates (Jinja)
# The Jinja below mirrors ``Conversation.segments`` line by line; ``chat_template()`` prepends the
# per-template settings (``default_system``, ``sep``, ``sep2``, ``headers``, ``thoughts``,
# ``default_thinking``). Every ``{%-``/``{{-`` strips the newline before it, so the layout is free.

# Shared by both styles: content rendering (strings pass through; multimodal parts become "<image>" /
# their text) and the system message (the messages' own, else the template's default).
_COMMON_JINJA = """\
{%- macro render_content(content) %}
{%- if content is string %}
{{- content }}
{%- else %}
{%- for part in content %}
{%- if part.type == 'text' %}
{{- part.text }}
{%- elif part.type == 'image' %}
{{- '<image>\n' }}
{%- elif part.type == 'video' %}
{{- '<video>\n' }}
{%- endif %}
{%- endfor %}
{%- endif %}
{%- endmacro %}
{%- if messages and messages[0].role == 'system' %}
{%- set system = render_content(messages[0].content) %}
{%- set loop_messages = messages[1:] %}
{%- else %}
{%- set system = default_system %}
{%- set loop_messages = messages %}
{%- endif %}"""

_CHATML_JINJA = """\
{%- if enable_thinking is defined and enable_thinking is not none %}
{%- set thinking = enable_thinking %}
{%- else %}
{%- set thinking = default_thinking %}
{%- endif %}
{%- if system %}
{{- '<|im_start|>system\\n' + system + sep + '\\n' }}
{%- endif %}
{%- set ns = namespace(last_user=-1) %}
{%- for message in loop_messages %}
{%- if message.role == 'user' %}
{%- set ns.last_user = loop.index0 %}
{%- endif %}
{%- endfor %}
{%- for message in loop_messages %}
{%- set header = headers[message.role] if message.role in headers else '<|im_start|>' + message.role %}
{%- set header = header + '\\n' %}
{%- set content = render_content(message.content) %}
{%- if message.role != 'assistant' %}
{{- header + content + sep + '\\n' }}
{%- else %}
{%- set reply = content %}
{%- if thoughts %}
{%- set thought = '' %}
{%- set answer = content %}
{%- if '</think>' in content %}
{%- set thought = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
{%- set answer = content.split('</think>')[-1].lstrip('\\n') %}
{%- endif %}
{%- if message.reasoning_content is string %}
{%- set thought = message.reasoning_content %}
{%- endif %}
{%- set thought = thought.strip('\\n') %}
{%- set reply = answer %}
{%- if loop.index0 > ns.last_user %}
{%- if not thought and not thinking %}
{%- set header = header + '<think>\\n\\n</think>\\n\\n' %}
{%- else %}
{%- set reply = '<think>\\n' + thought + '\\n</think>\\n\\n' + answer %}
{%- endif %}
{%- endif %}
{%- endif %}
{{- header }}
{%- generation %}
{{- reply + sep }}
{%- endgeneration %}
{{- '\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- headers['assistant'] + '\\n' }}
{%- if thoughts and not thinking %}
{{- '<think>\\n\\n</think>\\n\\n' }}
{%- endif %}
{%- endif %}"""

_PLAIN_JINJA = """\
{{- system }}
{%- for message in loop_messages %}
{%- set text = render_content(message.content) + (sep if loop.index0 % 2 == 0 else sep2) %}
{%- if message.role == 'assistant' %}
{%- generation %}
{{- text }}
{%- endgeneration %}
{%- else %}
{{- text }}
{%- endif %}
{%- endfor %}"""


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
    "Segment",
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
