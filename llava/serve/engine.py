"""One loaded model answering chat requests one at a time, streamed or whole, cancellable.

The server's requests wait for the engine's lock (generation is serialised: one model, one device;
the lock does not promise arrival order). A request counts from its arrival, before its media are
decoded, so at most ``max_waiting`` requests read media, wait or generate at once; more are refused
instead of growing the line without bound. An answer runs ``generate`` in a thread and yields its text
token by token (:class:`Delta`, with each token's log-probabilities when asked); ``n`` answers are
generated one after the other. Setting the request's ``cancel`` event (the client went away) stops
generation at the next token and frees the lock. ``stop`` strings end the answer and are never sent,
even when they arrive split across tokens.

Sampling follows vLLM's request fields: ``temperature``, ``top_p``, ``top_k``, ``min_p``,
``repetition_penalty`` (transformers' own processors), OpenAI's ``presence_penalty`` /
``frequency_penalty`` (on the answer's tokens, :class:`OpenAIPenalties`) and ``logit_bias``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

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
    n: int = 1
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass
class Answer:
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    logprobs: list[dict] | None = None  # OpenAI's ``logprobs.content`` entries, when asked


@dataclass
class Delta:
    """A piece of answer ``index``: its new text and the log-probabilities of the tokens behind it."""

    index: int
    text: str
    logprobs: list[dict] = field(default_factory=list)


class OpenAIPenalties(LogitsProcessor):
    """OpenAI's ``presence_penalty`` and ``frequency_penalty`` on the tokens generated so far (not the
    prompt): ``logit - presence * (count > 0) - frequency * count``, as vLLM applies them."""

    def __init__(self, prompt_length: int, presence: float, frequency: float):
        self.prompt_length, self.presence, self.frequency = prompt_length, presence, frequency

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length:]
        counts = torch.zeros_like(scores)
        counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.presence * (counts > 0).to(scores.dtype) - self.frequency * counts


class _LogprobCapture(LogitsProcessor):
    """Keeps the log-probabilities of the step's distribution (after the penalties, before temperature and the
    top-k / top-p / min-p filters) for the token ``generate`` then picks."""

    def __init__(self):
        self.last: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.last = torch.log_softmax(scores[0].float(), -1)
        return scores


class Detokenizer:
    """The text of a growing answer, each new token's piece decoded from a short window of tokens.

    Why: decoding the whole answer again for every token costs tokenizer work quadratic in the answer's
    length. :meth:`add` decodes only the tokens since the last
    piece it returned, after the tokens of that piece (so a tokenizer that writes a token differently
    at the start of a text, e.g. without its leading space, gives the same characters), and returns
    the new characters; the pieces together are the decoded answer. A piece that ends in U+FFFD (a
    character split across tokens) is held back until the rest of it arrives.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.prefix = self.read = 0  # tokens[prefix:read] made the last piece returned

    def add(self, token: int) -> str:
        self.tokens.append(token)
        decode = self.tokenizer.decode
        before = decode(self.tokens[self.prefix:self.read], skip_special_tokens=True)
        text = decode(self.tokens[self.prefix:], skip_special_tokens=True)
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.tokens)
        return text[len(before):]


