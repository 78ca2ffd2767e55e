"""One loaded model answering chat requests one at a time, streamed or whole, cancellable.

The server's requests wait for the engine's lock (generation is serialised: one model, one device;
the lock does not promise arrival order). A request counts from its arrival, before its media are
decoded, so at most ``max_waiting`` requests read media, wait or generate at once; more are refused
instead of growing the line without bound. A streamed
answer runs ``generate`` in a thread and yields text as ``TextIteratorStreamer`` produces it; setting
the request's ``cancel`` event (the client went away) stops generation at the next token and frees
the lock. ``stop`` strings end the answer and are never sent, even when they arrive split across
tokens.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from ..inference.generation import StopRule, expand_prompt, sampling_kwargs
from ..processing.media import VisualInputs
from ..processing.prompts import tokenize_prompt


class Busy(Exception):
    """More requests are waiting than the engine accepts."""


@dataclass
class Sampling:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Answer:
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"


class _Stop(StoppingCriteria):
    """Ends generation when the request is cancelled or its text holds a stop string."""

    def __init__(self, cancel: threading.Event, stop_text):
        self.cancel, self.stop_text = cancel, stop_text

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        done = self.cancel.is_set() or self.stop_text()
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class StopText:
    """Text as it streams in, held back where a stop string could still begin; cut at the first stop."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.text, self.sent, self.stopped = "", 0, False

    def feed(self, piece: str) -> str:
        """Add ``piece``; return the text that is now safe to send."""
        if self.stopped:
            return ""
        self.text += piece
        hits = [self.text.find(s, max(0, self.sent - len(s))) for s in self.stops]
        hits = [h for h in hits if h >= 0]
        if hits:
            self.stopped, self.text = True, self.text[: min(hits)]
            return self._flush(len(self.text))
        hold = max((len(s) - 1 for s in self.stops), default=0)
        return self._flush(max(self.sent, len(self.text) - hold))

    def finish(self) -> str:
        return self._flush(len(self.text))

    def _flush(self, upto: int) -> str:
        out, self.sent = self.text[self.sent:upto], max(self.sent, upto)
        return out


class ChatEngine:
    def __init__(self, tokenizer, model, max_waiting: int = 32):
        self.tokenizer, self.model = tokenizer, model
        self.lock = threading.Lock()
        self.max_waiting = max_waiting
        self._waiting = 0
        self._count = threading.Lock()
        self.answered = 0  # requests generated to their end
        self.cancelled = 0  # requests stopped because their client left

    @property
    def waiting(self) -> int:
        """Admitted requests: reading their media, waiting for the model or generating."""
        return self._waiting

    def admit(self):
        """Count a request in from its arrival (before its media are read); returns the call that counts
        it out. :class:`Busy` when ``max_waiting`` requests are in already."""
        with self._count:
            if self._waiting >= self.max_waiting:
                raise Busy(f"{self._waiting} requests are already in")
            self._waiting += 1
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                with self._count:
                    self._waiting -= 1

        return release

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold the model for one generation (admitted requests wait here in turn)."""
        with self.lock:
            yield

    def prompt_ids(self, conversation, visual: VisualInputs) -> torch.Tensor:
        """The prompt's ids, each placeholder expanded into its visual tokens."""
        return expand_prompt(self.model, tokenize_prompt(conversation, self.tokenizer), visual)

    def stream(self, conversation, visual: VisualInputs, sampling: Sampling, cancel: threading.Event,
               answer: Answer) -> Iterator[str]:
        """Yield the answer's text as it is generated (call inside :meth:`slot`); ``answer`` gets the
        counts and the finish reason when the iterator ends."""
        ids = self.prompt_ids(conversation, visual)[None].to(self.model.device)
        visual = visual.to(self.model.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        template_stop = StopRule.of(conversation, self.tokenizer)  # ends the answer as the template says
        stop_text = StopText([*sampling.stop, template_stop.text])
        kwargs = dict(
            max_new_tokens=sampling.max_tokens, streamer=streamer,
            pad_token_id=self.tokenizer.pad_token_id,
            stopping_criteria=StoppingCriteriaList([_Stop(cancel, lambda: stop_text.stopped)]),
            return_dict_in_generate=True, **visual.model_kwargs(),
        )
        if template_stop.token_id is not None:
            kwargs["eos_token_id"] = template_stop.token_id
        kwargs.update(sampling_kwargs(sampling.temperature, sampling.top_p))
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        result: dict = {}

        def run() -> None:
            try:
                with torch.inference_mode():
                    result["output"] = self.model.generate(ids, **kwargs)
            except BaseException as error:  # surfaced to the caller below
                result["error"] = error
                streamer.end()

        worker = threading.Thread(target=run, name="llava-generate", daemon=True)
        worker.start()
        read_to_the_end = False
        try:
            for piece in streamer:
                text = stop_text.feed(piece)
                if text:
                    yield text
            tail = stop_text.finish()
            if tail:
                yield tail
            read_to_the_end = True
        finally:
            if not read_to_the_end:
                cancel.set()  # the consumer left early: stop at the next token
            worker.join()
            if cancel.is_set():  # cut short, by the consumer here or by the request's owner
                self.cancelled += 1
        if "error" in result:
            raise result["error"]
        if not cancel.is_set():
            self.answered += 1
        generated = result["output"].sequences[0, ids.shape[1]:]
        answer.text = stop_text.text.strip()
        answer.prompt_tokens = int(ids.shape[1])
        answer.completion_tokens = int((generated != self.tokenizer.pad_token_id).sum())
        hit_eos = bool(len(generated)) and int(generated[-1]) == template_stop.token_id
        long = not (stop_text.stopped or hit_eos) and answer.completion_tokens >= sampling.max_tokens
        answer.finish_reason = "length" if long else "stop"

    def complete(self, conversation, visual: VisualInputs, sampling: Sampling,
                 cancel: threading.Event) -> Answer:
        answer = Answer()
        for _ in self.stream(conversation, visual, sampling, cancel, answer):
            pass
        return answer


__all__ = ["Answer", "Busy", "ChatEngine", "Sampling", "StopText"]