class _Tokens(BaseStreamer):
    """``generate``'s new tokens, one by one, into a queue (``None`` ends it), each with the step's
    log-probabilities when they are captured."""

    def __init__(self, capture: _LogprobCapture | None):
        self.queue: queue.Queue = queue.Queue()
        self.capture, self.prompt_seen = capture, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first call holds the prompt
            self.prompt_seen = True
            return
        token = int(value.reshape(-1)[0])
        self.queue.put((token, None if self.capture is None else self.capture.last))

    def end(self) -> None:
        self.queue.put(None)

    def __iter__(self):
        while (item := self.queue.get()) is not None:
            yield item


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
               answers: list[Answer]) -> Iterator[Delta]:
        """Yield the answers' pieces as they are generated, answer 0 first (call inside :meth:`slot`);
        ``answers`` gets one :class:`Answer` per answer (counts, finish reason, log-probabilities) as each
        ends."""
        ids = self.prompt_ids(conversation, visual)[None].to(self.model.device)
        visual = visual.to(self.model.device)
        template_stop = StopRule.of(conversation, self.tokenizer)  # ends the answer as the template says
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        finished = False
        try:
            for index in range(sampling.n):
                if cancel.is_set():
                    break
                answer = Answer(prompt_tokens=int(ids.shape[1]), logprobs=[] if sampling.logprobs else None)
                yield from self._one(ids, visual, sampling, template_stop, cancel, index, answer)
                answers.append(answer)
            finished = True
        finally:
            if cancel.is_set():  # cut short, by the consumer here or by the request's owner
                self.cancelled += 1
            elif finished:
                self.answered += 1

    def _one(self, ids, visual, sampling, template_stop, cancel, index, answer) -> Iterator[Delta]:
        capture = _LogprobCapture() if sampling.logprobs else None
        tokens = _Tokens(capture)
        stop_text = StopText([*sampling.stop, template_stop.text])
        processors = [OpenAIPenalties(ids.shape[1], sampling.presence_penalty, sampling.frequency_penalty)
                      ] if sampling.presence_penalty or sampling.frequency_penalty else []
        kwargs = dict(
            max_new_tokens=sampling.max_tokens, streamer=tokens, pad_token_id=self.tokenizer.pad_token_id,
            stopping_criteria=StoppingCriteriaList([_Stop(cancel, lambda: stop_text.stopped)]),
            **visual.model_kwargs(),
        )
        if processors or capture:
            kwargs["logits_processor"] = LogitsProcessorList([*processors, *([capture] if capture else [])])
        if template_stop.token_id is not None:
            kwargs["eos_token_id"] = template_stop.token_id
        if sampling.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = sampling.repetition_penalty
        if sampling.logit_bias:
            kwargs["sequence_bias"] = {(token,): bias for token, bias in sampling.logit_bias.items()}
        kwargs.update(sampling_kwargs(sampling.temperature, sampling.top_p))
        if kwargs.get("do_sample"):
            kwargs.update(top_k=sampling.top_k if sampling.top_k > 0 else None, min_p=sampling.min_p or None)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(ids, **kwargs)
            except BaseException as error:  # surfaced to the caller below
                failure.append(error)
            finally:
                tokens.end()

        worker = threading.Thread(target=run, name="llava-generate", daemon=True)
        worker.start()
        special = set(self.tokenizer.all_special_ids)
        detokenizer = Detokenizer(self.tokenizer)
        generated = detokenizer.tokens
        pending, read_to_the_end = [], False
        try:
            for token, logprobs in tokens:
                if stop_text.stopped:
                    continue  # generation ends at its next check: what follows a stop is not the answer's
                piece = detokenizer.add(token)
                if logprobs is not None and token not in special:
                    pending.append(self._logprob_entry(token, logprobs, sampling.top_logprobs))
                if not piece:  # a special token, or a character split across tokens: wait for the rest
                    continue
                safe = stop_text.feed(piece)
                if safe or (pending and stop_text.stopped):
                    yield Delta(index, safe, pending)
                    answer.logprobs = None if answer.logprobs is None else answer.logprobs + pending
                    pending = []
            tail = stop_text.finish()
            if tail or pending:
                yield Delta(index, tail, pending)
                answer.logprobs = None if answer.logprobs is None else answer.logprobs + pending
            read_to_the_end = True
        finally:
            if not read_to_the_end:
                cancel.set()  # the consumer left early: stop at the next token
            worker.join()
        if failure:
            raise failure[0]
        answer.text = stop_text.text.strip()
        answer.completion_tokens = len(generated)
        hit_eos = bool(generated) and generated[-1] == template_stop.token_id
        long = not (stop_text.stopped or hit_eos) and len(generated) >= sampling.max_tokens
        answer.finish_reason = "length" if long else "stop"

    def _logprob_entry(self, token: int, logprobs: torch.Tensor, top: int) -> dict:
        """OpenAI's entry for one token: its text, bytes and log-probability, and the ``top`` likeliest."""

        def one(token_id: int, value: float) -> dict:
            text = self.tokenizer.decode([token_id])
            return {"token": text, "logprob": max(value, -9999.0), "bytes": list(text.encode("utf-8"))}

        entry = one(token, float(logprobs[token]))
        values, indices = logprobs.topk(top) if top else (logprobs[:0], logprobs[:0].long())
        entry["top_logprobs"] = [one(int(i), float(v)) for v, i in zip(values, indices, strict=True)]
        return entry

    def complete(self, conversation, visual: VisualInputs, sampling: Sampling,
                 cancel: threading.Event) -> list[Answer]:
        answers: list[Answer] = []
        for _ in self.stream(conversation, visual, sampling, cancel, answers):
            pass
        return answers


__all__ = ["Answer", "Busy", "ChatEngine", "Delta", "Detokenizer", "OpenAIPenalties", "Sampling", "StopText"]
